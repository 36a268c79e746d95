//! Outbound faults: receivers that fail, hang or redirect, SMTP down then up, private addresses
//! refused, and URLs redacted wherever an attempt's error is stored or logged.
//!
//! Receivers run on loopback, so a test that wants one reached says so explicitly: the target
//! has `allow_private = true` (or, for the SMTP relay, the configuration names it). Everything
//! else goes through the SSRF guard as in production.

use crate::util::*;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchboard::config::{
    CallbackDispatch, Config, Secret, SmtpConfig, SmtpTls, UdeskApi, WebhookTarget,
};
use switchboard::delivery::address::AllowedUrl;
use switchboard::delivery::retry::Schedule;
use tokio::net::{TcpListener, TcpStream};

/// What a receiver answers, request by request (the last entry repeats).
#[derive(Clone, Debug)]
enum Answer {
    Ok,
    Status(u16),
    /// A redirect to the given `Location`.
    Redirect(u16, String),
    /// Never answers: the attempt must time out.
    Hang,
}

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Seen {
    /// Path and query.
    target: String,
    webhook_id: String,
}

/// An HTTP receiver on loopback with a script of answers. Every answer closes its connection,
/// so each attempt arrives on a connection of its own; the first `resets` connections are reset
/// (RST) as soon as their request starts to arrive.
#[derive(Clone)]
struct Receiver {
    answers: Arc<Vec<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests answered with a 2xx.
    delivered: Arc<AtomicUsize>,
    /// Connections reset.
    resets: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts on a free port of `127.0.0.1`; returns the receiver and its port.
    async fn start(answers: Vec<Answer>, resets: usize) -> (Receiver, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, answers, resets)
    }

    fn start_on(listener: TcpListener, answers: Vec<Answer>, resets: usize) -> (Receiver, u16) {
        let receiver = Receiver {
            answers: Arc::new(answers),
            seen: Arc::default(),
            delivered: Arc::default(),
            resets: Arc::default(),
        };
        let port = listener.local_addr().unwrap().port();
        let listener = Resetting {
            inner: listener,
            left: resets,
            resets: receiver.resets.clone(),
        };
        let app = axum::Router::new()
            .fallback(Self::handle)
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, port)
    }

    async fn handle(
        axum::extract::State(receiver): axum::extract::State<Receiver>,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        let n = {
            let mut seen = receiver.seen.lock().unwrap();
            seen.push(Seen {
                target: uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
                webhook_id: headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
            });
            seen.len()
        };
        let answer = receiver
            .answers
            .get(n - 1)
            .or(receiver.answers.last())
            .cloned()
            .unwrap_or(Answer::Ok);
        let close = [("connection", "close")];
        match answer {
            Answer::Ok => {
                receiver.delivered.fetch_add(1, Ordering::SeqCst);
                (StatusCode::NO_CONTENT, close).into_response()
            }
            Answer::Status(code) => (StatusCode::from_u16(code).unwrap(), close).into_response(),
            Answer::Redirect(code, location) => (
                StatusCode::from_u16(code).unwrap(),
                [("connection", "close".to_string()), ("location", location)],
            )
                .into_response(),
            Answer::Hang => std::future::pending().await,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A listener that resets its first `left` connections once their request starts to arrive.
struct Resetting {
    inner: TcpListener,
    left: usize,
    resets: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Resetting {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            if self.left == 0 {
                return (stream, addr);
            }
            self.left -= 1;
            let mut first = [0u8; 1];
            let _ = tokio::time::timeout(Duration::from_secs(30), stream.peek(&mut first)).await;
            // Linger zero: the close is a reset, not an orderly FIN.
            stream.set_zero_linger().unwrap();
            drop(stream);
            self.resets.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Event `n` posts to the rule setting `to_n`: a URL (the allowlist decides), or `target` for
/// the configured target `hook`.
const OUT_RULE: &str = r#"const NAME = "out";
fn when(ev) { ev.call_id == "out" }
fn then(ev) {
    let to = setting(`to_${ev.conversation_id}`);
    if to == "target" { [webhook(#{ target: "hook", body: #{ n: ev.conversation_id } })] }
    else { [webhook(#{ url: to, body: #{ n: ev.conversation_id } })] }
}"#;

/// A webhook target on loopback that the test allows to be reached, explicitly.
fn allowed_loopback_target(url: String, timeout: Duration) -> WebhookTarget {
    WebhookTarget {
        url: Secret::new(url),
        method: "POST".into(),
        headers: Default::default(),
        timeout,
        secret: None,
        allow_private: true,
    }
}

/// A service running [`OUT_RULE`] with `to` as the rule settings (`n` → destination), the SSRF
/// guard on (`allow_private_targets = false`) and a short retry schedule.
async fn service(
    to: &[(u64, String)],
    adjust: impl FnOnce(&mut Config),
) -> (TestServer, tempfile::TempDir) {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("out.rhai"), OUT_RULE).unwrap();
    let rules_dir = rules.path().to_path_buf();
    let settings: Vec<(String, String)> = to
        .iter()
        .map(|(n, url)| (format!("to_{n}"), url.clone()))
        .collect();
    let server = TestServer::start_with(move |config| {
        config.rules_dir = rules_dir;
        config.allow_private_targets = false;
        config.rule_settings.extend(settings);
        config.retry_schedule = Schedule {
            delays: vec![Duration::from_millis(100); 8],
        };
        adjust(config);
    })
    .await;
    (server, rules)
}

/// Posts event `n` of [`OUT_RULE`]; returns its id.
async fn fire(server: &TestServer, n: u64) -> i64 {
    let body = json!({"call_id": "out", "conversation_id": n, "customer_phone": "13800138000"});
    let (status, ack) = server.post(body.to_string(), None).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{ack}");
    ack["id"].as_i64().unwrap()
}

/// Waits (generously: the box may be loaded) until the event's one job is done or dead; returns
/// the job with its attempt log.
async fn settled(server: &TestServer, event: i64) -> Value {
    let trace = format!("/v1/events/{event}");
    let id = eventually(Duration::from_secs(60), "the job to settle", || async {
        let (_, trace) = server.admin_get(&trace).await;
        let job = trace["jobs"].as_array()?.first()?.clone();
        (job["status"] == "done" || job["status"] == "dead").then(|| job["id"].clone())
    })
    .await;
    server.admin_get(&format!("/v1/jobs/{id}")).await.1
}

/// The attempt details of a job, in order.
fn details(job: &Value) -> Vec<String> {
    job["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["detail"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Asserts the job was dead-lettered on its first attempt, and returns that attempt's detail.
fn refused_once(job: &Value) -> String {
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("dead"), Some(1)),
        "refused at once, not retried: {job}"
    );
    assert_eq!(job["attempt_log"][0]["outcome"], "permanent", "{job}");
    details(job).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_and_names_its_location() {
    // The private receiver a redirect points at; nothing may reach it.
    let (private, private_port) = Receiver::start(vec![Answer::Ok], 0).await;
    let inner = format!("http://127.0.0.1:{private_port}/internal?sig=s3cret");
    let (outer, outer_port) = Receiver::start(
        vec![
            Answer::Redirect(307, inner),
            Answer::Redirect(302, "http://169.254.169.254/latest/meta-data/".into()),
            Answer::Redirect(308, "/moved?token=s3cret".to_string()),
        ],
        0,
    )
    .await;
    let hook = format!("http://127.0.0.1:{outer_port}/hook");
    let to: Vec<(u64, String)> = (1..=3).map(|n| (n, "target".to_string())).collect();
    let (server, _rules) = service(&to, |config| {
        // The first hop is allowed to be private (it is on loopback); where it redirects is not
        // followed at all.
        let target = allowed_loopback_target(hook, Duration::from_secs(10));
        config.webhook_targets.insert("hook".into(), target);
    })
    .await;
    // One after another, so that the receiver's answers go to the jobs in order.
    let mut reasons = Vec::new();
    for n in 1..=3 {
        let job = settled(&server, fire(&server, n).await).await;
        reasons.push(refused_once(&job));
    }
    assert_eq!(
        reasons[0],
        format!(
            "HTTP 307: redirect to `http://127.0.0.1:{private_port}/internal?…` not followed \
             (redirects are never followed; give the final URL)"
        )
    );
    assert!(
        reasons[1].contains("HTTP 302: redirect to `http://169.254.169.254/latest/meta-data/`"),
        "{}",
        reasons[1]
    );
    assert!(
        reasons[2].contains(&format!(
            "HTTP 308: redirect to `http://127.0.0.1:{outer_port}/moved?…`"
        )),
        "{}",
        reasons[2]
    );
    assert!(reasons.iter().all(|r| !r.contains("s3cret")), "{reasons:?}");
    assert_eq!(outer.seen().len(), 3, "one request per job, none repeated");
    assert!(
        outer.seen().iter().all(|s| s.target == "/hook"),
        "the relative redirect was not followed either: {:?}",
        outer.seen()
    );
    assert!(
        private.seen().is_empty(),
        "the private receiver got nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literals_and_names_for_private_addresses_are_refused() {
    let (receiver, port) = Receiver::start(vec![Answer::Ok], 0).await;
    // An IPv6 loopback receiver where the box has IPv6; the refusal is checked either way.
    let v6 = match TcpListener::bind("[::1]:0").await {
        Ok(listener) => Some(Receiver::start_on(listener, vec![Answer::Ok], 0)),
        Err(error) => {
            eprintln!(
                "no IPv6 loopback ({error}): the [::1] refusal is checked without a receiver"
            );
            None
        }
    };
    let v6_port = v6.as_ref().map_or(9, |(_, port)| *port);
    let refused: Vec<(String, &str)> = vec![
        (
            format!("http://2130706433:{port}/decimal"),
            "127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        (
            format!("http://0x7f.1:{port}/hex"),
            "127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        (
            format!("http://127.1:{port}/short"),
            "127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        (
            format!("http://0.0.0.0:{port}/zero"),
            "0.0.0.0 is \"this network\" (0.0.0.0/8)",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
            "::ffff:127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        (
            format!("http://[::1]:{v6_port}/v6"),
            "::1 is loopback (::1/128)",
        ),
        (
            format!("http://localhost:{port}/name"),
            "`localhost` resolves to no public address",
        ),
    ];
    // Event 0 is the control: the same decimal spelling, through a target that may reach
    // loopback, does arrive; so the refusals below are the guard's doing.
    let mut to = vec![(0, "target".to_string())];
    to.extend(
        refused
            .iter()
            .enumerate()
            .map(|(i, (url, _))| (i as u64 + 1, url.clone())),
    );
    let allowlist: Vec<AllowedUrl> = refused
        .iter()
        .map(|(url, _)| AllowedUrl::parse(url).unwrap())
        .collect();
    let control = format!("http://2130706433:{port}/control");
    let (server, _rules) = service(&to, move |config| {
        config.webhook_url_allowlist = allowlist;
        let target = allowed_loopback_target(control, Duration::from_secs(10));
        config.webhook_targets.insert("hook".into(), target);
    })
    .await;
    let events: Vec<i64> = {
        let mut events = Vec::new();
        for (n, _) in &to {
            events.push(fire(&server, *n).await);
        }
        events
    };
    let control = settled(&server, events[0]).await;
    assert_eq!(control["status"], "done", "the control arrives: {control}");
    for ((url, expected), event) in refused.iter().zip(&events[1..]) {
        let job = settled(&server, *event).await;
        let reason = refused_once(&job);
        assert!(
            reason.contains(expected) && reason.contains("SSRF guard"),
            "{url}: {reason}"
        );
    }
    let seen: Vec<String> = receiver.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(seen, ["/control"], "only the control reached the receiver");
    if let Some((v6, _)) = v6 {
        assert!(v6.seen().is_empty(), "nothing reached [::1]");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udesk_dispatch_to_a_private_literal_is_refused() {
    let (receiver, port) = Receiver::start(vec![Answer::Ok], 0).await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("cb.rhai"),
        "const NAME = \"cb\";\nfn when(ev) { ev.call_id == \"cb\" }\nfn then(ev) { [callback_task(#{ phone: ev.customer_phone, reason: \"missed\", priority: 1 })] }",
    )
    .unwrap();
    let rules_dir = rules.path().to_path_buf();
    let server = TestServer::start_with(move |config| {
        config.rules_dir = rules_dir;
        config.allow_private_targets = false;
        config.callback_dispatch = Some(CallbackDispatch::Udesk(UdeskApi {
            base_url: format!("http://2130706433:{port}"),
            email: "admin@example.com".into(),
            token: Secret::new("udesk-token"),
            relay_number: "01086465040".into(),
            timeout: Duration::from_secs(10),
            allow_private: false,
        }));
    })
    .await;
    let body = json!({"call_id": "cb", "customer_phone": "13800138000"});
    assert_eq!(
        server.post(body.to_string(), None).await.0,
        reqwest::StatusCode::ACCEPTED
    );
    let id = eventually(
        Duration::from_secs(60),
        "the dispatch job's first attempt",
        || async {
            let (_, page) = server.admin_get("/v1/jobs").await;
            page["jobs"]
                .as_array()?
                .iter()
                .find(|j| j["kind"] == "callback_dispatch" && j["attempts"].as_i64() >= Some(1))
                .map(|j| j["id"].clone())
        },
    )
    .await;
    let job = server.admin_get(&format!("/v1/jobs/{id}")).await.1;
    let reason = refused_once(&job);
    assert!(
        reason.contains("127.0.0.1 is loopback (127.0.0.0/8) (SSRF guard)"),
        "{reason}"
    );
    assert!(
        receiver.seen().is_empty(),
        "the signed request was not sent"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_receiver_gets_the_job_exactly_once() {
    // Two connections reset, then 500, 503, a hang past the timeout, and then a 204.
    let answers = vec![
        Answer::Status(500),
        Answer::Status(503),
        Answer::Hang,
        Answer::Ok,
    ];
    let (receiver, port) = Receiver::start(answers, 2).await;
    let hook = format!("http://127.0.0.1:{port}/hook");
    let (server, _rules) = service(&[(1, "target".to_string())], |config| {
        // Long enough that a loaded box never times out an answered request; the hang costs it.
        let target = allowed_loopback_target(hook, Duration::from_secs(5));
        config.webhook_targets.insert("hook".into(), target);
    })
    .await;
    let job = settled(&server, fire(&server, 1).await).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(
        receiver.delivered.load(Ordering::SeqCst),
        1,
        "answered with a 2xx exactly once"
    );
    assert_eq!(receiver.resets.load(Ordering::SeqCst), 2);
    let seen = receiver.seen();
    assert!(
        seen.iter().all(|s| s.webhook_id == seen[0].webhook_id),
        "every attempt is the same message: {seen:?}"
    );
    let log = job["attempt_log"].as_array().unwrap();
    assert_eq!(log.len() as i64, job["attempts"].as_i64().unwrap(), "{job}");
    let (last, failed) = log.split_last().unwrap();
    assert_eq!(last["outcome"], "success", "{job}");
    assert!(
        failed.iter().all(|a| a["outcome"] == "transient"),
        "every failure was retried: {job}"
    );
    let reasons = details(&job);
    let has = |what: &str| reasons.iter().any(|r| r.contains(what));
    assert!(has("HTTP 500") && has("HTTP 503"), "{reasons:?}");
    assert!(has("timed out"), "the hang was cut off: {reasons:?}");
    assert!(
        failed
            .iter()
            .filter(|a| a["code"].is_null())
            .filter(|a| !a["detail"].as_str().unwrap_or("").starts_with("timed out"))
            .count()
            >= 2,
        "both resets were recorded as failed attempts: {reasons:?}"
    );
    server.stop().await;
}

/// An SMTP server that keeps every message (see tests/it/email.rs).
#[derive(Clone, Default)]
struct Smtp {
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
    current: Vec<u8>,
}

impl mailin_embedded::Handler for Smtp {
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.extend_from_slice(buf);
        Ok(())
    }
    fn data_end(&mut self) -> mailin_embedded::Response {
        self.messages
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        mailin_embedded::response::OK
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_then_up_delivers_the_email_once() {
    // "Down": the port accepts and drops every connection, as a crashed relay behind a proxy
    // would. The same listener is then handed to a real SMTP server, so no other process can
    // take the port in between.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dropped = Arc::new(AtomicUsize::new(0));
    let down = tokio::spawn({
        let dropped = dropped.clone();
        async move {
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        drop(accepted);
                        dropped.fetch_add(1, Ordering::SeqCst);
                    }
                    _ = &mut stopped => return listener,
                }
            }
        }
    });
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("mail.rhai"),
        "const NAME = \"mail\";\nfn when(ev) { ev.call_id == \"mail\" }\nfn then(ev) { [email(#{ to: \"ops@example.com\", subject: `missed ${ev.customer_phone}`, body: \"call back\" })] }",
    )
    .unwrap();
    let rules_dir = rules.path().to_path_buf();
    let server = TestServer::start_with(move |config| {
        config.rules_dir = rules_dir;
        config.email_from = "Switchboard <switchboard@example.com>".into();
        // A minute of attempts: the relay stays down for as long as the test takes to notice,
        // however loaded the box.
        config.retry_schedule = Schedule {
            delays: vec![Duration::from_millis(250); 240],
        };
        config.smtp = Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            username: None,
            password: None,
            timeout: Duration::from_secs(10),
        });
    })
    .await;
    let body = json!({"call_id": "mail", "customer_phone": "13800138000"});
    let (_, ack) = server.post(body.to_string(), None).await;
    let trace = format!("/v1/events/{}", ack["id"]);
    eventually(Duration::from_secs(60), "two failed attempts", || async {
        let (_, trace) = server.admin_get(&trace).await;
        (trace["jobs"][0]["attempts"].as_i64()? >= 2).then_some(())
    })
    .await;
    // Up.
    let _ = stop.send(());
    let listener = down.await.unwrap().into_std().unwrap();
    listener.set_nonblocking(false).unwrap();
    let smtp = Smtp::default();
    let mut relay = mailin_embedded::Server::new(smtp.clone());
    relay
        .with_name("smtp.test")
        .with_ssl(mailin_embedded::SslConfig::None)
        .unwrap()
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = relay.serve();
    });

    let job = settled(&server, ack["id"].as_i64().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}");
    let messages = smtp.messages.lock().unwrap().clone();
    assert_eq!(messages.len(), 1, "delivered once");
    let text = String::from_utf8_lossy(&messages[0]);
    assert!(text.contains("missed 13800138000"), "{text}");
    let log = job["attempt_log"].as_array().unwrap();
    let (last, failed) = log.split_last().unwrap();
    assert_eq!(last["outcome"], "success", "{job}");
    assert!(failed.len() >= 2, "{job}");
    assert!(
        failed.iter().all(|a| a["outcome"] == "transient"),
        "a relay that is down is retried: {job}"
    );
    assert!(dropped.load(Ordering::SeqCst) >= 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_redirected_urls_are_redacted_in_attempts_and_logs() {
    // The real binary, so that its log is what an operator would read.
    let (receiver, port) = Receiver::start(
        vec![Answer::Redirect(
            307,
            "http://169.254.169.254/latest/?sig=s3cret-redirect".into(),
        )],
        0,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("out.rhai"), OUT_RULE).unwrap();
    let cases = [
        (
            format!("http://127.0.0.1:{port}/hook?sig=s3cret-private"),
            "127.0.0.1 is loopback (127.0.0.0/8) (SSRF guard)".to_string(),
        ),
        (
            "https://evil.example/hook?sig=s3cret-unlisted".to_string(),
            "`https://evil.example/hook?…`".to_string(),
        ),
        (
            "not a url?sig=s3cret-invalid".to_string(),
            "`not a url?…`".to_string(),
        ),
        (
            "target".to_string(),
            "`http://169.254.169.254/latest/?…`".to_string(),
        ),
    ];
    let settings: String = cases
        .iter()
        .enumerate()
        .map(|(i, (to, _))| format!("to_{} = \"{to}\"\n", i + 1))
        .collect();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "processing_poll_ms = 50\n\n[rule_settings]\n{settings}\n\
             [webhooks.hook]\nurl = \"http://127.0.0.1:{port}/hook?key=s3cret-target\"\nallow_private = true\n\n\
             [delivery]\nretry_schedule = [\"100ms\"]\nwebhook_url_allowlist = [\"http://127.0.0.1:{port}/hook\"]\n"
        ),
    )
    .unwrap();
    let database = test_database(dir.path()).await;
    let config = config.display().to_string();
    let mut binary = Binary::start_with(dir.path(), &database, &rules, &["--config", &config]);
    let client = reqwest::Client::new();
    let admin = |path: String| {
        let request = client.get(binary.url(&path)).bearer_auth(ADMIN_TOKEN);
        async move { send(request).await }
    };
    for (i, (to, shown)) in cases.iter().enumerate() {
        let n = i + 1;
        let body = json!({"call_id": "out", "conversation_id": n, "customer_phone": "13800138000"});
        let ack = eventually(
            Duration::from_secs(60),
            "the push to be accepted",
            || async {
                let response = client
                    .post(binary.url("/v1/notifications"))
                    .bearer_auth(INGEST_TOKEN)
                    .body(body.to_string())
                    .send()
                    .await
                    .ok()?;
                let (status, ack) = json_response(response).await;
                (status == reqwest::StatusCode::ACCEPTED).then_some(ack)
            },
        )
        .await;
        let trace = format!("/v1/events/{}", ack["id"]);
        let id = eventually(Duration::from_secs(60), "the job to be dead", || async {
            let (_, trace) = admin(trace.clone()).await;
            let job = &trace["jobs"][0];
            (job["status"] == "dead").then(|| job["id"].clone())
        })
        .await;
        let (_, job) = admin(format!("/v1/jobs/{id}")).await;
        let reason = refused_once(&job);
        assert!(reason.contains(shown.as_str()), "{to}: {reason}");
        assert!(!reason.contains("s3cret"), "{to}: {reason}");
    }
    // Every dead letter is logged with its reason; none of them shows a secret.
    let log = eventually(
        Duration::from_secs(60),
        "four dead letters logged",
        || async {
            let log = binary.log();
            (log.matches("job dead-lettered").count() >= cases.len()).then_some(log)
        },
    )
    .await;
    for (_, shown) in &cases {
        assert!(
            log.contains(shown.trim_matches('`')),
            "{shown} logged:\n{log}"
        );
    }
    assert!(!log.contains("s3cret"), "a secret reached the log:\n{log}");
    assert_eq!(
        receiver.seen().len(),
        1,
        "only the named target was contacted"
    );
    binary.kill_9();
}
