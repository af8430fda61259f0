//! One store-API connection: reads frames, runs each request as its own task (requests of one
//! connection run concurrently; the messages of one request stay in order because one task
//! sends them), cancels on `cancel`, and writes every outgoing frame through one writer task.
//!
//! Memory is bounded per connection: at most [`MAX_IN_FLIGHT`] request tasks, and an outgoing
//! queue of [`OUT_QUEUE`] frames (each at most one engine read chunk of events). A request
//! task waits when the queue is full; the writer gives up on a client that accepts nothing for
//! [`STALL`] and the whole connection ends (every request task is aborted). Nothing here waits
//! on the engine's broadcast: a parked subscription lags and later re-reads from the store.
//!
//! A request id that is reused while its request still runs cancels the old request first
//! (Pond's rule). A `cancel` for an unknown or finished id is ignored.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use warp::ws::{Message, WebSocket};

use super::wire::{self, ErrorKind, Incoming};
use super::{events, live, misc, Shared, MAX_IN_FLIGHT, OUT_BYTES, OUT_QUEUE, STALL};

/// Frames written per flush at most (several small frames go out in one write).
const WRITE_BATCH: usize = 32;

/// A frame on its way to the socket, holding its share of the connection's byte budget
/// until it is written.
type Frame = (String, OwnedSemaphorePermit);

/// The outgoing side of a connection: a bounded queue plus a byte budget ([`OUT_BYTES`]).
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Frame>,
    budget: Arc<Semaphore>,
}

impl Out {
    /// Queues `frame`, waiting for room; false once the connection is gone.
    async fn send(&self, frame: String) -> bool {
        // A frame larger than the whole budget takes all of it.
        let cost = frame.len().clamp(1, OUT_BYTES) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(cost).await else {
            return false;
        };
        self.tx.send((frame, permit)).await.is_ok()
    }
}

/// Sends the messages of one request.
#[derive(Clone)]
pub struct Responder {
    pub id: u64,
    out: Out,
}

impl Responder {
    /// Sends `next` with `payload` (JSON text); false once the connection is gone.
    pub async fn next(&self, payload: &str) -> bool {
        self.out.send(wire::next(self.id, payload)).await
    }

    async fn complete(&self) {
        self.out.send(wire::complete(self.id)).await;
    }

    async fn error(&self, kind: &ErrorKind) {
        self.out.send(wire::error(self.id as i64, kind)).await;
    }
}

/// How a service ended.
pub enum Done {
    /// Finished: send `complete`.
    Complete,
    /// The client or the node went away, or the stream never completes: send nothing more.
    Quiet,
}

pub type Outcome = Result<Done, ErrorKind>;

