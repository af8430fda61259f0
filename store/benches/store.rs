//! The store benchmark: `cargo bench -p shoal-store --bench store` (a plain `main`, no
//! criterion harness: each figure is a whole workload, repeated and reported as a median).
//!
//! Workloads, all on the fixture events (`shoal_fixtures::Factory`, seed 1), one source:
//! - append rate with batches of 1000, 100 and 1 (each run on a fresh store file);
//! - packing the 1000-batch store, then bytes on disk per event (after garbage collection and a
//!   WAL checkpoint: file size, and the same without SQLite's free pages);
//! - full-scan read rate of the packed tree, and a filtered read of one rare semantics (~1% of
//!   the events, `shoal_fixtures::RARE_SEMANTICS`, spread over the whole log) against it, both
//!   warm (same reader, decoded key branches cached: the ratio compares only the reads' own
//!   work) and cold (store just opened); for contrast, a read of 1% selected by a time range
//!   (contiguous matches); and the floor of the spread read: one read of the last event of
//!   every leaf, which decompresses every leaf once, as the spread read has to (it prints how
//!   many leaves hold a match);
//! - the reference, in the same run: plain SQLite (rusqlite, one row per event, an index on
//!   semantics, batches of 1000 per transaction, the same durability setting) doing the same.
//!
//! Knobs: `SHOAL_BENCH_EVENTS` (default 200000), `SHOAL_BENCH_RUNS` (default 5). The machine is
//! shared: run it several times and compare medians, never single runs. The main figures are
//! also given on the bench thread's on-CPU time (Linux), which a busy machine barely changes.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use rusqlite::{params, Connection};
use serde_json::value::RawValue;
use shoal_fixtures::{Factory, FixtureEvent, RARE_SEMANTICS};
use shoal_store::{EventFilter, NewEvent, Selector, SourceId, Store, StoreConfig};

type BoxError = Box<dyn std::error::Error>;

/// Events per append run for batches of 100 and 1: smaller, so the slow cases stay bounded.
const EVENTS_BATCH_100: usize = 50_000;
const EVENTS_BATCH_1: usize = 5_000;

fn main() -> Result<(), BoxError> {
    let n: usize = env_or("SHOAL_BENCH_EVENTS", 200_000);
    let runs: usize = env_or("SHOAL_BENCH_RUNS", 5).max(1);
    let fixtures: Vec<FixtureEvent> = Factory::new(1).take(n).collect();
    let events = to_new_events(&fixtures)?;
    let rare = fixtures
        .iter()
        .filter(|e| e.semantics == RARE_SEMANTICS)
        .count();
    println!(
        "shoal-store benchmark: {n} fixture events ({:.0} bytes of JSON payload on average), \
         {rare} ({:.2}%) with semantics {RARE_SEMANTICS}, {runs} runs",
        fixtures.iter().map(|e| e.payload.len()).sum::<usize>() as f64 / n as f64,
        100.0 * rare as f64 / n as f64,
    );
    let mut figures = Figures::default();
    for run in 0..runs {
        eprintln!("run {} of {runs} ...", run + 1);
        store_run(&events, rare, &mut figures)?;
        sqlite_run(&fixtures, rare, &mut figures)?;
    }
    figures.print(n);
    Ok(())
}

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn to_new_events(fixtures: &[FixtureEvent]) -> Result<Vec<NewEvent>, BoxError> {
    fixtures
        .iter()
        .enumerate()
        .map(|(i, e)| {
            Ok(NewEvent {
                semantics: e.semantics.clone(),
                name: e.name.clone(),
                tags: e.tags.clone(),
                lamport: i as u64,
                timestamp: e.timestamp,
                payload: RawValue::from_string(e.payload.clone())?,
            })
        })
        .collect()
}

