//! NDJSON streaming responses (`application/x-ndjson`).
//!
//! Rules (API.md): one JSON object per `\n`-terminated line, each line flushed as soon as it is
//! written, status and headers sent at once (even when nothing matches), and a bare `\n`
//! keep-alive after a configurable silence on long-lived streams.
//!
//! Flushing: lines that are ready together go out in one write (up to [`MAX_WRITE`] bytes);
//! as soon as the source has nothing ready, what is buffered is handed to hyper, which writes
//! it before waiting again. So no line waits for a later one, and a 1M-event query does not
//! cost 1M syscalls.
//!
//! warp 0.4 has no public streaming body, so a streaming reply carries its stream in a response
//! extension ([`StreamSlot`]) and `server.rs` puts it in as the body. Such responses need the
//! server of this crate (not `warp::test`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Future, Stream};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;

/// Largest chunk handed to hyper at once.
pub const MAX_WRITE: usize = 64 * 1024;

/// Errors that abort a stream (the client sees a broken chunked body, not a clean end).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body stream.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Carries a body stream from a warp reply to the server (taken exactly once).
#[derive(Clone)]
pub struct StreamSlot(Arc<Mutex<Option<BodyStream>>>);

impl StreamSlot {
    /// A slot holding `stream` (blob downloads use it too).
    pub(crate) fn new(stream: BodyStream) -> Self {
        StreamSlot(Arc::new(Mutex::new(Some(stream))))
    }

    pub(crate) fn take(&self) -> Option<BodyStream> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// A 200 NDJSON response streaming `items`, each encoded as one line by `encode`, with a
/// keep-alive line after `keepalive` of silence (if given).
pub fn response<S, T, E, F>(items: S, encode: F, keepalive: Option<Duration>) -> Response
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
    F: FnMut(&T, &mut Vec<u8>) + Send + Unpin + 'static,
{
    let body = Lines {
        items: Box::pin(items),
        encode,
        keepalive: keepalive.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        done: false,
        failed: None,
    };
    let mut resp = Response::new(warp::hyper::body::Bytes::new().into());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.extensions_mut()
        .insert(StreamSlot(Arc::new(Mutex::new(Some(Box::pin(body))))));
    resp
}

struct Lines<S, F> {
    items: Pin<Box<S>>,
    encode: F,
    keepalive: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    done: bool,
    /// An error that arrived behind buffered lines: sent after them.
    failed: Option<String>,
}

impl<S, T, E, F> Stream for Lines<S, F>
where
    S: Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
    F: FnMut(&T, &mut Vec<u8>) + Unpin,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin (the inner stream and the timer are boxed).
        let this = self.get_mut();
        if let Some(message) = this.failed.take() {
            this.done = true;
            return Poll::Ready(Some(Err(message.into())));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let mut buf = Vec::new();
        loop {
            match this.items.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    (this.encode)(&item, &mut buf);
                    buf.push(b'\n');
                    if buf.len() >= MAX_WRITE {
                        break;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "stream failed; aborting the response");
                    if buf.is_empty() {
                        this.done = true;
                        return Poll::Ready(Some(Err(e.to_string().into())));
                    }
                    this.failed = Some(e.to_string());
                    break;
                }
                Poll::Ready(None) => {
                    this.done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !buf.is_empty() {
            if let Some((every, sleep)) = &mut this.keepalive {
                sleep.as_mut().reset(tokio::time::Instant::now() + *every);
            }
            return Poll::Ready(Some(Ok(Bytes::from(buf))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if let Some((every, sleep)) = &mut this.keepalive {
            if sleep.as_mut().poll(cx).is_ready() {
                sleep.as_mut().reset(tokio::time::Instant::now() + *every);
                return Poll::Ready(Some(Ok(Bytes::from_static(b"\n"))));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn ready_lines_are_batched_and_terminated() {
        let items = futures::stream::iter(vec![Ok::<_, String>(1), Ok(2), Ok(3)]);
        let resp = response(
            items,
            |i: &i32, buf: &mut Vec<u8>| buf.extend_from_slice(i.to_string().as_bytes()),
            None,
        );
        let slot = resp.extensions().get::<StreamSlot>().unwrap().clone();
        let body: Vec<_> = slot.take().unwrap().collect().await;
        let bytes: Vec<u8> = body.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"1\n2\n3\n");
    }

    #[tokio::test]
    async fn idle_stream_sends_keepalive() {
        let items = futures::stream::pending::<Result<i32, String>>();
        let resp = response(
            items,
            |_: &i32, _: &mut Vec<u8>| {},
            Some(Duration::from_millis(20)),
        );
        let slot = resp.extensions().get::<StreamSlot>().unwrap().clone();
        let mut body = slot.take().unwrap();
        let line = tokio::time::timeout(Duration::from_secs(60), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(&line[..], b"\n");
    }
}
