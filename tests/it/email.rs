//! Email delivery: a real SMTP conversation with a server the test starts (mailin), the received
//! message parsed and checked (CJK subject and body intact), retries on 4xx, dead letters on 5xx,
//! and `.eml` files when no SMTP server is configured.

use crate::util::*;
use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::config::{SmtpConfig, SmtpTls};

/// An SMTP server on loopback that keeps every message, and refuses the first recipients with a
/// given reply.
#[derive(Clone)]
struct Smtp {
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    refusals: Arc<AtomicUsize>,
    refusal: Response,
    current: Vec<u8>,
}

impl Handler for Smtp {
    fn rcpt(&mut self, _to: &str) -> Response {
        let left = self.refusals.load(Ordering::SeqCst);
        if left > 0 {
            self.refusals.store(left - 1, Ordering::SeqCst);
            return self.refusal.clone();
        }
        response::OK
    }
    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> Response {
        self.current.clear();
        response::OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> Response {
        self.messages
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        response::OK
    }
}

impl Smtp {
    /// Starts the server; `refusals` first RCPTs get `refusal`.
    fn start(refusals: usize, refusal: Response) -> (Smtp, u16) {
        let smtp = Smtp {
            messages: Arc::default(),
            refusals: Arc::new(AtomicUsize::new(refusals)),
            refusal,
            current: Vec::new(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut server = Server::new(smtp.clone());
        server
            .with_name("smtp.test")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        (smtp, port)
    }

    fn messages(&self) -> Vec<Vec<u8>> {
        self.messages.lock().unwrap().clone()
    }
}

const MAIL_RULE: &str = "const NAME = \"mail\";\nfn when(ev) { ev.call_id == \"mail\" }\nfn then(ev) {[ email(#{ to: [\"ops@example.com\", \"山田 <yamada@example.jp>\"], cc: \"lead@example.com\", subject: `待機放棄: ${ev.customer_phone}（放弃排队）`, body: `顧客 ${ev.nick_name} が待って切断しました。`, html: `<p>${ev.nick_name}</p>` }) ]}";

async fn service(smtp_port: Option<u16>) -> (TestServer, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("mail.rhai"), MAIL_RULE).unwrap();
    let rules_dir = rules.path().to_path_buf();
    let server = TestServer::start_with(move |config| {
        config.rules_dir = rules_dir;
        config.retry_schedule = switchboard::delivery::retry::Schedule {
            delays: vec![Duration::from_millis(50); 3],
        };
        config.email_from = "Switchboard <switchboard@example.com>".into();
        config.smtp = smtp_port.map(|port| SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
        });
    })
    .await;
    (server, rules)
}

async fn send_and_settle(server: &TestServer) -> serde_json::Value {
    let body = serde_json::json!({"call_id": "mail", "customer_phone": "13800138000", "nick_name": "山田 花子"});
    let (_, ack) = server.post(body.to_string(), None).await;
    let id = ack["id"].as_i64().unwrap();
    server.settled_trace(id).await["jobs"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cjk_email_arrives_intact_after_a_transient_refusal() {
    let (smtp, port) = Smtp::start(2, response::INTERNAL_ERROR); // 451 twice
    let (server, _rules) = service(Some(port)).await;
    let job = send_and_settle(&server).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("done"), Some(3)),
        "{job}"
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "delivered once");
    let mail = mailparse::parse_mail(&messages[0]).unwrap();
    let header = |name: &str| {
        mail.headers
            .iter()
            .find(|h| h.get_key().eq_ignore_ascii_case(name))
            .map(|h| h.get_value())
            .unwrap_or_default()
    };
    assert_eq!(header("Subject"), "待機放棄: 13800138000（放弃排队）");
    assert!(header("To").contains("yamada@example.jp") && header("To").contains("ops@example.com"));
    assert_eq!(header("Cc"), "lead@example.com");
    assert_eq!(mail.ctype.mimetype, "multipart/alternative");
    assert_eq!(
        mail.subparts[0].get_body().unwrap().trim(),
        "顧客 山田 花子 が待って切断しました。"
    );
    assert!(
        mail.subparts[1]
            .get_body()
            .unwrap()
            .contains("<p>山田 花子</p>")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_dead_letters_the_email() {
    let (smtp, port) = Smtp::start(usize::MAX, response::NO_MAILBOX); // 550
    let (server, _rules) = service(Some(port)).await;
    let job = send_and_settle(&server).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("dead"), Some(1)),
        "{job}"
    );
    assert!(smtp.messages().is_empty());
    let store = switchboard::store::open(&server.database).await.unwrap();
    let attempts = store
        .list_job_attempts(job["id"].as_i64().unwrap())
        .await
        .unwrap();
    assert_eq!(attempts[0].record.code, Some(550), "{attempts:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_emails_become_eml_files() {
    let (server, _rules) = service(None).await;
    let job = send_and_settle(&server).await;
    assert_eq!(job["status"], "done", "{job}");
    let outbox = server.dir.path().join("outbox");
    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "eml"));
    let raw = std::fs::read(&files[0]).unwrap();
    let mail = mailparse::parse_mail(&raw).unwrap();
    let subject = mail
        .headers
        .iter()
        .find(|h| h.get_key() == "Subject")
        .unwrap()
        .get_value();
    assert_eq!(subject, "待機放棄: 13800138000（放弃排队）");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_sample_ends_as_an_email_a_webhook_and_a_callback_task() {
    let (smtp, smtp_port) = Smtp::start(0, response::OK);
    let received = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/chat",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let chat_url = format!("{}/chat", serve_on_loopback(app).await);
    let server = TestServer::start_with(move |config| {
        config.rules_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
        config.smtp = Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port: smtp_port,
            tls: SmtpTls::None,
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
        });
        config.webhook_targets.insert(
            "chat".into(),
            switchboard::config::WebhookTarget {
                url: switchboard::config::Secret::new(chat_url),
                method: "POST".into(),
                headers: Default::default(),
                timeout: Duration::from_secs(5),
                secret: None,
                allow_private: true,
            },
        );
    })
    .await;
    let (_, ack) = server.post(sample("abandoned-long-wait.json"), None).await;
    let path = format!("/v1/events/{}", ack["id"]);
    let trace = eventually(Duration::from_secs(20), "every job to be done", || async {
        let (_, trace) = server.admin_get(&path).await;
        let jobs = trace["jobs"].as_array()?;
        (jobs.len() == 3 && jobs.iter().all(|j| j["status"] == "done")).then_some(trace)
    })
    .await;
    let kinds: Vec<&str> = trace["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["webhook", "email", "callback_task"]);
    let mail = smtp.messages();
    assert_eq!(mail.len(), 1);
    let parsed = mailparse::parse_mail(&mail[0]).unwrap();
    let subject = parsed
        .headers
        .iter()
        .find(|h| h.get_key() == "Subject")
        .unwrap()
        .get_value();
    assert_eq!(subject, "Caller abandoned after 81s in queue: 13800138000");
    let posted = received.lock().unwrap().clone();
    assert_eq!(posted.len(), 1);
    assert!(
        posted[0]["text"]
            .as_str()
            .unwrap()
            .contains("VIP call missed"),
        "{posted:?}"
    );
    let (_, tasks) = server.admin_get("/v1/callback-tasks?status=open").await;
    assert_eq!(tasks[0]["phone"], "13800138000");
    assert_eq!(
        tasks[0]["reasons"][0]["reason"],
        "abandoned in queue after 81s"
    );
    server.stop().await;
}
