//! Storage faults: a full disk, a restarted PostgreSQL, kill -9 during intake, processing and delivery.
//!
//! Every test counts what matters: pushes acknowledged versus events stored (exactly, by
//! notification), jobs done exactly once, and the service ready again once the fault clears.
//! Senders behave like Udesk: a push that gets no 2xx (a 503, a refused or reset connection)
//! was not acknowledged and goes again, so a repeat may come back as a duplicate of one stored
//! before the fault.

use crate::util::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use switchboard::config::{Secret, WebhookTarget};
use switchboard::delivery::retry::Schedule;
use switchboard::store::{EventQuery, JobStatus, Store};

/// A distinct notification `n` of about `pad` bytes more than the sample.
fn notification(n: u64, pad: usize) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&sample("udesk-example.json")).unwrap();
    value["conversation_id"] = n.into();
    if pad > 0 {
        value["padding"] = "x".repeat(pad).into();
    }
    serde_json::to_vec(&value).unwrap()
}

/// The `conversation_id` of a stored raw body.
fn conversation_of(raw: &[u8]) -> u64 {
    let value: Value = serde_json::from_slice(raw).unwrap();
    value["conversation_id"].as_u64().unwrap()
}

/// Checks a refused push: 503 `unavailable` in the JSON error shape, saying nothing was stored,
/// with a `Retry-After`.
fn assert_unavailable(status: StatusCode, retry_after: Option<&str>, body: &Value) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("nothing was stored"), "{body}");
    let secs: u64 = retry_after
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a 503 without a Retry-After: {body}"));
    assert!(secs > 0, "{body}");
}

/// Posts one push; its status, `Retry-After` and JSON answer.
async fn push(
    client: &reqwest::Client,
    base: &str,
    body: Vec<u8>,
) -> reqwest::Result<(StatusCode, Option<String>, Value)> {
    let response = client
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(INGEST_TOKEN)
        .timeout(Duration::from_secs(60))
        .body(body)
        .send()
        .await?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, body) = json_response(response).await;
    Ok((status, retry_after, body))
}

/// A SQLite connection of the test's own to the service's database file.
async fn sqlite_connection(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap()
}

/// The conversation ids of every event stored in a SQLite file, with how often each is there.
async fn stored_in_file(path: &Path) -> BTreeMap<u64, usize> {
    let mut conn = sqlite_connection(path).await;
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT raw_body FROM events")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut stored = BTreeMap::new();
    for (raw,) in rows {
        *stored.entry(conversation_of(&raw)).or_default() += 1;
    }
    stored
}

