//! How the client commands print: human-readable by default, `--json` for scripts.
//!
//! With `--json`, streamed items (events, log entries) are written exactly as the node sent them,
//! one per line (NDJSON; no re-encoding), and single answers as one JSON document. Human output
//! is one line per item. Everything goes through one buffered stdout writer; live streams flush
//! after every item so a watcher sees it at once. Progress lines are `progress.rs`'s.

use std::io::Write;

use anyhow::Result;
use serde_json::Value;

/// Output format chosen by `--json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

impl Format {
    pub fn from_json_flag(json: bool) -> Format {
        if json {
            Format::Json
        } else {
            Format::Human
        }
    }
}

/// The command's standard output.
pub struct Out {
    w: std::io::BufWriter<std::io::Stdout>,
    format: Format,
    /// Flush after every item (subscriptions, `--follow`).
    live: bool,
}

impl Out {
    pub fn new(format: Format, live: bool) -> Out {
        Out {
            w: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            format,
            live,
        }
    }

    fn end_item(&mut self) -> Result<()> {
        if self.live {
            self.w.flush()?;
        }
        Ok(())
    }

    /// One event as received (an NDJSON line of a query or subscription).
    pub fn event(&mut self, line: &str) -> Result<()> {
        match self.format {
            Format::Json => writeln!(self.w, "{line}")?,
            Format::Human => {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                writeln!(self.w, "{}", human_event(&v, line))?;
            }
        }
        self.end_item()
    }

    /// One console log entry as received.
    pub fn log_entry(&mut self, line: &str) -> Result<()> {
        match self.format {
            Format::Json => writeln!(self.w, "{line}")?,
            Format::Human => {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                writeln!(self.w, "{}", human_log(&v, line))?;
            }
        }
        self.end_item()
    }

    /// An offset map (`shoal events offsets`).
    pub fn offsets(&mut self, v: &Value) -> Result<()> {
        match (self.format, v.as_object()) {
            (Format::Human, Some(map)) => {
                if map.is_empty() {
                    writeln!(self.w, "no events stored")?;
                }
                for (source, offset) in map {
                    writeln!(self.w, "{source}  {offset}")?;
                }
            }
            _ => writeln!(self.w, "{v}")?,
        }
        Ok(())
    }

    /// The stamps the node gave to published events (`{"source","offset","lamport","timestamp"}`
    /// each); `requested` is how many were sent.
    pub fn published(&mut self, stamps: &[Value], requested: usize) -> Result<()> {
        match self.format {
            Format::Json => {
                for s in stamps {
                    writeln!(self.w, "{s}")?;
                }
            }
            Format::Human => match stamps {
                [] => writeln!(self.w, "published {requested} events")?,
                [one] => writeln!(
                    self.w,
                    "published offset {} lamport {} source {}",
                    one["offset"],
                    one["lamport"],
                    plain(&one["source"])
                )?,
                [first, .., last] => writeln!(
                    self.w,
                    "published {} events: offsets {}..={} lamports {}..={} source {}",
                    stamps.len(),
                    first["offset"],
                    last["offset"],
                    first["lamport"],
                    last["lamport"],
                    plain(&first["source"])
                )?,
            },
        }
        Ok(())
    }

    /// `GET /api/v1/node/info`.
    pub fn node_info(&mut self, v: &Value) -> Result<()> {
        if self.format == Format::Json {
            writeln!(self.w, "{v}")?;
            return Ok(());
        }
        let field = |k: &str| plain(&v[k]);
        writeln!(self.w, "source:     {}", field("source"))?;
        writeln!(self.w, "version:    {}", field("version"))?;
        writeln!(self.w, "uptime:     {}s", field("uptimeSecs"))?;
        writeln!(self.w, "streams:    {}", field("streams"))?;
        writeln!(self.w, "events:     {}", field("events"))?;
        let store = match v["storeBytes"].as_u64() {
            Some(n) => human_bytes(n),
            None => field("storeBytes"),
        };
        writeln!(self.w, "store:      {store}")?;
        let addrs: Vec<String> = v["listenAddrs"]
            .as_array()
            .map(|a| a.iter().map(plain).collect())
            .unwrap_or_default();
        writeln!(self.w, "listening:  {}", addrs.join(" "))?;
        writeln!(self.w, "console:    {}", field("consoleAddr"))?;
        writeln!(self.w, "store api:  {}", field("storeAddr"))?;
        let peers = v["peers"].as_array().cloned().unwrap_or_default();
        writeln!(self.w, "peers:      {}", peers.len())?;
        for p in &peers {
            let state = if p["connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "disconnected"
            };
            // How far the peer stores our own events (from its last digest).
            let holds = match p["ourOffsetStored"].as_u64() {
                Some(o) => format!("  holds our events up to offset {o}"),
                None => String::new(),
            };
            // Why the last dial failed (as the dashboard's peers table shows it).
            let error = match p["lastError"].as_str() {
                Some(e) => format!("  last error: {e}"),
                None => String::new(),
            };
            writeln!(self.w, "  {}  {state}{holds}{error}", plain(&p["peerId"]))?;
        }
        // Replication progress: what gossip says exists vs what is stored here.
        let sources = v["sources"].as_array().cloned().unwrap_or_default();
        if !sources.is_empty() {
            writeln!(
                self.w,
                "sources:    {} (stored / known offset)",
                sources.len()
            )?;
            for s in &sources {
                let (stored, known) = (plain(&s["storedOffset"]), plain(&s["knownOffset"]));
                let behind = if stored != known { "  syncing" } else { "" };
                writeln!(
                    self.w,
                    "  {}  {stored} / {known}{behind}",
                    plain(&s["source"])
                )?;
            }
        }
        Ok(())
    }

