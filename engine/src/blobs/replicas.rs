//! Blob replicas: a blob put with `replicas = N` is held, pinned, by N nodes of the swarm, so it
//! survives the loss of N − 1 of them (API.md, `POST /api/v1/blobs?replicas=N`).
//!
//! Desired and reached state are events (semantics [`SEMANTICS`], event name = the blob's CID),
//! so they replicate like any event, reach a node that was away once it is back, and survive
//! restarts with nothing else stored:
//! - `{"op":"request","size","wanted","holders":[source, ...]}`: the uploader asks those nodes to
//!   hold the blob (once more, naming other nodes, when one refuses or a new node turns up);
//! - `{"op":"held"}`: the publishing node holds every block and has pinned it
//!   (`blob-replica/<cid>`, see `shoal_store::blob`);
//! - `{"op":"refused","reason"}`: it cannot hold it (disk full, over its `max-blob-bytes`);
//! - `{"op":"released"}`: the blob was deleted swarm-wide: every node drops its replica and cache
//!   pins (a blob a node put itself stays), and their blocks are freed at once.
//!
//! Events of one blob are folded by Lamport time: only what follows the latest release counts.
//! A blob's holders are the nodes that requested it (they put it) and those that said `held`.
//! The log grows by 2 + N events per replicated blob (request, N − 1 helds, release), never
//! with time.
//!
//! Actors: the replica task owns the [`Book`] (a pure fold of those events), answers the waits
//! of uploads and the counts of listings, carries out the requests that name this node (fetch
//! every block through the blob service, verified as any fetch, pin, publish `held`; at most
//! [`HOLDS_IN_FLIGHT`] at once, retried with backoff while no peer has the blocks), and every
//! [`TICK`] names further holders for this node's own blobs that are short of holders.
//!
//! Placement (`Book::placement`): nodes connected now first, then nodes seen before (most recent
//! first), then nodes only known from their event streams; ties broken by a hash of blob and
//! node, so replicas of many blobs spread over the swarm. A node without room says `refused`
//! and the uploader names the next one. What a peer can lie about: a `held` it does not hold
//! (that costs only the count; nothing is deleted on its word but a release, which any node may
//! publish, as any node may `DELETE` a blob over HTTP).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use shoal_store::{Event, OffsetMap, SourceId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{BlobService, BlobsError, Cid};
use crate::events::{BlobWrite, EventService, Filter, PublishEvent, StreamSelector, Subscription};
use crate::swarm::NetworkState;

/// Semantics of the replica events.
pub const SEMANTICS: &str = "shoal.blob-replica";
/// Tag carried by replica events.
pub const TAG: &str = "shoal:blob-replica";
/// Largest replica count a put may ask for.
pub const MAX_REPLICAS: u32 = 64;
/// Blobs this node fetches to hold at once.
const HOLDS_IN_FLIGHT: usize = 2;
/// How often the task looks for work it could not do before (backoffs, re-placement).
const TICK: Duration = Duration::from_secs(5);
/// First wait before a failed hold is tried again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Commands queued at the task.
const INBOX: usize = 64;

/// The payload of a replica event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Request {
        size: u64,
        wanted: u32,
        holders: Vec<String>,
    },
    Held,
    Refused {
        reason: String,
    },
    Released,
}

/// What every node holds of every replicated blob, folded from replica events in any order.
#[derive(Debug, Default)]
pub struct Book {
    blobs: HashMap<Cid, Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    /// Lamport of the latest release.
    released: Option<u64>,
    size: u64,
    /// Per requesting node: the latest request's lamport and the most holders it wanted.
    requesters: BTreeMap<SourceId, (u64, u32)>,
    /// Per named holder: the lamport of the latest request naming it.
    named: BTreeMap<SourceId, u64>,
    /// Latest `held` per node.
    held: BTreeMap<SourceId, u64>,
    /// Latest `refused` per node.
    refused: BTreeMap<SourceId, u64>,
}

impl Entry {
    fn after_release(&self, lamport: u64) -> bool {
        self.released.is_none_or(|r| lamport > r)
    }

    /// A request after the latest release exists.
    fn live(&self) -> bool {
        self.requesters
            .values()
            .any(|(l, _)| self.after_release(*l))
    }

