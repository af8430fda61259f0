//! The console service: apps' log entries, stored durably with bounded retention and read back,
//! optionally following new entries live.
//!
//! Task graph: one `console-writer` thread owns the [`ConsoleWriter`] (the only write connection
//! of `console.sqlite3`). [`Console::append`] sends the entry over a bounded mpsc and waits for
//! the oneshot reply; the writer drains what is queued (capped), stores it in one transaction,
//! answers every waiter, then publishes the stored batch as one `Arc` on a bounded broadcast:
//! the one path by which followers learn of new entries. Readers use their own read-only
//! connections in `spawn_blocking`.
//!
//! Invariant of [`Console::read`]: entries come in insertion order, each at most once; with
//! `follow`, the broadcast is subscribed *before* the stored entries are read, and live entries
//! at or below the last sequence number already sent are skipped, so nothing falls into a gap
//! between catch-up and live. A follower that lags re-reads from the file (a read, not memory).
//!
//! Knows nothing of HTTP: validation of the wire format is the API's job; this module only fills
//! in `logTimestamp` where it is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shoal_store::console::{ConsoleReader, ConsoleWriter, LogEntry, NewLogEntry};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use shoal_store::console::{Error as StoreError, DEFAULT_RETENTION};

/// File name of the console log inside the data dir.
pub const CONSOLE_FILE: &str = "console.sqlite3";

/// Appends waiting for the writer; a full queue makes `append` wait (back-pressure).
const QUEUE: usize = 1024;
/// Most entries stored in one transaction.
const MAX_BATCH: usize = 512;
/// Stored batches a follower may fall behind before it re-reads from the file.
const BROADCAST: usize = 64;
/// Entries read from the file per page (bounds a reader's memory).
const PAGE: usize = 512;

/// Failures of the console service.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console log file failed; for an append, nothing of its batch was stored. Shared:
    /// one failed batch answers every waiter in it.
    #[error("console log: {0}")]
    Store(#[source] Arc<shoal_store::console::Error>),
    /// The service is shutting down; the entry may not have been stored.
    #[error("the console service is shut down")]
    Closed,
    /// The console's writer thread could not be started.
    #[error("cannot start the console writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// An entry could not be encoded (a bug: entries are plain data).
    #[error("cannot encode a console entry: {0}")]
    Encode(#[source] serde_json::Error),
    /// A reading task died (a bug: it panicked).
    #[error("a console read failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl From<shoal_store::console::Error> for ConsoleError {
    fn from(e: shoal_store::console::Error) -> Self {
        ConsoleError::Store(Arc::new(e))
    }
}

/// Severity of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Debug,
    Info,
    Warn,
    Error,
}

impl Severity {
    /// Parses the wire form (`debug`, `info`, `warn`, `error`).
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "debug" => Some(Severity::Debug),
            "info" => Some(Severity::Info),
            "warn" => Some(Severity::Warn),
            "error" => Some(Severity::Error),
            _ => None,
        }
    }
}

/// One log entry as posted by an app (API.md "Console service"); field names are the wire's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub severity: Severity,
    pub log_name: String,
    pub message: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub producer_name: String,
    pub producer_version: String,
    /// RFC 3339; filled in with the time of arrival when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_data: Option<Box<RawValue>>,
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp, or why it is not one.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 timestamp ({e}), e.g. 2026-11-23T15:04:05Z"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| "timestamp out of range".into())
}

/// The current time in RFC 3339 (UTC, microsecond precision) and in micros since the epoch.
fn now() -> (String, i64) {
    let t = time::OffsetDateTime::now_utc();
    let t = t
        .replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t);
    let micros = i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    let text = t
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    (text, micros)
}

struct Append {
    entry: NewLogEntry,
    reply: oneshot::Sender<Result<(), ConsoleError>>,
}

/// Handle on the console service; cheap to clone. The writer thread stops when the last handle
/// is dropped (after storing what was queued).
#[derive(Clone)]
pub struct Console {
    tx: mpsc::Sender<Append>,
    updates: broadcast::Sender<Arc<[LogEntry]>>,
    path: Arc<PathBuf>,
}

impl Console {
    /// Opens (creating) `<data_dir>/console.sqlite3`, keeping the newest `retention` entries,
    /// and starts the writer thread.
    pub fn start(data_dir: &Path, retention: u64) -> Result<Console, ConsoleError> {
        let path = data_dir.join(CONSOLE_FILE);
        let writer = ConsoleWriter::open(&path, retention)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let (updates, _) = broadcast::channel(BROADCAST);
        let thread_updates = updates.clone();
        std::thread::Builder::new()
            .name("console-writer".into())
            .spawn(move || write_loop(writer, rx, thread_updates))
            .map_err(ConsoleError::Spawn)?;
        Ok(Console {
            tx,
            updates,
            path: Arc::new(path),
        })
    }

