//! `shoal store ...` end to end: the real `shoal` binary against a data dir this test fills
//! through the store library with fixture events. Every subcommand in text and `--json`;
//! `tree --dot`; `events` ranges; `verify` finding a corrupted and a missing block (damaged
//! with rusqlite behind the store's back) and exiting non-zero; reading while a writer holds
//! the store open; helpful errors for a wrong data dir, source or CID.

use std::{
    path::Path,
    process::{Command, Output},
};

use serde_json::{value::RawValue, Value};
use shoal_fixtures::Factory;
use shoal_store::{Cid, NewEvent, SourceId, Store, StoreConfig};

const SOURCES: [&str; 3] = [
    "12D3KooWInspectorTestMachineM1",
    "12D3KooWInspectorTestRobotR1",
    "12D3KooWInspectorTestTabletWs1",
];
const EVENTS: u64 = 400;

fn shoal(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .arg("store")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("SHOAL_DATA_DIR")
        .output()
        .expect("run shoal")
}

/// Runs a subcommand that must succeed; returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = shoal(dir, args);
    assert!(
        out.status.success(),
        "shoal store {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(dir, &args)).expect("--json prints JSON")
}

fn new_events(seed: u64, n: u64) -> Vec<NewEvent> {
    Factory::new(seed)
        .take(n as usize)
        .enumerate()
        .map(|(i, e)| NewEvent {
            semantics: e.semantics,
            name: e.name,
            tags: e.tags,
            lamport: i as u64,
            timestamp: e.timestamp,
            payload: RawValue::from_string(e.payload).expect("fixture payload is JSON"),
        })
        .collect()
}

/// A data dir with three sources of `EVENTS` events each (small debug trees, so there are
/// several levels); the first source is packed.
fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("store.sqlite"), StoreConfig::debug()).expect("open");
    let mut writer = store.writer().expect("writer");
    for (i, source) in SOURCES.iter().enumerate() {
        let source = SourceId::new(*source);
        let events = new_events(i as u64, EVENTS);
        for batch in events.chunks(37) {
            writer.append(&source, batch.to_vec()).expect("append");
        }
    }
    writer.pack(&SourceId::new(SOURCES[0])).expect("pack");
    dir
}

fn tree_json(dir: &Path, source: &str) -> Value {
    ok_json(dir, &["tree", source])
}

/// CID of some leaf of `source`'s tree.
fn a_leaf(dir: &Path, source: &str) -> String {
    let tree = tree_json(dir, source);
    let nodes = tree["nodes"].as_array().expect("nodes");
    let leaf = nodes
        .iter()
        .rev()
        .find(|n| n["level"] == 0 && n["cid"].is_string())
        .expect("a leaf with its own block");
    leaf["cid"].as_str().expect("cid").to_string()
}

fn sqlite(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("store.sqlite")).expect("open sqlite")
}

const BLOCK_ID: &str = "(SELECT id FROM cids WHERE cid = ?1)";

/// Flips one bit of the block's last byte: same length, different hash.
fn corrupt(dir: &Path, cid: &str) {
    let cid: Cid = cid.parse().expect("cid");
    let conn = sqlite(dir);
    let mut data: Vec<u8> = conn
        .query_row(
            &format!("SELECT data FROM blocks WHERE id = {BLOCK_ID}"),
            [cid.to_bytes()],
            |r| r.get(0),
        )
        .expect("read the block");
    if let Some(last) = data.last_mut() {
        *last ^= 1;
    }
    let changed = conn
        .execute(
            &format!("UPDATE blocks SET data = ?2 WHERE id = {BLOCK_ID}"),
            rusqlite::params![cid.to_bytes(), data],
        )
        .expect("write the block");
    assert_eq!(changed, 1);
}

/// Deletes the block's bytes (its CID stays known, as for a block never fetched).
fn remove(dir: &Path, cid: &str) {
    let cid: Cid = cid.parse().expect("cid");
    let changed = sqlite(dir)
        .execute(
            &format!("DELETE FROM blocks WHERE id = {BLOCK_ID}"),
            [cid.to_bytes()],
        )
        .expect("delete the block");
    assert_eq!(changed, 1);
}