/// Per-run samples of every figure.
#[derive(Default)]
struct Figures {
    append_1000: Vec<f64>,
    append_100: Vec<f64>,
    append_1: Vec<f64>,
    pack_seconds: Vec<f64>,
    file_bytes: Vec<f64>,
    live_bytes: Vec<f64>,
    unpacked_bytes: Vec<f64>,
    scan: Vec<f64>,
    filtered_seconds: Vec<f64>,
    time_filtered_seconds: Vec<f64>,
    scan_seconds: Vec<f64>,
    /// The first scan after opening the store: it also decodes every key branch.
    cold_scan_seconds: Vec<f64>,
    /// The filtered read on a freshly opened store (decodes the key branches it visits).
    cold_filtered_seconds: Vec<f64>,
    /// Reading the last event of every leaf, one read per leaf: each read decompresses its
    /// whole leaf, like the spread filtered read must. The floor of any read that opens them.
    leaf_ends_seconds: Vec<f64>,
    /// Warm scan and filtered read of a tree whose leaves were all written by `pack` (no
    /// inline packing during the appends): the leaf format a background packer produces.
    bg_scan_seconds: Vec<f64>,
    bg_filtered_seconds: Vec<f64>,
    /// Leaves holding at least one event of the rare semantics, and all leaves.
    leaves_matching: Vec<f64>,
    leaves: Vec<f64>,
    sqlite_append: Vec<f64>,
    sqlite_scan: Vec<f64>,
    sqlite_scan_seconds: Vec<f64>,
    sqlite_filtered_seconds: Vec<f64>,
    sqlite_bytes: Vec<f64>,
    /// On-CPU seconds of the bench thread for the main workloads (see `Stopwatch`).
    cpu: CpuFigures,
}

/// On-CPU seconds per run: unlike wall time, these barely change with the machine's load.
#[derive(Default)]
struct CpuFigures {
    append_1000: Vec<f64>,
    scan: Vec<f64>,
    filtered: Vec<f64>,
    sqlite_append: Vec<f64>,
    sqlite_scan: Vec<f64>,
    sqlite_filtered: Vec<f64>,
    cold_scan: Vec<f64>,
    cold_filtered: Vec<f64>,
    bg_scan: Vec<f64>,
    bg_filtered: Vec<f64>,
    leaf_ends: Vec<f64>,
}

/// Wall clock plus the bench thread's on-CPU time (`/proc/thread-self/schedstat`, ns; time
/// spent waiting for a CPU or blocked on I/O is not counted). Off Linux the CPU time is NaN.
struct Stopwatch {
    wall: Instant,
    cpu: Option<u64>,
}

fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            cpu: thread_cpu_ns(),
            wall: Instant::now(),
        }
    }

    /// (wall seconds, on-CPU seconds).
    fn stop(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => f64::NAN,
        };
        (wall, cpu)
    }
}

fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    }
}

fn spread(samples: &[f64]) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("[{} .. {}]", fmt_num(min), fmt_num(max))
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.4}")
    }
}

