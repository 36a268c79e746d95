//! Load generator for the intake: posts the sample payloads with varying `conversation_id`s
//! over loopback and reports throughput and latency percentiles.
//!
//! ```text
//! cargo run --release --example load -- --url http://127.0.0.1:8080 --token TOKEN \
//!     [--connections 64] [--seconds 10] [--rate 5000]
//! ```
//! `--url` may list several instances, comma-separated: connections are spread over them, as a
//! load balancer would.
//! Without `--rate` it sends as fast as the connections allow (throughput); with it, it paces
//! the requests at that many per second (latency at a given load).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Args {
    url: String,
    token: String,
    connections: usize,
    seconds: u64,
    rate: Option<u64>,
}

fn parse_args() -> Args {
    let mut args = Args {
        url: "http://127.0.0.1:8080".into(),
        token: std::env::var("SWITCHBOARD_INGEST_TOKEN").unwrap_or_default(),
        connections: 64,
        seconds: 10,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value(),
            "--token" => args.token = value(),
            "--connections" => args.connections = value().parse().expect("--connections: a number"),
            "--seconds" => args.seconds = value().parse().expect("--seconds: a number"),
            "--rate" => args.rate = Some(value().parse().expect("--rate: requests per second")),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn payloads() -> Vec<serde_json::Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payloads");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let body = std::fs::read(entry.unwrap().path()).unwrap();
        out.push(serde_json::from_slice(&body).unwrap());
    }
    out
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let urls: Vec<String> = args
        .url
        .split(',')
        .map(|u| format!("{}/v1/notifications", u.trim().trim_end_matches('/')))
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()
        .unwrap();
    let templates = Arc::new(payloads());
    // Unique ids per run, so a rerun against the same database is not all duplicates.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        * 1000;
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let per_conn_interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r as f64));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let connections = args.connections;
    for conn in 0..args.connections {
        let (client, url, token, templates, next) = (
            client.clone(),
            urls[conn % urls.len()].clone(),
            args.token.clone(),
            templates.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            // Stagger the connections over one interval, so the load is an even stream rather
            // than synchronized bursts.
            let mut ticker = per_conn_interval.map(|i| {
                let offset = i.mul_f64(conn as f64 / connections as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while Instant::now() < deadline {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                let mut body = templates[(n as usize) % templates.len()].clone();
                body["conversation_id"] = (base + n).into();
                let body = serde_json::to_vec(&body).unwrap();
                let sent = Instant::now();
                match client
                    .post(&url)
                    .bearer_auth(&token)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 => latencies.push(sent.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for (l, e) in tasks.join_all().await {
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "accepted {} in {elapsed:.1}s = {:.0}/s, errors {errors}, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}