/// Serves one upgraded socket until the client closes it, stalls, or the node shuts down.
pub async fn run(socket: WebSocket, shared: Arc<Shared>) {
    let (sink, mut stream) = socket.split();
    let (tx, out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let out = Out {
        tx,
        budget: Arc::new(Semaphore::new(OUT_BYTES)),
    };
    let mut writer = tokio::spawn(write_loop(sink, out_rx));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<u64, AbortHandle> = HashMap::new();
    let mut shutdown = shared.node.shutdown_signal();
    let mut writer_done = false;
    if *shutdown.borrow_and_update() {
        return;
    }
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = &mut writer => {
                writer_done = true;
                break;
            }
            _ = shutdown.changed() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "store API connection broke");
                break;
            }
            None => break,
        };
        if msg.is_close() {
            break;
        }
        if msg.is_ping() || msg.is_pong() {
            continue;
        }
        let Ok(text) = msg.to_str() else {
            let e = ErrorKind::BadRequest("binary frames are not supported; send JSON text".into());
            if !out.send(wire::error(wire::NO_REQUEST, &e)).await {
                break;
            }
            continue;
        };
        match wire::parse_frame(text) {
            Err((id, bad)) => {
                let id = id.map_or(wire::NO_REQUEST, |i| i as i64);
                if !out
                    .send(wire::error(id, &ErrorKind::BadRequest(bad.0)))
                    .await
                {
                    break;
                }
            }
            Ok(Incoming::Cancel { id }) => {
                if let Some(task) = running.remove(&id) {
                    task.abort();
                }
            }
            Ok(Incoming::Request {
                service,
                id,
                payload,
            }) => {
                if let Some(old) = running.remove(&id) {
                    old.abort();
                }
                if running.len() >= MAX_IN_FLIGHT {
                    running.retain(|_, t| !t.is_finished());
                }
                let r = Responder {
                    id,
                    out: out.clone(),
                };
                if running.len() >= MAX_IN_FLIGHT {
                    let e = ErrorKind::ServiceError(serde_json::json!(format!(
                        "too many requests in flight on this connection (limit {MAX_IN_FLIGHT}); \
                         cancel some first"
                    )));
                    r.error(&e).await;
                    continue;
                }
                let payload: Option<Box<RawValue>> = payload.map(ToOwned::to_owned);
                let shared = shared.clone();
                let handle = tasks.spawn(async move {
                    let outcome = dispatch(&shared, &service, payload.as_deref(), &r).await;
                    match outcome {
                        Ok(Done::Complete) => r.complete().await,
                        Ok(Done::Quiet) => {}
                        Err(kind) => {
                            if matches!(kind, ErrorKind::InternalError) {
                                tracing::warn!(service, id = r.id, "store API request failed");
                            }
                            r.error(&kind).await
                        }
                    }
                });
                running.insert(id, handle);
            }
        }
    }
    tasks.abort_all();
    drop(out);
    // The writer ends once every sender is gone (the aborted tasks drop theirs) or it stalls.
    if !writer_done && tokio::time::timeout(STALL, &mut writer).await.is_err() {
        writer.abort();
    }
}

/// Runs one request.
async fn dispatch(
    shared: &Shared,
    service: &str,
    payload: Option<&RawValue>,
    r: &Responder,
) -> Outcome {
    match service {
        events::GET_SOURCE_ID => events::get_source_id(shared, r).await,
        events::REQUEST_PERSISTED => events::persisted(shared, payload, r).await,
        events::REQUEST_ALL => events::all(shared, payload, r).await,
        events::PERSIST => events::persist(shared, payload, r).await,
        events::REQUEST_PRESENT => live::present(shared, r).await,
        events::HIGHEST_SEEN => live::highest_seen(shared, r).await,
        events::CONNECTIVITY => live::connectivity(shared, payload, r).await,
        misc::STORE_SNAPSHOT => misc::store_snapshot(shared, payload, r).await,
        misc::RETRIEVE_SNAPSHOT => misc::retrieve_snapshot(shared, payload, r).await,
        misc::INVALIDATE_SNAPSHOTS => misc::invalidate_snapshots(shared, payload, r).await,
        misc::LOGGING => misc::logging(shared, payload, r).await,
        misc::COMMANDS => misc::commands(shared, payload, r).await,
        other => Err(ErrorKind::UnknownEndpoint {
            endpoint: other.to_string(),
        }),
    }
}

/// Writes queued frames; ends when every sender is gone, the socket fails, or the client
/// accepts nothing for [`STALL`].
async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Frame>,
) {
    while let Some((first, permit)) = rx.recv().await {
        let batch = async {
            // The frames' budget is released once they are flushed to the socket, so it covers
            // the WebSocket's own write buffer too.
            let mut permits = vec![permit];
            sink.feed(Message::text(first)).await?;
            for _ in 1..WRITE_BATCH {
                match rx.try_recv() {
                    Ok((more, permit)) => {
                        permits.push(permit);
                        sink.feed(Message::text(more)).await?;
                    }
                    Err(_) => break,
                }
            }
            sink.flush().await?;
            drop(permits);
            Ok::<(), warp::Error>(())
        };
        match tokio::time::timeout(STALL, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "store API write failed; closing the connection");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    stall = ?STALL,
                    "store API client accepted no data for too long; closing the connection"
                );
                return;
            }
        }
    }
    let _ = tokio::time::timeout(STALL, sink.close()).await;
}