/// What a full disk must look like from outside, then once room is made again: pushes of
/// ~20 KB until the store refuses several in a row (each refusal a proper 503, `/readyz` not
/// ready, the failures counted in `/metrics`, and every push acknowledged before readable);
/// then `make_room`, after which pushes are stored again and `/readyz` is ready. Returns the
/// acknowledged notifications (conversation id → event id).
async fn fill_then_make_room<F, Fut>(server: &TestServer, make_room: F) -> BTreeMap<u64, i64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    const PAD: usize = 20_000;
    let base = format!("http://{}", server.addr);
    let client = &server.client;
    let mut acked: BTreeMap<u64, i64> = BTreeMap::new();
    let mut refused_in_a_row = 0;
    let mut refused = 0;
    let mut first_refused = None;
    let mut n = 0;
    // Until the store has refused five pushes in a row, or fifty pushes after the first refusal
    // (before the fix, later pushes got 202 and were never written).
    while refused_in_a_row < 5 && first_refused.is_none_or(|first| n < first + 50) {
        n += 1;
        assert!(n < 2_000, "the database never filled up");
        let (status, retry_after, body) = push(client, &base, notification(n, PAD)).await.unwrap();
        if status == StatusCode::ACCEPTED {
            acked.insert(n, body["id"].as_i64().unwrap());
            refused_in_a_row = 0;
        } else {
            assert_unavailable(status, retry_after.as_deref(), &body);
            first_refused.get_or_insert(n);
            refused += 1;
            refused_in_a_row += 1;
        }
    }
    assert!(
        !acked.is_empty(),
        "some pushes fit before the disk was full"
    );
    eprintln!(
        "full disk: {} pushes acknowledged, {refused} refused ({n} sent)",
        acked.len()
    );
    if refused_in_a_row == 5 {
        // Right after a refused push: not ready, and it says why.
        let (status, ready) = send(server.client.get(server.url("/readyz"))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
        assert_eq!(ready["reason"], "store_writes_failing", "{ready}");
        assert!(
            ready["message"]
                .as_str()
                .unwrap_or_default()
                .contains("insert_events"),
            "{ready}"
        );
        let (_, metrics) = server.admin_get("/metrics").await;
        let metrics = metrics.as_str().unwrap_or_default().to_string();
        let failures: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_store_failures_total{op=\"insert_events\"} "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no insert_events failures counted:\n{metrics}"));
        assert!(
            failures >= 5,
            "{failures} failures counted, {refused} pushes refused"
        );
    }
    // Every acknowledged push reads back, as sent.
    for (n, id) in &acked {
        let (status, stored) = server.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "acknowledged push {n} (id {id}) lost"
        );
        assert_eq!(stored["event"]["conversation_id"], Value::from(*n));
    }
    assert_eq!(
        refused_in_a_row, 5,
        "pushes went on being acknowledged on a full disk"
    );
    make_room().await;

    // New pushes are stored again: each goes again until acknowledged (the first few may still
    // meet the full disk, e.g. a batch already on its way).
    for _ in 0..10 {
        n += 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, retry_after, body) =
                push(client, &base, notification(n, PAD)).await.unwrap();
            if status == StatusCode::ACCEPTED {
                acked.insert(n, body["id"].as_i64().unwrap());
                break;
            }
            assert_unavailable(status, retry_after.as_deref(), &body);
            assert!(Instant::now() < deadline, "pushes still refused: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eventually(
        Duration::from_secs(30),
        "/readyz to be ready again",
        || async {
            let (status, _) = send(server.client.get(server.url("/readyz"))).await;
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;
    for (n, id) in acked.iter().rev().take(10) {
        let (status, stored) = server.admin_get(&format!("/v1/events/{id}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "acknowledged push {n} (id {id}) lost"
        );
        assert_eq!(stored["event"]["conversation_id"], Value::from(*n));
    }
    acked
}

/// Reproduction 1 without root: SQLite's `max_page_count` caps the database a little above what
/// it holds, with ballast an operator can delete to make room. Acknowledged and stored match
/// exactly, and the writer recovers without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_via_max_page_count_acknowledges_only_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sb.db");
    let plain = format!("sqlite://{}", path.display());
    // The schema, and 2 MB of ballast.
    switchboard::store::open(&plain)
        .await
        .unwrap()
        .close()
        .await;
    let pages = {
        let mut conn = sqlite_connection(&path).await;
        sqlx::query("CREATE TABLE ballast (b BLOB)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO ballast VALUES (zeroblob(2000000))")
            .execute(&mut conn)
            .await
            .unwrap();
        let (pages,): (i64,) = sqlx::query_as("PRAGMA page_count")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        pages
    };
    // Room for a dozen or so pushes of 20 KB.
    let limited = format!("{plain}?max_page_count={}", pages + 150);
    let server = TestServer::start_with(|config| config.database_url = Secret::new(limited)).await;

    let acked = fill_then_make_room(&server, || async {
        let mut conn = sqlite_connection(&path).await;
        sqlx::query("DELETE FROM ballast")
            .execute(&mut conn)
            .await
            .unwrap();
    })
    .await;

    server.stop().await;
    let stored = stored_in_file(&path).await;
    let acked_ns: Vec<u64> = acked.keys().copied().collect();
    let stored_ns: Vec<u64> = stored.keys().copied().collect();
    assert_eq!(stored_ns, acked_ns, "stored versus acknowledged");
    assert!(stored.values().all(|&c| c == 1), "{stored:?}");
}

/// A tmpfs of its own, unmounted (lazily, if still busy) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (e.g. `1m`); `None` (with a note) where this process may not mount.
    fn mount(size: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("not root: the tmpfs full-disk test is skipped (max_page_count covers it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        if !mounted.status.success() {
            eprintln!(
                "mount -t tmpfs not permitted here ({}): the tmpfs full-disk test is skipped",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount to {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.path()).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Reproduction 1 as reported: the database on a small tmpfs, then the tmpfs remounted larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_tmpfs_acknowledges_only_what_is_stored() {
    let Some(tmpfs) = Tmpfs::mount("2m") else {
        return;
    };
    let path = tmpfs.path().join("sb.db");
    let url = format!("sqlite://{}", path.display());
    let server = TestServer::start_with(|config| config.database_url = Secret::new(url)).await;

    let acked = fill_then_make_room(&server, || async { tmpfs.resize("40m") }).await;

    server.stop().await;
    let stored = stored_in_file(&path).await;
    let acked_ns: Vec<u64> = acked.keys().copied().collect();
    let stored_ns: Vec<u64> = stored.keys().copied().collect();
    assert_eq!(stored_ns, acked_ns, "stored versus acknowledged");
    assert!(stored.values().all(|&c| c == 1), "{stored:?}");
}

/// A webhook receiver that counts deliveries by `webhook-id`, optionally slow to answer.
#[derive(Clone, Default)]
struct CountingReceiver {
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl CountingReceiver {
    /// Serves on a free loopback port; returns the receiver and its URL.
    async fn start(delay: Duration) -> (CountingReceiver, String) {
        let receiver = CountingReceiver::default();
        let seen = receiver.seen.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    *seen.lock().unwrap().entry(id).or_default() += 1;
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let url = format!("{}/hook", serve_on_loopback(app).await);
        (receiver, url)
    }

    fn seen(&self) -> HashMap<String, u32> {
        self.seen.lock().unwrap().clone()
    }
}

/// A rule that posts every event to the `hook` target.
const HOOK_RULE: &str = "fn when(ev) { true }\nfn then(ev) { [webhook(#{ target: \"hook\", body: #{ n: ev.conversation_id } })] }";

/// Senders pushing distinct notifications, each until it is acknowledged, at whatever address
/// the service has now (a restarted binary listens on a new port).
struct Load {
    base: Arc<RwLock<String>>,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    /// Conversation id → (event id, duplicate), as acknowledged.
    acked: Arc<Mutex<BTreeMap<u64, (i64, bool)>>>,
    /// Answers that were not 2xx, by status.
    refused: Arc<Mutex<BTreeMap<u16, u64>>>,
    /// Pushes that got no answer (connection refused or reset, timed out).
    unanswered: Arc<AtomicU64>,
    senders: tokio::task::JoinSet<()>,
}

impl Load {
    fn start(base: String, senders: usize, pause: Duration) -> Load {
        let mut load = Load {
            base: Arc::new(RwLock::new(base)),
            stop: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
            acked: Arc::default(),
            refused: Arc::default(),
            unanswered: Arc::default(),
            senders: tokio::task::JoinSet::new(),
        };
        let client = reqwest::Client::new();
        for _ in 0..senders {
            let (base, stop, next) = (load.base.clone(), load.stop.clone(), load.next.clone());
            let (acked, refused) = (load.acked.clone(), load.refused.clone());
            let unanswered = load.unanswered.clone();
            let client = client.clone();
            load.senders.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    // The same push until it is acknowledged, as Udesk would.
                    loop {
                        let url = base.read().unwrap().clone();
                        match push(&client, &url, notification(n, 0)).await {
                            Ok((status, _, body)) if status.is_success() => {
                                let id = body["id"].as_i64().unwrap();
                                let duplicate = body["duplicate"].as_bool().unwrap();
                                acked.lock().unwrap().insert(n, (id, duplicate));
                                break;
                            }
                            Ok((status, retry_after, body)) => {
                                assert_unavailable(status, retry_after.as_deref(), &body);
                                *refused.lock().unwrap().entry(status.as_u16()).or_default() += 1;
                            }
                            Err(_) => {
                                unanswered.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
        load
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` further pushes are acknowledged.
    async fn until_acked(&self, more: usize) {
        let target = self.acked() + more;
        eventually(
            Duration::from_secs(120),
            "pushes to be acknowledged",
            || async { (self.acked() >= target).then_some(()) },
        )
        .await;
    }

    fn redirect(&self, base: String) {
        *self.base.write().unwrap() = base;
    }

    /// Stops the senders once each has its push in hand acknowledged; every notification sent is
    /// then acknowledged. Returns them.
    async fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let drained = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(sent) = self.senders.join_next().await {
                sent.unwrap();
            }
        })
        .await;
        assert!(drained.is_ok(), "a sender never got its push acknowledged");
        let acked = self.acked.lock().unwrap().clone();
        let sent = self.next.load(Ordering::SeqCst) - 1;
        assert_eq!(
            acked.len() as u64,
            sent,
            "every push sent was acknowledged in the end"
        );
        LoadReport {
            acked,
            refused: self.refused.lock().unwrap().clone(),
            unanswered: self.unanswered.load(Ordering::SeqCst),
        }
    }
}

#[derive(Debug)]
struct LoadReport {
    acked: BTreeMap<u64, (i64, bool)>,
    refused: BTreeMap<u16, u64>,
    unanswered: u64,
}

/// Every event of a store, oldest first.
async fn all_events(store: &dyn Store) -> Vec<switchboard::store::StoredEvent> {
    let mut events = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_events(&EventQuery {
                before_id: before,
                limit: 500,
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        events.extend(page);
    }
    events.reverse();
    events
}

/// Every job of a store.
async fn all_jobs(store: &dyn Store) -> Vec<switchboard::store::StoredJob> {
    let mut jobs = Vec::new();
    let mut before = None;
    loop {
        let page = store.list_jobs(None, before, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        jobs.extend(page);
    }
    jobs
}

/// After a fault: each notification acknowledged is stored exactly once under the id it was
/// acknowledged with; every event gets processed; every job (one per event) is done, with exactly
/// one successful attempt, and reached the receiver (repeats of a `webhook-id` only for a delivery
/// cut off mid-way). Returns how many deliveries were repeats.
async fn assert_everything_once(
    store: &dyn Store,
    acked: &BTreeMap<u64, (i64, bool)>,
    receiver: &CountingReceiver,
) -> usize {
    let events = all_events(store).await;
    let mut by_conversation: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for event in &events {
        by_conversation
            .entry(event.event.conversation_id.unwrap() as u64)
            .or_default()
            .push(event.id);
    }
    for (n, (id, _)) in acked {
        assert_eq!(
            by_conversation.get(n),
            Some(&vec![*id]),
            "notification {n}, acknowledged as id {id}, is stored exactly once under it"
        );
    }
    assert_eq!(
        by_conversation.len(),
        acked.len(),
        "nothing stored that was never acknowledged in the end"
    );
    let jobs = eventually(
        Duration::from_secs(120),
        "every event processed and every job done",
        || async {
            let events = all_events(store).await;
            if events
                .iter()
                .any(|e| e.state != switchboard::store::ProcessingState::Processed)
            {
                return None;
            }
            let jobs = all_jobs(store).await;
            (jobs.len() == events.len() && jobs.iter().all(|j| j.status == JobStatus::Done))
                .then_some(jobs)
        },
    )
    .await;
    let mut per_event: HashMap<i64, usize> = HashMap::new();
    for job in &jobs {
        *per_event.entry(job.event_id).or_default() += 1;
        let attempts = store.list_job_attempts(job.id).await.unwrap();
        let successes = attempts
            .iter()
            .filter(|a| a.record.outcome == "success")
            .count();
        assert_eq!(successes, 1, "job {} completed once: {attempts:?}", job.id);
    }
    assert!(per_event.values().all(|&n| n == 1), "one job per event");
    let seen = receiver.seen();
    assert_eq!(seen.len(), jobs.len(), "every job reached the receiver");
    seen.values().map(|&n| n as usize - 1).sum()
}

/// A throwaway PostgreSQL cluster of the test's own (the shared test server must never be
/// restarted): initdb into a temporary directory, started on a free loopback port, stopped when
/// dropped. As root, PostgreSQL runs as the `postgres` user (it refuses root).
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
}

impl Cluster {
    /// `None` (with a note) where PostgreSQL is not installed, except in CI, where it must be.
    fn start() -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                    .unwrap_or(0)
            });
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the PostgreSQL restart test: install PostgreSQL (scripts/test does)"
            );
            eprintln!("PostgreSQL is not installed: the restart test is skipped");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let owner = is_root().then(|| {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            };
            (id("-u"), id("-g"))
        });
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            owner,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        );
        let log = cluster.dir.path().join("server.log").display().to_string();
        // A free port, unless something takes it before the server binds it: then another.
        for attempt in 1..=3 {
            cluster.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=100",
                cluster.port,
                cluster.dir.path().display()
            );
            let started = cluster.try_run(
                "pg_ctl",
                &["-D", &data, "-l", &log, "-w", "-o", &options, "start"],
            );
            match started {
                Ok(()) => return Some(cluster),
                Err(error) if attempt == 3 => panic!("{error}"),
                Err(_) => {}
            }
        }
        unreachable!()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when root) and checks it succeeded.
    fn run(&self, program: &str, args: &[&str]) {
        if let Err(error) = self.try_run(program, args) {
            panic!("{error}");
        }
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when root); on failure, what it said.
    /// Its output goes to a file: a server that `pg_ctl` starts keeps pipes open.
    fn try_run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let log = self.dir.path().join("commands.log");
        let output = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap()
        };
        let mut command = Command::new(self.bin.join(program));
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(output())
            .stderr(output());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        let status = command.status().unwrap();
        if status.success() {
            return Ok(());
        }
        Err(format!(
            "{program} {args:?}: {status}\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        ))
    }

    /// Crashes the server (`-m immediate`: no checkpoint, clients cut off) and starts it again.
    fn restart_immediate(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "restart"],
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.try_run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}

/// PostgreSQL crashed and restarted under a steady load of pushes, with a webhook rule so that
/// processing and delivery are busy too: pushes in flight get 503 (or wait for the server to
/// come back); every push acknowledged is stored exactly once; processing and delivery resume by
/// themselves and do every job exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_loses_and_repeats_nothing() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let (receiver, hook) = CountingReceiver::start(Duration::ZERO).await;
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("hook.rhai"), HOOK_RULE).unwrap();
    let rules_dir = rules.path().to_path_buf();
    let database = cluster.url("postgres");
    let server = TestServer::start_with(move |config| {
        config.database_url = Secret::new(database);
        config.rules_dir = rules_dir;
        config.processing_lease = Duration::from_secs(3);
        config.processing_poll = Duration::from_millis(100);
        config.retry_schedule = Schedule {
            delays: vec![Duration::from_millis(200); 10],
        };
        config.webhook_targets.insert(
            "hook".into(),
            WebhookTarget {
                url: Secret::new(hook),
                method: "POST".into(),
                headers: Default::default(),
                timeout: Duration::from_secs(5),
                secret: None,
                allow_private: true,
            },
        );
    })
    .await;

    let load = Load::start(
        format!("http://{}", server.addr),
        4,
        Duration::from_millis(10),
    );
    load.until_acked(60).await;
    let restart = tokio::task::spawn_blocking(move || {
        cluster.restart_immediate();
        cluster
    });
    let cluster = restart.await.unwrap();
    // Writes work again by themselves: more pushes are acknowledged after the restart.
    load.until_acked(60).await;
    let report = load.finish().await;
    eventually(Duration::from_secs(30), "/readyz to be ready", || async {
        let (status, _) = send(server.client.get(server.url("/readyz"))).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;

    let store = switchboard::store::open(&cluster.url("postgres"))
        .await
        .unwrap();
    let repeats = assert_everything_once(&*store, &report.acked, &receiver).await;
    eprintln!(
        "PostgreSQL restart: {} pushes acknowledged ({} as duplicates of a push stored before its \
         answer was lost), refused {:?}, unanswered {}, repeated deliveries {repeats}",
        report.acked.len(),
        report.acked.values().filter(|(_, d)| *d).count(),
        report.refused,
        report.unanswered
    );
    store.close().await;
    server.stop().await;
    drop(cluster);
}

/// The real binary with a webhook rule and a short lease, on the suite's store.
struct Service {
    dir: tempfile::TempDir,
    database: String,
    config: String,
}

impl Service {
    async fn new(hook: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::write(dir.path().join("rules/hook.rhai"), HOOK_RULE).unwrap();
        let config = dir.path().join("switchboard.toml");
        std::fs::write(
            &config,
            format!(
                "processing_lease_secs = 2\nprocessing_poll_ms = 100\n[delivery]\n\
                 allow_private_targets = true\n\
                 retry_schedule = [\"100ms\", \"200ms\", \"500ms\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\n\
                 [webhooks.hook]\nurl = \"{hook}\"\ntimeout_secs = 3\n"
            ),
        )
        .unwrap();
        let database = test_database(dir.path()).await;
        Service {
            config: config.display().to_string(),
            dir,
            database,
        }
    }

    /// Starts the binary and waits until it is ready.
    async fn start(&self) -> Binary {
        let binary = Binary::start_with(
            self.dir.path(),
            &self.database,
            &self.dir.path().join("rules"),
            &["--config", &self.config],
        );
        let ready = binary.url("/readyz");
        eventually(
            Duration::from_secs(60),
            "the restarted binary to be ready",
            || async {
                let response = reqwest::get(&ready).await.ok()?;
                (response.status() == StatusCode::OK).then_some(())
            },
        )
        .await;
        binary
    }
}

fn base_of(binary: &Binary) -> String {
    format!("http://{}", binary.addr)
}

/// kill -9 of the real binary in the middle of a steady load of pushes, while it commits,
/// processes and delivers: after the restart no acknowledged push is missing, none is stored
/// twice, and every event's job is done exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_intake_and_processing_loses_and_repeats_nothing() {
    let (receiver, hook) = CountingReceiver::start(Duration::ZERO).await;
    let service = Service::new(&hook).await;
    let mut binary = service.start().await;
    let load = Load::start(base_of(&binary), 16, Duration::ZERO);
    load.until_acked(300).await;
    binary.kill_9();
    let at_kill = load.acked();
    let binary = service.start().await;
    load.redirect(base_of(&binary));
    load.until_acked(200).await;
    let report = load.finish().await;

    let store = switchboard::store::open(&service.database).await.unwrap();
    let repeats = assert_everything_once(&*store, &report.acked, &receiver).await;
    eprintln!(
        "kill -9 during intake: {at_kill} acknowledged before the kill, {} in all ({} as \
         duplicates), refused {:?}, unanswered {}, repeated deliveries {repeats}",
        report.acked.len(),
        report.acked.values().filter(|(_, d)| *d).count(),
        report.refused,
        report.unanswered
    );
    store.close().await;
    drop(binary);
}

/// kill -9 while a backlog of events is being processed, then again while deliveries are in
/// flight to a slow receiver: every event is processed once, every job done exactly once, and a
/// webhook goes out again only if it was cut off by the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_processing_and_delivery_completes_every_job_once() {
    const EVENTS: u64 = 400;
    let (receiver, hook) = CountingReceiver::start(Duration::from_millis(500)).await;
    let service = Service::new(&hook).await;
    let mut binary = service.start().await;
    // 32 at a time: intake outruns processing, so a backlog builds up.
    let client = reqwest::Client::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut pushes = tokio::task::JoinSet::new();
    for n in 1..=EVENTS {
        let (client, base, gate) = (client.clone(), base_of(&binary), gate.clone());
        pushes.spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let (status, _, body) = push(&client, &base, notification(n, 0)).await.unwrap();
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            (n, (body["id"].as_i64().unwrap(), false))
        });
    }
    let acked: BTreeMap<u64, (i64, bool)> = pushes.join_all().await.into_iter().collect();
    // Kill during processing: once its first jobs are recorded.
    let store = switchboard::store::open(&service.database).await.unwrap();
    eventually(Duration::from_secs(60), "processing to start", || async {
        (!store.list_jobs(None, None, 1).await.unwrap().is_empty()).then_some(())
    })
    .await;
    binary.kill_9();
    let pending = all_events(&*store)
        .await
        .iter()
        .filter(|e| e.state != switchboard::store::ProcessingState::Processed)
        .count();

    // Kill during delivery: once deliveries are going again after the restart.
    let delivered = receiver.seen().len();
    let mut binary = service.start().await;
    eventually(Duration::from_secs(60), "deliveries to resume", || async {
        (receiver.seen().len() > delivered).then_some(())
    })
    .await;
    binary.kill_9();
    let delivered_at_kill = receiver.seen().len();

    let binary = service.start().await;
    let repeats = assert_everything_once(&*store, &acked, &receiver).await;
    eprintln!(
        "kill -9 during processing ({pending} of {EVENTS} events not yet processed) and during \
         delivery ({delivered_at_kill} of {EVENTS} delivered): repeated deliveries {repeats}"
    );
    store.close().await;
    drop(binary);
}

/// A database in a directory that cannot be written stops start-up with the database's path and
/// the reason the OS gives (SQLite alone says "unable to open database file").
#[test]
fn an_unwritable_database_directory_names_the_path_and_the_os_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Root writes through permissions, so as root the directory is a read-only tmpfs.
    let (locked, _mount) = if is_root() {
        let Some(tmpfs) = Tmpfs::mount("1m") else {
            return;
        };
        let status = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(tmpfs.path())
            .status()
            .unwrap();
        assert!(status.success());
        (tmpfs.path().to_path_buf(), Some(tmpfs))
    } else {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        (locked, None)
    };
    let database = locked.join("sb.db");
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(["--database", &format!("sqlite://{}", database.display())])
        .args(["--rules", &dir.path().join("rules").display().to_string()])
        .env_remove("SWITCHBOARD_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&database.display().to_string()),
        "names the database: {stderr}"
    );
    assert!(
        stderr.contains("Read-only file system") || stderr.contains("Permission denied"),
        "gives the OS's reason: {stderr}"
    );
}