    /// Stores one entry durably, filling in `logTimestamp` if absent; the caller must have
    /// checked a given `logTimestamp` with [`parse_rfc3339`] (an unparsable one is stored with
    /// the arrival time as its sort key). Dropping the future after the entry was queued may
    /// still store it.
    pub async fn append(&self, mut entry: Entry) -> Result<(), ConsoleError> {
        let timestamp = match entry.log_timestamp.as_deref().map(parse_rfc3339) {
            Some(Ok(ts)) => ts,
            Some(Err(_)) => now().1,
            None => {
                let (text, ts) = now();
                entry.log_timestamp = Some(text);
                ts
            }
        };
        let json = serde_json::to_string(&entry).map_err(ConsoleError::Encode)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Append {
                entry: NewLogEntry { timestamp, json },
                reply,
            })
            .await
            .map_err(|_| ConsoleError::Closed)?;
        rx.await.map_err(|_| ConsoleError::Closed)?
    }

    /// Stored entries with `logTimestamp >= since` (micros since the epoch) in insertion order,
    /// each as its JSON text; with `follow`, then every new matching entry as it is stored,
    /// until the stream is dropped or the service shuts down. Dropping the stream is safe.
    pub fn read(
        &self,
        since: Option<i64>,
        follow: bool,
    ) -> impl Stream<Item = Result<String, ConsoleError>> + Send + 'static {
        let live = follow.then(|| self.updates.subscribe());
        let state = ReadState {
            path: self.path.clone(),
            reader: None,
            since,
            after: 0,
            buffer: std::collections::VecDeque::new(),
            live,
            catching_up: true,
            failed: false,
        };
        futures::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
    }
}

struct ReadState {
    path: Arc<PathBuf>,
    reader: Option<ConsoleReader>,
    since: Option<i64>,
    /// Highest sequence number handed out (or skipped as not matching).
    after: u64,
    buffer: std::collections::VecDeque<LogEntry>,
    live: Option<broadcast::Receiver<Arc<[LogEntry]>>>,
    catching_up: bool,
    failed: bool,
}

impl ReadState {
    async fn next(&mut self) -> Option<Result<String, ConsoleError>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.seq;
                return Some(Ok(e.json));
            }
            if self.catching_up {
                match self.read_page().await {
                    Ok(true) => continue,
                    Ok(false) => self.catching_up = false,
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
            }
            let live = self.live.as_mut()?;
            match live.recv().await {
                Ok(batch) => {
                    let since = self.since.unwrap_or(i64::MIN);
                    self.buffer.extend(
                        batch
                            .iter()
                            .filter(|e| e.seq > self.after && e.timestamp >= since)
                            .cloned(),
                    );
                }
                // Fell behind: what was missed is in the file.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Reads the next page after `self.after` into the buffer; false when there was none.
    async fn read_page(&mut self) -> Result<bool, ConsoleError> {
        let reader = self.reader.take();
        let path = self.path.clone();
        let (after, since) = (self.after, self.since);
        let (reader, page) = tokio::task::spawn_blocking(move || {
            let reader = match reader {
                Some(r) => r,
                None => ConsoleReader::open(&path)?,
            };
            let page = reader.page(after, since, PAGE)?;
            Ok::<_, ConsoleError>((reader, page))
        })
        .await
        .map_err(ConsoleError::Task)??;
        self.reader = Some(reader);
        let more = !page.is_empty();
        self.buffer.extend(page);
        Ok(more)
    }
}

/// The writer thread: drain queued appends (capped), store them in one transaction, answer
/// every waiter, broadcast the batch. Ends when every [`Console`] handle is gone.
fn write_loop(
    mut writer: ConsoleWriter,
    mut rx: mpsc::Receiver<Append>,
    updates: broadcast::Sender<Arc<[LogEntry]>>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let (entries, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|a| (a.entry, a.reply)).unzip();
        match writer.append(entries) {
            Ok(stored) => {
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
                // No follower listening is fine.
                let _ = updates.send(stored.into());
            }
            Err(e) => {
                tracing::warn!("console log append failed: {e}");
                let e = Arc::new(e);
                for r in replies {
                    let _ = r.send(Err(ConsoleError::Store(e.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    fn entry(msg: &str, ts: Option<&str>) -> Entry {
        Entry {
            severity: Severity::Info,
            log_name: "app".into(),
            message: msg.into(),
            labels: BTreeMap::new(),
            producer_name: "test".into(),
            producer_version: "1".into(),
            log_timestamp: ts.map(String::from),
            additional_data: None,
        }
    }

    async fn next_json(
        s: &mut (impl Stream<Item = Result<String, ConsoleError>> + Unpin),
    ) -> serde_json::Value {
        let line = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("timed out")
            .expect("stream ended")
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test]
    async fn append_read_since_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let console = Console::start(dir.path(), 100).unwrap();
        console
            .append(entry("old", Some("2020-01-01T00:00:00Z")))
            .await
            .unwrap();
        console.append(entry("now", None)).await.unwrap();

        let all: Vec<_> = console.read(None, false).collect().await;
        assert_eq!(all.len(), 2);
        let second: serde_json::Value = serde_json::from_str(all[1].as_ref().unwrap()).unwrap();
        assert!(parse_rfc3339(second["logTimestamp"].as_str().unwrap()).is_ok());

        let since = parse_rfc3339("2021-01-01T00:00:00Z").unwrap();
        let recent: Vec<_> = console.read(Some(since), false).collect().await;
        assert_eq!(recent.len(), 1);

        let mut follow = Box::pin(console.read(Some(since), true));
        assert_eq!(next_json(&mut follow).await["message"], "now");
        console
            .append(entry("too old", Some("2019-01-01T00:00:00Z")))
            .await
            .unwrap();
        console.append(entry("live", None)).await.unwrap();
        assert_eq!(next_json(&mut follow).await["message"], "live");
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Ok(1_500_000));
        assert!(parse_rfc3339("yesterday").is_err());
        let (text, micros) = now();
        assert_eq!(parse_rfc3339(&text), Ok(micros));
    }
}
