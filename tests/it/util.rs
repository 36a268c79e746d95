//! Shared test helpers: an in-process service on a loopback port with a temp database, the real
//! binary as a child process, and the sample payloads.

use reqwest::StatusCode;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard::config::{Config, Secret};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A fresh, empty PostgreSQL database for one test, on the server `scripts/test` started (its
/// URL, without database, is in `SWITCHBOARD_TEST_POSTGRES`). Without that variable the
/// PostgreSQL cases are skipped with a note, except in CI, where they must run.
pub async fn postgres_database() -> Option<String> {
    use sqlx::Connection;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Ok(server) = std::env::var("SWITCHBOARD_TEST_POSTGRES") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PostgreSQL tests: run them through scripts/test"
        );
        eprintln!(
            "SWITCHBOARD_TEST_POSTGRES is not set: PostgreSQL cases skipped (scripts/test sets it)"
        );
        return None;
    };
    let server = server.trim_end_matches('/');
    let name = format!(
        "sb_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    Some(format!("{server}/{name}"))
}

/// The database a test service uses: a SQLite file in `dir`, or with
/// `SWITCHBOARD_TEST_STORE=postgres` (scripts/test runs the suite a second time so) a fresh
/// PostgreSQL database.
pub async fn test_database(dir: &Path) -> String {
    if std::env::var("SWITCHBOARD_TEST_STORE").as_deref() == Ok("postgres") {
        return postgres_database()
            .await
            .expect("SWITCHBOARD_TEST_STORE=postgres needs SWITCHBOARD_TEST_POSTGRES");
    }
    format!("sqlite://{}", dir.join("sb.db").display())
}

/// Serves `app` on a free loopback port for the rest of the test (a webhook receiver, a stand-in
/// peer); returns its base URL, `http://127.0.0.1:PORT`.
pub async fn serve_on_loopback(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

pub const INGEST_TOKEN: &str = "test-ingest-token";
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The sample bodies shipped in `examples/payloads/`, by file name.
pub fn samples() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payloads");
    let mut samples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    samples.sort();
    samples
}

pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/payloads")
            .join(name),
    )
    .unwrap()
}

/// A sample with `conversation_id` replaced, so that each copy is a distinct notification.
pub fn sample_with_id(name: &str, conversation_id: u64) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&sample(name)).unwrap();
    value["conversation_id"] = conversation_id.into();
    serde_json::to_vec(&value).unwrap()
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The service running in this test process on a free loopback port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: TempDir,
    /// The store's URL: a SQLite file in `dir`, or a fresh PostgreSQL database when the suite
    /// runs on PostgreSQL (`SWITCHBOARD_TEST_STORE=postgres`).
    pub database: String,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), switchboard::ServeError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with test defaults (temp SQLite database, tokens set), adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::with_defaults();
        config.database_url = Secret::new(test_database(dir.path()).await);
        config.rules_dir = dir.path().join("rules");
        config.ingest_tokens = vec![Secret::new(INGEST_TOKEN)];
        config.admin_token = Some(Secret::new(ADMIN_TOKEN));
        config.processing_poll = Duration::from_millis(50);
        config.outbox_dir = dir.path().join("outbox");
        // Tests hand what-if candidate directories made with `tempfile`.
        config.what_if_roots = vec![std::env::temp_dir()];
        adjust(&mut config);
        Self::start_in(dir, config).await
    }

    async fn start_in(dir: TempDir, config: Config) -> Self {
        let config_database = config.database_url.expose().to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(switchboard::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let server = TestServer {
            addr,
            dir,
            database: config_database,
            client: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        };
        eventually(
            Duration::from_secs(10),
            "the server to be ready",
            || async {
                let r = server.client.get(server.url("/readyz")).send().await.ok()?;
                (r.status() == StatusCode::OK).then_some(())
            },
        )
        .await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Posts a body with the ingest token as a bearer token.
    pub async fn post(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .client
            .post(self.url("/v1/notifications"))
            .bearer_auth(INGEST_TOKEN)
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        json_response(request.send().await.unwrap()).await
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        json_response(response).await
    }

    /// POSTs `body` as JSON to an admin endpoint.
    pub async fn admin_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        send(
            self.client
                .post(self.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body),
        )
        .await
    }

    /// Waits until event `id` is processed (its jobs may still be running); returns its trace.
    pub async fn processed_trace(&self, id: i64) -> Value {
        let path = format!("/v1/events/{id}");
        eventually(
            Duration::from_secs(30),
            "the event to be processed",
            || async {
                let (_, trace) = self.admin_get(&path).await;
                (trace["state"] == "processed").then_some(trace)
            },
        )
        .await
    }

    /// Waits until event `id` is processed and every job it made has settled (none pending or
    /// retrying); returns its trace (`GET /v1/events/{id}`).
    pub async fn settled_trace(&self, id: i64) -> Value {
        let path = format!("/v1/events/{id}");
        eventually(
            Duration::from_secs(30),
            "the event to be processed and its jobs to settle",
            || async {
                let (_, trace) = self.admin_get(&path).await;
                let settled = trace["jobs"]
                    .as_array()?
                    .iter()
                    .all(|j| !matches!(j["status"].as_str(), Some("pending" | "retrying")));
                (trace["state"] == "processed" && settled).then_some(trace)
            },
        )
        .await
    }

    /// Stops the service gracefully and returns its temp dir (database included).
    pub async fn stop(mut self) -> TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

/// Sends a request and reads its JSON answer.
pub async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    json_response(request.send().await.unwrap()).await
}

pub async fn json_response(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// The real `switchboard` binary as a child process.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Copies the child's stderr into `log`; done when the child's stderr closes.
    log_copier: Option<std::thread::JoinHandle<()>>,
}

impl Binary {
    /// Starts `switchboard serve` on a free port with the database `dir/sb.db` and the rules in
    /// `dir/rules`, and waits for its "listening on" line.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Binary {
        let database = format!("sqlite://{}", dir.join("sb.db").display());
        Self::start_with(dir, &database, &dir.join("rules"), extra_args)
    }

    /// Starts `switchboard serve` on a free port with the given database and rules (its log in
    /// `dir`), and waits for its "listening on" line.
    pub fn start_with(dir: &Path, database: &str, rules: &Path, extra_args: &[&str]) -> Binary {
        let log = dir.join(format!("server-{}.log", std::process::id()));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(["--database", database])
            .args(["--rules", &rules.display().to_string()])
            .args(extra_args)
            .env("SWITCHBOARD_INGEST_TOKEN", INGEST_TOKEN)
            .env("SWITCHBOARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("SWITCHBOARD_CONFIG")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_copier = std::thread::spawn(move || {
            let mut log_file = log_file;
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                use std::io::Write;
                let _ = writeln!(log_file, "{line}");
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not start; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        Binary {
            child,
            addr: addr.parse().unwrap(),
            log,
            log_copier: Some(log_copier),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.wait();
    }

    /// Waits for the process to exit and for its last log lines to be copied.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(copier) = self.log_copier.take() {
            copier.join().unwrap();
        }
        status
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