impl Figures {
    fn print(&self, n: usize) {
        let row = |label: &str, samples: &[f64], unit: &str| {
            println!(
                "{label:<44} {:>12} {unit:<10} {}",
                fmt_num(median(samples)),
                spread(samples)
            );
        };
        println!("\nmedians of {} runs [min .. max]", self.append_1000.len());
        println!("-- shoal-store ({n} events, one source)");
        row("append, batches of 1000", &self.append_1000, "events/s");
        row(
            &format!(
                "append, batches of 100 ({} events)",
                EVENTS_BATCH_100.min(n)
            ),
            &self.append_100,
            "events/s",
        );
        row(
            &format!("append, batches of 1 ({} events)", EVENTS_BATCH_1.min(n)),
            &self.append_1,
            "events/s",
        );
        row("pack (after batches of 1000)", &self.pack_seconds, "s");
        row(
            "on disk before packing (file)",
            &self.unpacked_bytes,
            "bytes/ev",
        );
        row("on disk after pack+gc (file)", &self.file_bytes, "bytes/ev");
        row(
            "on disk after pack+gc (live pages)",
            &self.live_bytes,
            "bytes/ev",
        );
        row(
            "full scan (warm: key branches cached)",
            &self.scan,
            "events/s",
        );
        row("full scan (warm)", &self.scan_seconds, "s");
        row(
            "full scan (cold: first read after opening)",
            &self.cold_scan_seconds,
            "s",
        );
        row(
            &format!("filtered read (semantics {RARE_SEMANTICS}, warm)"),
            &self.filtered_seconds,
            "s",
        );
        row(
            "filtered read (cold: store just opened)",
            &self.cold_filtered_seconds,
            "s",
        );
        let ratio =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
        row(
            "full scan time / filtered read time (warm)",
            &ratio(&self.scan_seconds, &self.filtered_seconds),
            "x",
        );
        row(
            "the same, both cold",
            &ratio(&self.cold_scan_seconds, &self.cold_filtered_seconds),
            "x",
        );
        row(
            "the same, cold scan / warm filter (old figure)",
            &ratio(&self.cold_scan_seconds, &self.filtered_seconds),
            "x",
        );
        row(
            "leaves all by `pack` (zstd 10): full scan / filtered (warm)",
            &ratio(&self.bg_scan_seconds, &self.bg_filtered_seconds),
            "x",
        );
        row(
            "leaves all by `pack`: full scan rate (warm)",
            &self
                .bg_scan_seconds
                .iter()
                .map(|s| n as f64 / s)
                .collect::<Vec<_>>(),
            "events/s",
        );
        row(
            "leaves holding a match / all leaves",
            &ratio(&self.leaves_matching, &self.leaves),
            "",
        );
        row(
            "last event of every leaf, one read each",
            &self.leaf_ends_seconds,
            "s",
        );
        row(
            "full scan time / that (ratio ceiling)",
            &ratio(&self.scan_seconds, &self.leaf_ends_seconds),
            "x",
        );
        row(
            "filtered read (1% by time range, contiguous)",
            &self.time_filtered_seconds,
            "s",
        );
        let ratios: Vec<f64> = self
            .scan_seconds
            .iter()
            .zip(&self.time_filtered_seconds)
            .map(|(s, f)| s / f)
            .collect();
        row("full scan time / time-range read time", &ratios, "x");
        println!("-- plain SQLite reference (one row per event, index on semantics)");
        row("insert, batches of 1000", &self.sqlite_append, "events/s");
        row("full scan", &self.sqlite_scan, "events/s");
        row("full scan", &self.sqlite_scan_seconds, "s");
        row(
            &format!("filtered read (semantics {RARE_SEMANTICS})"),
            &self.sqlite_filtered_seconds,
            "s",
        );
        let ratios: Vec<f64> = self
            .sqlite_scan_seconds
            .iter()
            .zip(&self.sqlite_filtered_seconds)
            .map(|(s, f)| s / f)
            .collect();
        row("full scan time / filtered read time", &ratios, "x");
        row("on disk (file)", &self.sqlite_bytes, "bytes/ev");
        let vs: Vec<f64> = self
            .append_1000
            .iter()
            .zip(&self.sqlite_append)
            .map(|(a, b)| a / b)
            .collect();
        println!("-- shoal-store vs SQLite");
        row("append rate ratio (batches of 1000)", &vs, "x");
        let vs: Vec<f64> = self
            .scan
            .iter()
            .zip(&self.sqlite_scan)
            .map(|(a, b)| a / b)
            .collect();
        row("full scan rate ratio", &vs, "x");

        let c = &self.cpu;
        let rate = |events: usize, secs: &[f64]| -> Vec<f64> {
            secs.iter().map(|s| events as f64 / s).collect()
        };
        let ratio =
            |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
        println!("-- the same on on-CPU time of the bench thread (load-independent)");
        row(
            "shoal-store append, batches of 1000",
            &rate(n, &c.append_1000),
            "events/s",
        );
        row("shoal-store full scan", &rate(n, &c.scan), "events/s");
        row(
            "shoal-store full scan / filtered read (warm)",
            &ratio(&c.scan, &c.filtered),
            "x",
        );
        row(
            "the same, both cold",
            &ratio(&c.cold_scan, &c.cold_filtered),
            "x",
        );
        row(
            "the same, leaves all by `pack` (warm)",
            &ratio(&c.bg_scan, &c.bg_filtered),
            "x",
        );
        row(
            "full scan / last event of every leaf",
            &ratio(&c.scan, &c.leaf_ends),
            "x",
        );
        row(
            "SQLite insert, batches of 1000",
            &rate(n, &c.sqlite_append),
            "events/s",
        );
        row("SQLite full scan", &rate(n, &c.sqlite_scan), "events/s");
        row(
            "SQLite full scan / filtered read",
            &ratio(&c.sqlite_scan, &c.sqlite_filtered),
            "x",
        );
    }
}