    fn wanted(&self) -> u32 {
        self.requesters
            .values()
            .filter(|(l, _)| self.after_release(*l))
            .map(|(_, w)| *w)
            .max()
            .unwrap_or(0)
    }

    fn holders(&self) -> BTreeSet<SourceId> {
        let requesters = self
            .requesters
            .iter()
            .filter(|(_, (l, _))| self.after_release(*l))
            .map(|(s, _)| s);
        let held = self
            .held
            .iter()
            .filter(|(_, l)| self.after_release(**l))
            .map(|(s, _)| s);
        requesters.chain(held).cloned().collect()
    }

    fn refused_after_named(&self, node: &SourceId) -> bool {
        match (self.refused.get(node), self.named.get(node)) {
            (Some(r), Some(n)) => r > n,
            (Some(_), None) => true,
            _ => false,
        }
    }
}

impl Book {
    /// Folds one replica event (`op` already decoded from its payload).
    pub fn apply(&mut self, cid: Cid, source: &SourceId, lamport: u64, op: Op) {
        let entry = self.blobs.entry(cid).or_default();
        let latest = |map: &mut BTreeMap<SourceId, u64>, s: &SourceId| {
            let at = map.entry(s.clone()).or_insert(lamport);
            *at = (*at).max(lamport);
        };
        match op {
            Op::Request {
                size,
                wanted,
                holders,
            } => {
                entry.size = entry.size.max(size);
                let at = entry
                    .requesters
                    .entry(source.clone())
                    .or_insert((lamport, wanted));
                *at = (at.0.max(lamport), at.1.max(wanted));
                for h in holders {
                    latest(&mut entry.named, &SourceId::from(h));
                }
            }
            Op::Held => latest(&mut entry.held, source),
            Op::Refused { .. } => latest(&mut entry.refused, source),
            Op::Released => entry.released = Some(entry.released.unwrap_or(0).max(lamport)),
        }
    }

    /// Nodes known to hold `cid` pinned.
    pub fn holders(&self, cid: &Cid) -> BTreeSet<SourceId> {
        self.blobs.get(cid).map(Entry::holders).unwrap_or_default()
    }

    /// Has `cid` been asked for replicas since its last release?
    pub fn live(&self, cid: &Cid) -> bool {
        self.blobs.get(cid).is_some_and(Entry::live)
    }

    /// Was `cid` released after everything else said of it?
    pub fn released(&self, cid: &Cid) -> bool {
        self.blobs
            .get(cid)
            .is_some_and(|e| e.released.is_some() && !e.live())
    }

    /// Blobs `me` is asked to hold and does not hold yet (nor refused since), with their sizes.
    pub fn duties(&self, me: &SourceId) -> Vec<(Cid, u64)> {
        self.blobs
            .iter()
            .filter(|(_, e)| {
                e.named.get(me).is_some_and(|l| e.after_release(*l))
                    && !e.holders().contains(me)
                    && !e.refused_after_named(me)
            })
            .map(|(c, e)| (*c, e.size))
            .collect()
    }

    /// `me`'s own live blobs with fewer holders named (and not refused) than wanted, with how
    /// many more holders each needs.
    pub fn short(&self, me: &SourceId) -> Vec<(Cid, usize)> {
        self.blobs
            .iter()
            .filter(|(_, e)| {
                e.requesters
                    .get(me)
                    .is_some_and(|(l, _)| e.after_release(*l))
            })
            .filter_map(|(c, e)| {
                let named = e
                    .named
                    .keys()
                    .filter(|n| *n != me && !e.refused_after_named(n))
                    .count();
                let need = (e.wanted() as usize).saturating_sub(1 + named);
                (need > 0).then_some((*c, need))
            })
            .collect()
    }

