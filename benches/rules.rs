//! Evaluating one event against 1, 10, 100 and 1,000 rules of the shipped kind.
//! Run: `cargo bench --bench rules`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use switchboard::event::{decode, parse_body};
use switchboard::rules::{EvalContext, FixedCounters, Rules};

/// `n` rules made from the shipped ones, each its own rule: its own name, and (past the first
/// copy of each) its own threshold, VIP code and counter key, as a real set of many rules would
/// differ. With `all_fire`, copies keep the shipped conditions: a third of them fire on the
/// abandoned-call sample (a worst case).
fn rules_dir(n: usize, all_fire: bool) -> tempfile::TempDir {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let mut texts: Vec<String> = std::fs::read_dir(&shipped)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    texts.sort();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        let mut text =
            texts[i % texts.len()].replace("const NAME = \"", &format!("const NAME = \"{i}-"));
        if !all_fire && i >= texts.len() {
            text = text
                .replace("> 60", &format!("> {}", 60 + 10 * i))
                .replace("\"vip-line\"", &format!("\"vip-line-{i}\""))
                .replace("\"queue-abandoned\"", &format!("\"queue-abandoned-{i}\""));
        }
        std::fs::write(dir.path().join(format!("rule-{i:04}.rhai")), text).unwrap();
    }
    dir
}

fn evaluate(c: &mut Criterion) {
    let body = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "examples/payloads/{}",
        std::env::var("BENCH_PAYLOAD").unwrap_or("abandoned-long-wait.json".into())
    )))
    .unwrap();
    let event = decode(&parse_body(&body, None).unwrap()).event;
    let ctx = EvalContext {
        counters: Arc::new(FixedCounters::default()),
        at_ms: 0,
        record_stats: false,
        prefilter: true,
    };
    for (group_name, all_fire) in [("evaluate", false), ("evaluate_third_fire", true)] {
        let mut group = c.benchmark_group(group_name);
        for n in [1, 10, 100, 1000] {
            let dir = rules_dir(n, all_fire);
            let rules = Rules::load(dir.path(), Default::default());
            assert_eq!(rules.current().rules().len(), n);
            let set = rules.current();
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| black_box(set.evaluate(black_box(&event), &ctx)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
