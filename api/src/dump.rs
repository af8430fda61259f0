//! `GET /api/v1/events/dump` and `POST /api/v1/events/restore` (*extension*): the node's event
//! logs as a CAR v1 file, streamed both ways (the engine's `dump` module owns the format and
//! the checks; this module only moves bytes between HTTP bodies and it).
//!
//! Neither direction holds the file in memory: the dump is written into a bounded channel
//! that feeds the response body in 64 KiB chunks; the restore's request body feeds a bounded
//! channel that a blocking reader drains.

use std::io::{Read, Write};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use shoal_engine::dump::{Backup, DumpError};
use tokio::sync::mpsc;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::error::ApiError;
use crate::ndjson::{BoxError, StreamSlot};

/// Bytes per response chunk of a dump.
const CHUNK: usize = 64 << 10;

/// The dump and restore routes.
pub fn routes(
    backup: Backup,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let with = move || {
        let backup = backup.clone();
        warp::any().map(move || backup.clone())
    };
    let dump = warp::path!("api" / "v1" / "events" / "dump")
        .and(warp::get())
        .and(with())
        .map(dump);
    let restore = warp::path!("api" / "v1" / "events" / "restore")
        .and(warp::post())
        .and(with())
        .and(warp::body::stream())
        .then(restore);
    dump.or(restore).unify()
}

/// Writes into the response body's channel, [`CHUNK`] bytes at a time.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        // Runs on the dump's blocking thread; a client that went away ends the dump.
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn dump(backup: Backup) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, BoxError>>(8);
    let writer = ChannelWriter {
        tx: tx.clone(),
        buf: Vec::with_capacity(CHUNK),
    };
    tokio::spawn(async move {
        match backup.dump(writer, |_| {}).await {
            Ok(summary) => tracing::info!(
                sources = summary.sources,
                blocks = summary.blocks,
                bytes = summary.bytes,
                skipped = summary.skipped.len(),
                "dump written"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "dump failed; the response is cut off");
                let _ = tx.send(Err(Box::new(e) as BoxError)).await;
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).boxed();
    let mut resp = Response::new(Bytes::new().into());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.ipld.car; version=1"),
    );
    resp.extensions_mut().insert(StreamSlot::new(stream));
    resp
}

/// Reads the request body's chunks as they arrive (on the restore's blocking thread).
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

async fn restore<S, B>(backup: Backup, body: S) -> Response
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let (tx, rx) = mpsc::channel(8);
    let feed = tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let item = chunk
                .map(|mut b| b.copy_to_bytes(b.remaining()))
                .map_err(|e| format!("reading the request body: {e}"));
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let result = backup.restore(reader, |_| {}).await;
    feed.abort();
    match result {
        Ok(summary) => {
            warp::reply::with_status(warp::reply::json(&summary), StatusCode::OK).into_response()
        }
        Err(e) => from_dump(e).into_response(),
    }
}

/// A bad file is the client's fault (400, naming what is wrong); the rest is the node's.
fn from_dump(e: DumpError) -> ApiError {
    let chain = error_chain(&e);
    match e {
        DumpError::Car(_) | DumpError::Manifest(_) => {
            ApiError::bad_request(format!("not a valid dump: {chain}"))
        }
        DumpError::Events(ev) => crate::error::from_events(ev, "restore"),
        _ => ApiError::internal(chain),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