    /// Up to `n` nodes to name as new holders of `cid`: neither `me`, nor named already, nor
    /// refused; connected peers first, then peers seen before (latest first), then sources known
    /// only from their streams; ties by a hash of blob and node.
    pub fn placement(
        &self,
        cid: &Cid,
        me: &SourceId,
        network: &NetworkState,
        n: usize,
    ) -> Vec<SourceId> {
        let entry = self.blobs.get(cid);
        let taken = |s: &SourceId| {
            s == me
                || entry.is_some_and(|e| {
                    e.named.get(s).is_some_and(|l| e.after_release(*l)) || e.refused.contains_key(s)
                })
        };
        // (rank, recency, spread) sorts best first.
        let mut candidates: BTreeMap<SourceId, (u8, std::cmp::Reverse<u64>, u64)> = BTreeMap::new();
        for info in network.peers.values() {
            let source = SourceId::from(info.peer_id.as_str());
            let rank = if info.connected { 0 } else { 1 };
            let seen = info.last_seen.unwrap_or(0);
            candidates.insert(source, (rank, std::cmp::Reverse(seen), 0));
        }
        for source in network.known.keys() {
            candidates
                .entry(source.clone())
                .or_insert((2, std::cmp::Reverse(0), 0));
        }
        let mut ranked: Vec<_> = candidates
            .into_iter()
            .filter(|(s, _)| !taken(s))
            .map(|(s, (rank, seen, _))| {
                let spread = spread(cid, &s);
                ((rank, seen, spread), s)
            })
            .collect();
        ranked.sort();
        ranked.into_iter().take(n).map(|(_, s)| s).collect()
    }
}

/// A stable pseudo-random number of (blob, node): spreads replicas over nodes (rendezvous).
fn spread(cid: &Cid, node: &SourceId) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(cid.to_bytes());
    h.update(node.to_string().as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Asks the replica task; cheap to clone. Every call fails with [`BlobsError::ShuttingDown`]
/// once the task has stopped.
#[derive(Clone, Debug)]
pub struct Replicas {
    tx: mpsc::Sender<Command>,
}

/// The task's end of a [`Replicas`] handle: pass it to [`spawn`].
#[derive(Debug)]
pub struct Inbox(mpsc::Receiver<Command>);

#[derive(Debug)]
enum Command {
    /// Holders for a new replicated blob: chooses them and answers with the request to publish.
    Place {
        cid: Cid,
        need: usize,
        reply: oneshot::Sender<Vec<SourceId>>,
    },
    /// Answers once `cid` has at least `n` holders.
    Wait {
        cid: Cid,
        n: usize,
        reply: oneshot::Sender<()>,
    },
    /// The known holders of each of `cids`.
    Holders {
        cids: Vec<Cid>,
        reply: oneshot::Sender<Vec<BTreeSet<SourceId>>>,
    },
    /// Is `cid` replicated (asked for since its last release)?
    Live {
        cid: Cid,
        reply: oneshot::Sender<bool>,
    },
}

/// A handle and the inbox its task will read.
pub fn channel() -> (Replicas, Inbox) {
    let (tx, rx) = mpsc::channel(INBOX);
    (Replicas { tx }, Inbox(rx))
}

impl Replicas {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, BlobsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| BlobsError::ShuttingDown)?;
        rx.await.map_err(|_| BlobsError::ShuttingDown)
    }

    /// Nodes to name as the `need` further holders of `cid`.
    pub(super) async fn place(&self, cid: Cid, need: usize) -> Result<Vec<SourceId>, BlobsError> {
        self.ask(|reply| Command::Place { cid, need, reply }).await
    }

    /// Resolves once `cid` has `n` holders; dropping it is safe.
    pub(super) async fn wait(&self, cid: Cid, n: usize) -> Result<(), BlobsError> {
        self.ask(|reply| Command::Wait { cid, n, reply }).await
    }

    /// The nodes known to hold each of `cids` pinned.
    pub(super) async fn holders(
        &self,
        cids: Vec<Cid>,
    ) -> Result<Vec<BTreeSet<SourceId>>, BlobsError> {
        self.ask(|reply| Command::Holders { cids, reply }).await
    }

    pub(super) async fn live(&self, cid: Cid) -> Result<bool, BlobsError> {
        self.ask(|reply| Command::Live { cid, reply }).await
    }
}