fn source() -> SourceId {
    SourceId::new("12D3KooWBenchSourceFactoryFloorShoal")
}

fn config() -> StoreConfig {
    StoreConfig {
        // Collect what packing replaced right away, so bytes on disk are measured after GC.
        gc_grace: Duration::ZERO,
        ..StoreConfig::default()
    }
}

/// Appends `events` in batches of `batch` to a fresh store in `dir`; returns events/s and the
/// on-CPU seconds it took.
fn append_rate(
    dir: &Path,
    events: &[NewEvent],
    batch: usize,
) -> Result<(Store, f64, f64), BoxError> {
    let store = Store::open(&dir.join("store.sqlite"), config())?;
    let mut writer = store.writer()?;
    // Cloning the batches is not the store's work: do it before the clock starts.
    let batches: Vec<Vec<NewEvent>> = events.chunks(batch).map(<[_]>::to_vec).collect();
    let source = source();
    let watch = Stopwatch::start();
    for batch in batches {
        writer.append(&source, batch)?;
    }
    let (wall, cpu) = watch.stop();
    drop(writer);
    Ok((store, events.len() as f64 / wall, cpu))
}

/// File size of the store (database + WAL) and the same without free pages, in bytes.
fn disk_bytes(path: &Path) -> Result<(u64, u64), BoxError> {
    let mut file = std::fs::metadata(path)?.len();
    let wal = path.with_extension("sqlite-wal");
    if let Ok(meta) = std::fs::metadata(&wal) {
        file += meta.len();
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let pragma = |name: &str| -> Result<u64, BoxError> {
        let value: i64 = conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?;
        Ok(value.max(0) as u64)
    };
    let live_pages = pragma("page_count")?.saturating_sub(pragma("freelist_count")?);
    Ok((file, live_pages * pragma("page_size")?))
}

fn store_run(events: &[NewEvent], rare: usize, figures: &mut Figures) -> Result<(), BoxError> {
    let n = events.len() as f64;
    let source = source();
    {
        let dir = tempfile::tempdir()?;
        let (_, rate, _) = append_rate(dir.path(), &events[..EVENTS_BATCH_1.min(events.len())], 1)?;
        figures.append_1.push(rate);
    }
    {
        let dir = tempfile::tempdir()?;
        let slice = &events[..EVENTS_BATCH_100.min(events.len())];
        let (_, rate, _) = append_rate(dir.path(), slice, 100)?;
        figures.append_100.push(rate);
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store.sqlite");
    let (store, rate, cpu) = append_rate(dir.path(), events, 1000)?;
    figures.append_1000.push(rate);
    figures.cpu.append_1000.push(cpu);
    // The writer was dropped by `append_rate`; take a fresh one on a reopened store.
    drop(store);
    let store = Store::open(&path, config())?;
    let mut writer = store.writer()?;
    writer.checkpoint()?;
    figures.unpacked_bytes.push(disk_bytes(&path)?.0 as f64 / n);

    let start = Instant::now();
    writer.pack(&source)?;
    figures.pack_seconds.push(start.elapsed().as_secs_f64());
    while writer.gc(100_000)?.blocks_deleted > 0 {}
    writer.checkpoint()?;
    let (file, live) = disk_bytes(&path)?;
    figures.file_bytes.push(file as f64 / n);
    figures.live_bytes.push(live as f64 / n);

    drop(writer);
    drop(store);
    let all = EventFilter::default();
    let filter = EventFilter {
        selectors: Some(vec![Selector {
            semantics: Some(RARE_SEMANTICS.into()),
            ..Selector::default()
        }]),
        ..EventFilter::default()
    };

    // Cold: a freshly opened store has no decoded branch cached, so the first read of each
    // kind also decodes the key branches it walks (~5 bytes of keys per event, compressed).
    let store = Store::open(&path, config())?;
    // Only reads from here: give up the writer (and with it the store's writer lock), so the
    // second store opened on the same file below is not refused.
    drop(store.writer()?);
    let reader = store.reader()?;
    let (count, secs, cpu) = read_all(&reader, &all)?;
    check(count, events.len(), "cold full scan")?;
    figures.cold_scan_seconds.push(secs);
    figures.cpu.cold_scan.push(cpu);
    let store_cold = Store::open(&path, config())?;
    let (count, secs, cpu) = read_all(&store_cold.reader()?, &filter)?;
    check(count, rare, "cold filtered read")?;
    figures.cold_filtered_seconds.push(secs);
    figures.cpu.cold_filtered.push(cpu);
    drop(store_cold);

    // Warm: the same reader again, branches cached; both reads do only their own work.
    let (count, secs, cpu) = read_all(&reader, &all)?;
    check(count, events.len(), "full scan")?;
    figures.scan.push(n / secs);
    figures.scan_seconds.push(secs);
    figures.cpu.scan.push(cpu);
    let (count, secs, cpu) = read_all(&reader, &filter)?;
    check(count, rare, "filtered read")?;
    figures.filtered_seconds.push(secs);
    figures.cpu.filtered.push(cpu);

    // Which leaves hold a match, and the floor: one read per leaf of its last event.
    let shape = reader
        .tree_shape(&source)?
        .ok_or("the bench source has no tree")?;
    let leaves: Vec<(u64, u64)> = shape
        .nodes
        .iter()
        .filter(|node| node.level == 0)
        .map(|node| (node.first_offset, node.last_offset))
        .collect();
    let rare_offsets: Vec<u64> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.semantics == RARE_SEMANTICS)
        .map(|(i, _)| i as u64)
        .collect();
    let matching = leaves
        .iter()
        .filter(|(lo, hi)| rare_offsets.iter().any(|o| (lo..=hi).contains(&o)))
        .count();
    figures.leaves_matching.push(matching as f64);
    figures.leaves.push(leaves.len() as f64);
    let watch = Stopwatch::start();
    for (_, last) in &leaves {
        for event in reader.events(&source, *last..=*last, &all, false)? {
            std::hint::black_box(event?);
        }
    }
    let (secs, cpu) = watch.stop();
    figures.leaf_ends_seconds.push(secs);
    figures.cpu.leaf_ends.push(cpu);

    packed_by_pack_alone(events, rare, figures)?;

    // The same share selected by time instead: the matches are contiguous, so the summaries
    // let the read skip every other leaf. Shows what the tree can skip when matches cluster.
    let share = events.len() / 100;
    let lo = events.len() / 2 - share / 2;
    let filter = EventFilter {
        time: Some(events[lo].timestamp..=events[lo + share - 1].timestamp),
        ..EventFilter::default()
    };
    let start = Instant::now();
    let mut count = 0usize;
    for event in reader.events(&source, 0..=u64::MAX, &filter, false)? {
        std::hint::black_box(event?);
        count += 1;
    }
    figures
        .time_filtered_seconds
        .push(start.elapsed().as_secs_f64());
    check(count, share, "time-range read")
}

/// Streams every event of the bench source that matches `filter`: (count, wall s, CPU s).
fn read_all(
    reader: &shoal_store::Reader,
    filter: &EventFilter,
) -> Result<(usize, f64, f64), BoxError> {
    let watch = Stopwatch::start();
    let mut count = 0usize;
    for event in reader.events(&source(), 0..=u64::MAX, filter, false)? {
        std::hint::black_box(event?);
        count += 1;
    }
    let (wall, cpu) = watch.stop();
    Ok((count, wall, cpu))
}

/// The same events appended with inline packing off, then packed once by `Writer::pack`: every
/// leaf at the pack level, as a background packer writes them (the inline pack that `append`
/// runs every `max_unpacked_depth` appends seals leaves at its own, lower level).
fn packed_by_pack_alone(
    events: &[NewEvent],
    rare: usize,
    figures: &mut Figures,
) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let mut config = config();
    // Deeper than the 200 appends below: `append` never packs inline.
    config.tree.max_unpacked_depth = 1 << 20;
    let store = Store::open(&dir.path().join("store.sqlite"), config)?;
    let mut writer = store.writer()?;
    for batch in events.chunks(1000) {
        writer.append(&source(), batch.to_vec())?;
    }
    writer.pack(&source())?;
    // As for the main tree: what packing replaced is collected and the WAL checkpointed, so
    // reads see the same file layout.
    while writer.gc(100_000)?.blocks_deleted > 0 {}
    writer.checkpoint()?;
    let reader = store.reader()?;
    let all = EventFilter::default();
    let filter = EventFilter::selectors(vec![Selector {
        semantics: Some(RARE_SEMANTICS.into()),
        ..Selector::default()
    }]);
    read_all(&reader, &all)?;
    let (count, secs, cpu) = read_all(&reader, &all)?;
    check(count, events.len(), "full scan (packed by pack)")?;
    figures.bg_scan_seconds.push(secs);
    figures.cpu.bg_scan.push(cpu);
    let (count, secs, cpu) = read_all(&reader, &filter)?;
    check(count, rare, "filtered read (packed by pack)")?;
    figures.bg_filtered_seconds.push(secs);
    figures.cpu.bg_filtered.push(cpu);
    Ok(())
}

