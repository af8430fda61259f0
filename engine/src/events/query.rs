//! Bounded reads of stored events in the three orders.
//!
//! A query runs on its own read-only (WAL) connection in `spawn_blocking`, never on the writer,
//! and hands events to its consumer in chunks over a bounded channel: memory stays at a few
//! chunks however many events match, and a consumer that stops reading parks the reader thread
//! (dropping the stream ends it).
//!
//! Orders, given per-source iterators that ascend by offset (and therefore by lamport: a source
//! stamps its own events with strictly increasing lamports):
//! - lamport: k-way merge by `(lamport, source, offset)` with a heap of one head per source;
//! - lamport-reverse: the same over descending iterators, largest first;
//! - source-ordered: the sources one after another in ascending id order.
//!
//! The bounds are applied by [`super::plan`] against the offsets present when the query starts,
//! so a query never waits and never sees half of a later commit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use shoal_store::{Event, Store};
use tokio::sync::mpsc;

use super::{plan, ChunkSender, EventStream, EventsError, Order, Plan, Query, Reads};

type EventIter = Box<dyn Iterator<Item = Result<Event, shoal_store::Error>> + Send>;

/// Starts `query` on a blocking thread; the stream yields its events.
pub(crate) fn spawn(reads: Reads, query: Query) -> EventStream {
    let (tx, rx) = mpsc::channel(reads.config.read_chunks_buffered.max(1));
    let present = reads.offsets.borrow().clone();
    let plan = plan(&present, &query.lower, query.upper.as_ref(), &query.filter);
    let store = reads.store.clone();
    let chunk = reads.config.read_chunk.max(1);
    let order = query.order;
    tokio::task::spawn_blocking(move || {
        let mut sink = Sink::new(&tx, chunk);
        match read(&store, plan, order, &mut sink) {
            Ok(()) => {
                sink.flush();
            }
            Err(e) => {
                tracing::warn!(error = %e, "query failed");
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    EventStream::new(rx)
}

/// Collects events into chunks and sends them; remembers when the consumer is gone.
pub(crate) struct Sink<'a> {
    tx: &'a ChunkSender,
    chunk: usize,
    buf: Vec<Event>,
    closed: bool,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(tx: &'a ChunkSender, chunk: usize) -> Self {
        Self {
            tx,
            chunk,
            buf: Vec::with_capacity(chunk),
            closed: false,
        }
    }

    /// Adds one event; false once the consumer is gone (stop reading).
    pub(crate) fn push(&mut self, event: Event) -> bool {
        self.buf.push(event);
        if self.buf.len() >= self.chunk {
            self.flush()
        } else {
            !self.closed
        }
    }

    /// Sends what is buffered; false once the consumer is gone.
    pub(crate) fn flush(&mut self) -> bool {
        if !self.buf.is_empty() && !self.closed {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
            if self.tx.blocking_send(Ok(chunk)).is_err() {
                self.closed = true;
            }
        }
        !self.closed
    }
}

/// Reads `plan` in `order` into `sink`. Returns early (Ok) when the consumer is gone.
pub(crate) fn read(
    store: &Store,
    plan: Plan,
    order: Order,
    sink: &mut Sink<'_>,
) -> Result<(), EventsError> {
    if plan.is_empty() {
        return Ok(());
    }
    let reader = store.reader()?;
    let reverse = order == Order::LamportReverse;
    let mut iters: Vec<EventIter> = Vec::with_capacity(plan.len());
    for (source, (from, to, filter)) in &plan {
        let iter = reader.events(source, *from..=*to, filter, reverse)?;
        if order == Order::SourceOrdered {
            // One source at a time: no need to open the others before this one is done.
            for event in iter {
                if !sink.push(event?) {
                    return Ok(());
                }
            }
            continue;
        }
        iters.push(Box::new(iter));
    }
    if order == Order::SourceOrdered {
        return Ok(());
    }
    // Heads of each iterator; the heap holds their keys. Sources are indexed in ascending id
    // order (the plan is a BTreeMap), so comparing indices compares source ids.
    let mut heads: Vec<Option<Event>> = Vec::with_capacity(iters.len());
    let mut asc: BinaryHeap<Reverse<(u64, usize, u64)>> = BinaryHeap::new();
    let mut desc: BinaryHeap<(u64, usize, u64)> = BinaryHeap::new();
    for (idx, iter) in iters.iter_mut().enumerate() {
        let head = iter.next().transpose()?;
        if let Some(e) = &head {
            if reverse {
                desc.push((e.lamport, idx, e.offset));
            } else {
                asc.push(Reverse((e.lamport, idx, e.offset)));
            }
        }
        heads.push(head);
    }
    loop {
        let idx = if reverse {
            match desc.pop() {
                Some((_, idx, _)) => idx,
                None => break,
            }
        } else {
            match asc.pop() {
                Some(Reverse((_, idx, _))) => idx,
                None => break,
            }
        };
        let next = iters[idx].next().transpose()?;
        if let Some(e) = &next {
            if reverse {
                desc.push((e.lamport, idx, e.offset));
            } else {
                asc.push(Reverse((e.lamport, idx, e.offset)));
            }
        }
        let event = match std::mem::replace(&mut heads[idx], next) {
            Some(e) => e,
            None => continue,
        };
        if !sink.push(event) {
            return Ok(());
        }
    }
    Ok(())
}