/// Publishes one replica event for `cid`.
pub(super) async fn publish(events: &EventService, cid: Cid, op: &Op) -> Result<(), BlobsError> {
    let payload = serde_json::to_string(op)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .ok_or_else(|| BlobsError::Invalid("cannot encode a replica event".into()))?;
    events
        .publish(vec![PublishEvent {
            semantics: SEMANTICS.into(),
            name: cid.to_string(),
            tags: vec![TAG.into()],
            payload,
            timestamp: None,
        }])
        .await?;
    Ok(())
}

/// Decodes a replica event; `None` (logged) for one that is not (a peer may publish anything).
fn decode(event: &Event) -> Option<(Cid, Op)> {
    let cid: Cid = event.name.parse().ok()?;
    match serde_json::from_str::<Op>(event.payload.get()) {
        Ok(Op::Request { wanted, .. }) if wanted > MAX_REPLICAS => None,
        Ok(op) => Some((cid, op)),
        Err(e) => {
            tracing::debug!(source = %event.source, offset = event.offset, error = %e, "ignoring a malformed replica event");
            None
        }
    }
}

/// Starts the replica task: it reads every replica event (stored, then live), keeps the book,
/// and holds the blobs this node is asked to hold. Ends on `shutdown`.
pub fn spawn(
    inbox: Inbox,
    blobs: BlobService,
    events: EventService,
    network: watch::Receiver<NetworkState>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let me = events.source().clone();
        let mut task = Task {
            me,
            book: Book::default(),
            waits: Vec::new(),
            holding: HashMap::new(),
            retry: HashMap::new(),
            blobs,
            events: events.clone(),
            network,
        };
        let mut stream = events.subscribe(Subscription {
            lower: OffsetMap::new(),
            filter: Filter(vec![StreamSelector {
                semantics: Some(SEMANTICS.into()),
                ..StreamSelector::default()
            }]),
        });
        let (done_tx, mut done_rx) =
            mpsc::channel::<(Cid, Result<(), BlobsError>)>(HOLDS_IN_FLIGHT);
        let mut inbox = inbox.0;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                event = stream.next() => match event {
                    Some(Ok(event)) => task.fold(&event).await,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "replica events stopped");
                        break;
                    }
                    None => break,
                },
                Some(cmd) = inbox.recv() => task.command(cmd),
                Some((cid, result)) = done_rx.recv() => task.held(cid, result).await,
                _ = tick.tick() => task.replace().await,
            }
            task.start_holds(&done_tx);
        }
    })
}

struct Task {
    me: SourceId,
    book: Book,
    waits: Vec<(Cid, usize, oneshot::Sender<()>)>,
    /// Holds in flight.
    holding: HashMap<Cid, tokio::task::JoinHandle<()>>,
    /// Failed holds: attempts and when to try again.
    retry: HashMap<Cid, (u32, Instant)>,
    blobs: BlobService,
    events: EventService,
    network: watch::Receiver<NetworkState>,
}

impl Task {
    async fn fold(&mut self, event: &Event) {
        let Some((cid, op)) = decode(event) else {
            return;
        };
        // Events recorded before this node converted the blob name its old-format CID.
        let cid = self.blobs.canonical(cid);
        let release = matches!(op, Op::Released);
        self.book.apply(cid, &event.source, event.lamport, op);
        if release && self.book.released(&cid) {
            if let Some(h) = self.holding.remove(&cid) {
                h.abort();
            }
            self.retry.remove(&cid);
            match self.events.blob_delete(cid, true).await {
                Ok(Some(freed)) => {
                    tracing::info!(%cid, blocks = freed.blocks, bytes = freed.bytes, by = %event.source, "blob released swarm-wide")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(%cid, error = %e, "cannot release a blob replica"),
            }
        }
        let book = &self.book;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waits)
            .into_iter()
            .filter(|(_, _, reply)| !reply.is_closed())
            .partition(|(cid, n, _)| book.holders(cid).len() >= *n);
        self.waits = waiting;
        for (_, _, reply) in ready {
            let _ = reply.send(());
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Place { cid, need, reply } => {
                let network = self.network.borrow().clone();
                let _ = reply.send(self.book.placement(&cid, &self.me, &network, need));
            }
            Command::Wait { cid, n, reply } => {
                if self.book.holders(&cid).len() >= n {
                    let _ = reply.send(());
                } else {
                    self.waits.push((cid, n, reply));
                }
            }
            Command::Holders { cids, reply } => {
                let _ = reply.send(cids.iter().map(|c| self.book.holders(c)).collect());
            }
            Command::Live { cid, reply } => {
                let _ = reply.send(self.book.live(&cid));
            }
        }
    }