#[test]
fn streams_lists_every_source() {
    let dir = data_dir();
    let text = ok(dir.path(), &["streams"]);
    for source in SOURCES {
        assert!(text.contains(source), "{text}");
    }
    let json = ok_json(dir.path(), &["streams"]);
    let rows = json.as_array().expect("array");
    assert_eq!(rows.len(), SOURCES.len());
    for row in rows {
        assert_eq!(row["count"], EVENTS);
        assert_eq!(row["last_offset"], EVENTS - 1);
        assert!(row["bytes"].as_u64().is_some_and(|b| b > 0));
        assert!(row["root"]
            .as_str()
            .is_some_and(|r| r.parse::<Cid>().is_ok()));
    }
}

#[test]
fn tree_shows_levels_as_text_json_and_dot() {
    let dir = data_dir();
    let source = SOURCES[1];
    let text = ok(dir.path(), &["tree", source]);
    assert!(text.contains("leaf") && text.contains("branch"), "{text}");
    let json = tree_json(dir.path(), source);
    assert_eq!(json["count"], EVENTS);
    let nodes = json["nodes"].as_array().expect("nodes");
    let leaves: u64 = nodes
        .iter()
        .filter(|n| n["level"] == 0)
        .map(|n| n["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(leaves, EVENTS, "leaves cover every event once");
    let streams = ok_json(dir.path(), &["streams"]);
    let root = streams
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["source"] == source))
        .map(|r| r["root"].clone());
    assert_eq!(root, Some(json["root"].clone()));
    let dot = ok(dir.path(), &["tree", source, "--dot"]);
    assert!(dot.starts_with("digraph"), "{dot}");
    assert!(dot.contains("n0 -> n1;"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
}

#[test]
fn events_prints_a_range_as_ndjson() {
    let dir = data_dir();
    let fixtures = new_events(2, EVENTS);
    let text = ok(
        dir.path(),
        &["events", SOURCES[2], "--from", "10", "--to", "19"],
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect();
    assert_eq!(lines.len(), 10);
    for (i, event) in lines.iter().enumerate() {
        let offset = 10 + i;
        assert_eq!(event["offset"], offset as u64);
        let payload: Value = serde_json::from_str(fixtures[offset].payload.get()).expect("json");
        assert_eq!(event["payload"], payload);
    }
    // Whole log by default; `--json` changes nothing (NDJSON already); past the end is empty.
    assert_eq!(
        ok(dir.path(), &["events", SOURCES[2]]).lines().count(),
        EVENTS as usize
    );
    let json = ok(
        dir.path(),
        &["events", SOURCES[2], "--from", "390", "--json"],
    );
    assert_eq!(json.lines().count(), 10);
    assert_eq!(
        ok(dir.path(), &["events", SOURCES[2], "--from", "5000"]),
        ""
    );
}

#[test]
fn block_decodes_a_tree_node() {
    let dir = data_dir();
    let root = tree_json(dir.path(), SOURCES[0])["root"]
        .as_str()
        .expect("root")
        .to_string();
    let text = ok(dir.path(), &["block", &root]);
    assert!(text.contains("dag-cbor"), "{text}");
    let json = ok_json(dir.path(), &["block", &root]);
    assert_eq!(json["kind"], "dag_cbor");
    assert_eq!(json["cid"], root.as_str());
    let leaf = a_leaf(dir.path(), SOURCES[0]);
    assert_eq!(ok_json(dir.path(), &["block", &leaf])["cid"], leaf.as_str());
}

#[test]
fn block_shows_raw_bytes_as_hex() {
    let dir = data_dir();
    let data = shoal_fixtures::blob(1, 40);
    let cid = shoal_store::cid::cid_of(shoal_store::cid::RAW, &data);
    {
        let store =
            Store::open(&dir.path().join("store.sqlite"), StoreConfig::debug()).expect("open");
        let mut writer = store.writer().expect("writer");
        writer
            .put_blocks(&[(cid, data.clone())])
            .expect("put a raw block");
        writer.set_alias("test/raw", Some(&cid)).expect("pin it");
    }
    let cid = cid.to_string();
    let text = ok(dir.path(), &["block", &cid]);
    assert!(text.contains("raw, 40 bytes"), "{text}");
    // 32 bytes per line: the second line starts at offset 0x20.
    assert!(text.contains("00000020  "), "{text}");
    let json = ok_json(dir.path(), &["block", &cid]);
    assert_eq!(json["kind"], "raw");
    assert_eq!(json["length"], 40);
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(json["hex"], hex.as_str());
}

#[test]
fn stats_and_gc_report_numbers() {
    let dir = data_dir();
    let text = ok(dir.path(), &["stats"]);
    assert!(
        text.contains("block(s)") && text.contains(SOURCES[0]),
        "{text}"
    );
    let json = ok_json(dir.path(), &["stats"]);
    assert!(json["blocks"].as_u64().is_some_and(|b| b > 0));
    let sources = json["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), SOURCES.len());
    assert!(sources.iter().all(|s| s["events"] == EVENTS));
    let text = ok(dir.path(), &["gc"]);
    assert!(text.starts_with("freed"), "{text}");
    let json = ok_json(dir.path(), &["gc"]);
    assert!(json["blocks_deleted"].is_u64());
    // GC never breaks a tree.
    assert!(ok(dir.path(), &["verify"]).contains("sound"));
}

#[test]
fn verify_is_clean_on_a_sound_store() {
    let dir = data_dir();
    let text = ok(dir.path(), &["verify"]);
    assert!(text.contains("sound"), "{text}");
    let json = ok_json(dir.path(), &["verify"]);
    assert_eq!(json["problems"], Value::Array(vec![]));
    assert_eq!(json["aliases"], SOURCES.len() as u64);
}

#[test]
fn verify_names_corrupt_and_missing_blocks() {
    let dir = data_dir();
    let corrupt_cid = a_leaf(dir.path(), SOURCES[1]);
    let missing = a_leaf(dir.path(), SOURCES[2]);
    corrupt(dir.path(), &corrupt_cid);
    remove(dir.path(), &missing);
    let out = shoal(dir.path(), &["verify"]);
    assert!(!out.status.success(), "verify must fail on a damaged store");
    let text = String::from_utf8_lossy(&out.stdout);
    let corrupt_line = text.lines().find(|l| l.contains(&corrupt_cid));
    assert!(
        corrupt_line.is_some_and(|l| l.contains("corrupt") && l.contains(SOURCES[1])),
        "{text}"
    );
    let missing_line = text.lines().find(|l| l.contains(&missing));
    assert!(
        missing_line.is_some_and(|l| l.contains("missing") && l.contains(SOURCES[2])),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 missing or corrupt"));

    let out = shoal(dir.path(), &["verify", "--json"]);
    assert!(!out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).expect("json");
    let problems = json["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 2, "{json}");
    assert!(problems.iter().any(|p| p["cid"] == corrupt_cid.as_str()));
    assert!(problems
        .iter()
        .any(|p| p["cid"] == missing.as_str() && p["kind"] == "missing"));
}

#[test]
fn reads_while_a_writer_has_the_store_open() {
    let dir = data_dir();
    let store = Store::open(&dir.path().join("store.sqlite"), StoreConfig::debug()).expect("open");
    let mut writer = store.writer().expect("writer");
    let source = SourceId::new(SOURCES[0]);
    writer
        .append(&source, new_events(9, 5))
        .expect("append while inspecting");
    let json = ok_json(dir.path(), &["streams"]);
    let count = json
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["source"] == SOURCES[0]))
        .map(|r| r["count"].clone());
    assert_eq!(count, Some(Value::from(EVENTS + 5)));
    assert!(ok(dir.path(), &["verify"]).contains("sound"));
}

#[test]
fn mistakes_get_one_line_that_says_what_to_do() {
    let dir = data_dir();
    let empty = tempfile::tempdir().expect("temp dir");
    let out = shoal(empty.path(), &["streams"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no store in") && err.contains("--data-dir"),
        "{err}"
    );

    let out = shoal(dir.path(), &["tree", "no-such-source"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoal store streams"));

    let out = shoal(dir.path(), &["block", "not-a-cid"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a CID"));
}
