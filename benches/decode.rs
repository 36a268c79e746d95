//! Decoding cost per sample: parse the body, decode the typed view, compute the dedupe key.
//! Run: `cargo bench --bench decode`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use switchboard::event::{decode, dedupe_key, parse_body};

fn decode_samples(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/payloads");
    let mut group = c.benchmark_group("decode");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let body = std::fs::read(&path).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let parsed = parse_body(black_box(&body), Some("application/json")).unwrap();
                let decoded = decode(&parsed);
                black_box((decoded, dedupe_key(&parsed.fields)))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_samples);
criterion_main!(benches);