    /// Starts a hold for every duty not in flight and not backing off.
    fn start_holds(&mut self, done: &mpsc::Sender<(Cid, Result<(), BlobsError>)>) {
        self.holding.retain(|_, h| !h.is_finished());
        if self.holding.len() >= HOLDS_IN_FLIGHT {
            return;
        }
        let now = Instant::now();
        let mut duties = self.book.duties(&self.me);
        duties.sort();
        for (cid, size) in duties {
            if self.holding.len() >= HOLDS_IN_FLIGHT {
                break;
            }
            if self.holding.contains_key(&cid)
                || self.retry.get(&cid).is_some_and(|(_, at)| *at > now)
            {
                continue;
            }
            let blobs = self.blobs.clone();
            let done = done.clone();
            self.holding.insert(
                cid,
                tokio::spawn(async move {
                    let result = hold(&blobs, cid, size).await;
                    let _ = done.send((cid, result)).await;
                }),
            );
        }
    }

    /// A hold ended: publish `held`, `refused`, or back off and try again later.
    async fn held(&mut self, cid: Cid, result: Result<(), BlobsError>) {
        self.holding.remove(&cid);
        let op = match result {
            Ok(()) => {
                self.retry.remove(&cid);
                tracing::info!(%cid, "holding a blob replica");
                Op::Held
            }
            Err(e @ (BlobsError::StorageFull(_) | BlobsError::TooLarge { .. })) => {
                self.retry.remove(&cid);
                tracing::warn!(%cid, error = %e, "refusing to hold a blob replica");
                Op::Refused {
                    reason: e.to_string(),
                }
            }
            Err(e) => {
                let (tries, _) = self.retry.get(&cid).copied().unwrap_or((0, Instant::now()));
                let wait = RETRY_FIRST
                    .saturating_mul(2u32.saturating_pow(tries))
                    .min(RETRY_MAX);
                tracing::info!(%cid, error = %e, retry_in = ?wait, "cannot hold a blob replica yet");
                self.retry
                    .insert(cid, (tries.saturating_add(1), Instant::now() + wait));
                return;
            }
        };
        if let Err(e) = publish(&self.events, cid, &op).await {
            tracing::warn!(%cid, error = %e, "cannot record a blob replica");
        }
    }

    /// Names further holders for this node's blobs that lack them (a holder refused, or more
    /// nodes are known now than when the blob was put).
    async fn replace(&mut self) {
        let network = self.network.borrow().clone();
        for (cid, need) in self.book.short(&self.me) {
            let holders = self.book.placement(&cid, &self.me, &network, need);
            if holders.is_empty() {
                continue;
            }
            let size = self.book.blobs.get(&cid).map_or(0, |e| e.size);
            let wanted = self.book.blobs.get(&cid).map_or(0, Entry::wanted);
            let op = Op::Request {
                size,
                wanted,
                holders: holders.iter().map(ToString::to_string).collect(),
            };
            tracing::info!(%cid, ?holders, "asking further nodes to hold a blob replica");
            if let Err(e) = publish(&self.events, cid, &op).await {
                tracing::warn!(%cid, error = %e, "cannot record a blob replica request");
            }
        }
    }
}

/// Fetches every block of `cid` (verified by the exchange) and pins it as a replica.
async fn hold(blobs: &BlobService, cid: Cid, size: u64) -> Result<(), BlobsError> {
    let limit = blobs.config().max_blob_bytes;
    if size > limit {
        return Err(BlobsError::TooLarge { limit });
    }
    let opened = blobs.open(cid).await?;
    if opened.size() > limit {
        return Err(BlobsError::TooLarge { limit });
    }
    let mut body = blobs.read_range(&opened, 0, opened.size());
    while let Some(piece) = body.next().await {
        piece?;
    }
    blobs.write(BlobWrite::PinReplica { cid }).await
}

#[cfg(test)]
mod tests;
