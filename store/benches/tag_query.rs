//! A rare tag against a full scan (issue 17): `SHOAL_BENCH_EVENTS` events (default 1,000,000)
//! in one source, appended in batches of 1000 with the node's tree settings, packed; then, in
//! each of `SHOAL_BENCH_RUNS` runs (default 5), on the same warm reader:
//!
//! - a full scan (every event materialised),
//! - a read of tag `alarm`, carried by 0.1% of the events in 10 bursts of 100 consecutive
//!   events (how alarms, shift changes or batch starts occur on a shop floor),
//! - a read of tag `spread`, carried by 0.1% of the events, one every 1000 (the worst case:
//!   every leaf holds some, so nothing can be skipped),
//!
//! and prints the medians and the per-run ratios scan ÷ read (each ratio from one run's
//! figures, so both sides saw the same load). No criterion harness: `cargo bench -p
//! shoal-store --bench tag_query`.

use serde_json::value::RawValue;
use shoal_store::{EventFilter, NewEvent, Selector, SourceId, Store, StoreConfig};
use std::time::Instant;

type BoxError = Box<dyn std::error::Error>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn events(n: usize) -> Vec<NewEvent> {
    let burst_every = (n / 10).max(1);
    (0..n)
        .map(|i| {
            let mut tags = vec![format!("line-{}", i % 4), "plant-1".to_string()];
            if i % burst_every < 100.min(burst_every) {
                tags.push("alarm".into());
            }
            if i % 1000 == 500 {
                tags.push("spread".into());
            }
            tags.sort();
            let payload = format!(
                "{{\"machine\":\"m{}\",\"temp\":{}.{},\"state\":\"running\",\"counter\":{i}}}",
                i % 40,
                20 + i % 15,
                i % 10
            );
            NewEvent {
                semantics: format!("machine-{}", i % 20),
                name: format!("m{}", i % 40),
                tags,
                lamport: i as u64,
                timestamp: 1_700_000_000_000_000 + i as u64 * 1000,
                payload: RawValue::from_string(payload).expect("JSON"),
            }
        })
        .collect()
}

/// (events, seconds) of one read of the whole source under `filter`.
fn read(
    reader: &shoal_store::Reader,
    source: &SourceId,
    filter: &EventFilter,
) -> Result<(usize, f64), BoxError> {
    let start = Instant::now();
    let mut n = 0;
    for e in reader.events(source, 0..=u64::MAX, filter, false)? {
        std::hint::black_box(e?);
        n += 1;
    }
    Ok((n, start.elapsed().as_secs_f64()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), BoxError> {
    let n = env("SHOAL_BENCH_EVENTS", 1_000_000);
    let runs = env("SHOAL_BENCH_RUNS", 5).max(1);
    let all = events(n);
    let alarms = all
        .iter()
        .filter(|e| e.tags.iter().any(|t| t == "alarm"))
        .count();
    let spread = all
        .iter()
        .filter(|e| e.tags.iter().any(|t| t == "spread"))
        .count();
    let dir = tempfile::tempdir()?;
    // The node's tree settings (engine/src/node.rs `store_config`).
    let mut config = StoreConfig::default();
    config.tree.zstd_level_append = 1;
    config.tree.zstd_level_pack = 3;
    let store = Store::open(&dir.path().join("store.sqlite"), config)?;
    let source = SourceId::new("bench");
    let start = Instant::now();
    {
        let mut w = store.writer()?;
        for batch in all.chunks(1000) {
            w.append(&source, batch.to_vec())?;
        }
        w.pack(&source)?;
        while w.gc(100_000)?.blocks_deleted > 0 {}
        w.checkpoint()?;
    }
    drop(all);
    println!(
        "{n} events appended and packed in {:.1} s; alarm: {alarms} events (10 bursts), spread: {spread} events",
        start.elapsed().as_secs_f64()
    );
    let reader = store.reader()?;
    let everything = EventFilter::all();
    let tag = |t: &str| EventFilter::selectors(vec![Selector::tags([t])]);
    // Warm-up: decode the branches once, as a running node has.
    read(&reader, &source, &everything)?;
    let (mut scan, mut rare, mut wide, mut r_rare, mut r_wide) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let (c, s) = read(&reader, &source, &everything)?;
        assert_eq!(c, n, "full scan");
        let (c, a) = read(&reader, &source, &tag("alarm"))?;
        assert_eq!(c, alarms, "alarm read");
        let (c, w) = read(&reader, &source, &tag("spread"))?;
        assert_eq!(c, spread, "spread read");
        println!(
            "run {run}: scan {:.1} ms, alarm {:.2} ms ({:.0}x), spread {:.1} ms ({:.1}x)",
            s * 1e3,
            a * 1e3,
            s / a,
            w * 1e3,
            s / w
        );
        scan.push(s);
        rare.push(a);
        wide.push(w);
        r_rare.push(s / a);
        r_wide.push(s / w);
    }
    println!(
        "medians of {runs}: full scan {:.1} ms ({:.0} events/s); tag in 0.1% clustered {:.2} ms: \
         scan / tag = {:.0}x; tag in 0.1% spread {:.1} ms: scan / tag = {:.1}x",
        median(&mut scan) * 1e3,
        n as f64 / median(&mut scan.clone()),
        median(&mut rare) * 1e3,
        median(&mut r_rare),
        median(&mut wide) * 1e3,
        median(&mut r_wide)
    );
    Ok(())
}