    /// `GET /api/v1/nodes`: one line per node (the source in full: it is what `--to` takes).
    pub fn nodes(&mut self, v: &Value) -> Result<()> {
        let nodes = match (self.format, v.as_array()) {
            (Format::Human, Some(nodes)) => nodes,
            _ => {
                writeln!(self.w, "{v}")?;
                return Ok(());
            }
        };
        writeln!(
            self.w,
            "{:<52}  {:<16}  {:<8}  {:<9}  {:<9}  {:<12}  {:<5}  EVENTS",
            "SOURCE", "NAME", "VERSION", "CONNECTED", "LAST SEEN", "APPS RUN/ALL", "PEERS"
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        for n in nodes {
            let seen = match n["lastSeen"].as_u64() {
                Some(t) => format!("{}s ago", now.saturating_sub(t) / 1_000_000),
                None => "-".into(),
            };
            let connected = if n["connected"].as_bool() == Some(true) {
                "yes"
            } else {
                "via peers"
            };
            let apps = format!("{}/{}", n["apps"]["running"], n["apps"]["deployed"]);
            // How many peers it is connected to (who they are: `--json`, or the dashboard).
            let peers = n["peers"].as_array().map_or(0, Vec::len);
            writeln!(
                self.w,
                "{:<52}  {:<16}  {:<8}  {:<9}  {:<9}  {:<12}  {:<5}  {}",
                plain(&n["source"]),
                plain(&n["displayName"]),
                plain(&n["version"]),
                connected,
                seen,
                apps,
                peers,
                n["events"]
            )?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.w.flush()?;
        Ok(())
    }
}

/// `n` bytes for people: B, KiB, MiB, ...
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A JSON value for humans: strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `2026-11-23T15:04:05.123456Z  <source>/<offset>  lamport <l>  <semantics>/<name>  [tags]  payload`
fn human_event(v: &Value, raw: &str) -> String {
    let Some(stream) = v.get("stream") else {
        return raw.to_string();
    };
    let time = v["timestamp"]
        .as_u64()
        .map(format_micros)
        .unwrap_or_else(|| "-".into());
    let tags = match v["tags"].as_array() {
        Some(t) if !t.is_empty() => {
            let t: Vec<String> = t.iter().map(plain).collect();
            format!("  [{}]", t.join(","))
        }
        _ => String::new(),
    };
    format!(
        "{time}  {}/{}  lamport {}  {}/{}{tags}  {}",
        plain(&stream["source"]),
        v["offset"],
        v["lamport"],
        plain(&stream["semantics"]),
        plain(&stream["name"]),
        v["payload"]
    )
}

/// `<logTimestamp>  INFO   <producer>  <logName>: <message>  k=v ...`
fn human_log(v: &Value, raw: &str) -> String {
    if !v.is_object() {
        return raw.to_string();
    }
    let labels = match v["labels"].as_object() {
        Some(l) if !l.is_empty() => {
            let l: Vec<String> = l.iter().map(|(k, v)| format!("{k}={}", plain(v))).collect();
            format!("  {}", l.join(" "))
        }
        _ => String::new(),
    };
    format!(
        "{}  {:<5}  {}  {}: {}{labels}",
        plain(&v["logTimestamp"]),
        plain(&v["severity"]).to_uppercase(),
        plain(&v["producerName"]),
        plain(&v["logName"]),
        plain(&v["message"])
    )
}

/// Micros since the epoch as RFC 3339 (UTC).
fn format_micros(micros: u64) -> String {
    let nanos = i128::from(micros) * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}