fn check(got: usize, want: usize, what: &str) -> Result<(), BoxError> {
    if got != want {
        return Err(format!("{what} returned {got} events, expected {want}").into());
    }
    Ok(())
}

/// The reference: the same events as one SQLite row each.
fn sqlite_run(
    fixtures: &[FixtureEvent],
    rare: usize,
    figures: &mut Figures,
) -> Result<(), BoxError> {
    let n = fixtures.len() as f64;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.sqlite");
    let mut conn = Connection::open(&path)?;
    // Same durability as the store's default: WAL, synchronous=NORMAL.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(
        "CREATE TABLE events (
            offset INTEGER PRIMARY KEY, lamport INTEGER NOT NULL, timestamp INTEGER NOT NULL,
            semantics TEXT NOT NULL, name TEXT NOT NULL, tags TEXT NOT NULL, payload TEXT NOT NULL);
         CREATE INDEX events_semantics ON events (semantics, name);",
    )?;
    let tags: Vec<String> = fixtures
        .iter()
        .map(|e| serde_json::to_string(&e.tags))
        .collect::<Result<_, _>>()?;
    let watch = Stopwatch::start();
    for (c, chunk) in fixtures.chunks(1000).enumerate() {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (offset, lamport, timestamp, semantics, name, tags, payload)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )?;
            for (i, e) in chunk.iter().enumerate() {
                let offset = (c * 1000 + i) as i64;
                insert.execute(params![
                    offset,
                    offset,
                    e.timestamp as i64,
                    e.semantics,
                    e.name,
                    tags[offset as usize],
                    e.payload
                ])?;
            }
        }
        tx.commit()?;
    }
    let (secs, cpu) = watch.stop();
    figures.sqlite_append.push(n / secs);
    figures.cpu.sqlite_append.push(cpu);
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    figures.sqlite_bytes.push(disk_bytes(&path)?.0 as f64 / n);

    // Reads materialise every column, like the store's iterator does.
    let read = |sql: &str, arg: Option<&str>| -> Result<(usize, f64, f64), BoxError> {
        let watch = Stopwatch::start();
        let mut stmt = conn.prepare(sql)?;
        let mut rows = match arg {
            Some(a) => stmt.query(params![a])?,
            None => stmt.query([])?,
        };
        let mut count = 0;
        while let Some(row) = rows.next()? {
            let e: (i64, i64, i64, String, String, String, String) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
            );
            std::hint::black_box(e);
            count += 1;
        }
        let (secs, cpu) = watch.stop();
        Ok((count, secs, cpu))
    };
    let columns = "SELECT offset, lamport, timestamp, semantics, name, tags, payload FROM events";
    let (count, secs, cpu) = read(&format!("{columns} ORDER BY offset"), None)?;
    check(count, fixtures.len(), "SQLite full scan")?;
    figures.sqlite_scan.push(n / secs);
    figures.sqlite_scan_seconds.push(secs);
    figures.cpu.sqlite_scan.push(cpu);
    let (count, secs, cpu) = read(
        &format!("{columns} WHERE semantics = ? ORDER BY offset"),
        Some(RARE_SEMANTICS),
    )?;
    check(count, rare, "SQLite filtered read")?;
    figures.sqlite_filtered_seconds.push(secs);
    figures.cpu.sqlite_filtered.push(cpu);
    Ok(())
}
