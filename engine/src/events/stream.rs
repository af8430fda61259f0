//! [`EventStream`]: the bounded stream queries and subscriptions hand out.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use shoal_store::Event;
use tokio::sync::mpsc;

use super::EventsError;

/// Chunks of events travel between a reader thread and the consumer; bounded by
/// [`EventsConfig::read_chunks_buffered`].
pub(crate) type ChunkSender = mpsc::Sender<Result<Vec<Event>, EventsError>>;

/// A stream of events from a query or subscription. Memory is bounded: the producer waits when
/// the consumer does not read. Dropping it cancels the producer.
pub struct EventStream {
    rx: mpsc::Receiver<Result<Vec<Event>, EventsError>>,
    current: std::vec::IntoIter<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::Receiver<Result<Vec<Event>, EventsError>>) -> Self {
        Self {
            rx,
            current: Vec::new().into_iter(),
        }
    }

    /// The rest of the current chunk, or the next chunk: for consumers that send arrays.
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<Event>, EventsError>> {
        let rest: Vec<Event> = self.current.by_ref().collect();
        if !rest.is_empty() {
            return Some(Ok(rest));
        }
        self.rx.recv().await
    }
}

impl Stream for EventStream {
    type Item = Result<Event, EventsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(event) = self.current.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk.into_iter(),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
