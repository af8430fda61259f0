//! The block exchange, `/shoal/exchange/1`: how nodes fetch blocks (and heads) from each other.
//!
//! # Parties and goal
//!
//! A *requester* knows a root CID it lacks blocks of (from a signed head, later a blob CID) and
//! asks its connected peers, the *responders*, for them. The goal is to move many blocks fast
//! (pipelined, batched), from whoever has them, without trusting anyone. Non-goals: finding
//! peers that are not connected (no DHT), incentives, partial blocks.
//!
//! # Messages (one request, one response per libp2p sub-stream; layout in `docs/format.md`)
//!
//! - `Want(cids)` → `Blocks { blocks, have_not }`: the responder sends the blocks it has, in
//!   order, until the next one would take the response past [`RESPONSE_BUDGET`] (at least one
//!   block is always sent); CIDs it lacks go to `have_not`; the rest are *deferred* and the
//!   requester asks again.
//! - `Digest(entries)` → `Heads(heads)`: the requester lists, per source it knows, an 8-byte hash
//!   of the source id and the highest offset it knows; the responder answers with the signed
//!   heads it holds that are newer (or of sources missing from the digest). Sent every few
//!   seconds to each connected peer: this is the catch-up path after partitions and for sources
//!   never directly connected (multi-hop), at ~16 bytes per source on the wire.
//!
//! # Limits (each one is a bound a peer cannot push us past)
//!
//! | what | limit | why |
//! |---|---|---|
//! | request size | [`MAX_REQUEST_BYTES`] | a digest of ~16k sources fits; read through `take` |
//! | response size | [`MAX_RESPONSE_BYTES`] | budget plus one maximal block |
//! | CIDs per want | [`MAX_WANT`] | bounds the responder's work per request |
//! | block size | [`MAX_BLOCK_SIZE`] | larger than any tree node or blob chunk we write |
//! | streams in flight | `fetch::PEER_WINDOW` per peer, [`MAX_INBOUND_STREAMS`] inbound | well below yamux's ~100 sub-streams |
//! | request timeout | [`REQUEST_TIMEOUT`] | then the CIDs are asked elsewhere |
//!
//! # What a peer can lie about, and how we check
//!
//! - A block's content: every block is hashed (SHA-256, the only hash we accept) and compared
//!   with its CID *before* it leaves the swarm task; a mismatching or unrequested block is
//!   logged with the peer id and dropped, and the CID is fetched from another peer.
//! - Having a block: `have_not` or a timeout moves the CID to another peer; after every
//!   connected peer failed it is reported not-found and the sync retries later.
//! - Heads: a head is only used after [`crate::head::SignedHead::verify`] (signature by the key
//!   embedded in the claimed source). A peer can withhold newer heads or send old ones; older
//!   heads are ignored, and any other peer's digest answer or gossip supplies the newer one.
//! - Sizes and counts: checked against the limits above before allocating.
//! - Tree shape: blocks that hash correctly but do not form a valid extension of the source's
//!   tree are rejected by the store's `import`, which keeps the old tree.

pub mod bitswap;
pub mod fetch;
pub mod wire;

use std::time::Duration;

use cid::Cid;

pub use fetch::{FetchEvent, Fetcher};
pub use wire::{Codec, DigestEntry, Request, Response, PROTOCOL};

/// Largest block accepted from or sent to a peer.
pub const MAX_BLOCK_SIZE: usize = 4 << 20;
/// Soft size of a `Blocks` response.
pub const RESPONSE_BUDGET: usize = 2 << 20;
/// Hard cap of a response on the wire.
pub const MAX_RESPONSE_BYTES: usize = RESPONSE_BUDGET + MAX_BLOCK_SIZE + (64 << 10);
/// Hard cap of a request on the wire.
pub const MAX_REQUEST_BYTES: usize = 256 << 10;
/// CIDs per `Want`.
pub const MAX_WANT: usize = 512;
/// Entries per `Digest`.
pub const MAX_DIGEST_ENTRIES: usize = 16_000;
/// Concurrent inbound sub-streams per connection.
pub const MAX_INBOUND_STREAMS: usize = 32;
/// A request not answered within this is failed and retried elsewhere.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Read access to local blocks for answering `Want`s; called on a blocking thread.
pub trait BlockSource: Send + Sync + 'static {
    /// The block's bytes, or `None` if it is not here.
    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, shoal_store::Error>;
}

/// Read connections of [`StoreBlocks`]: as many as the swarm serves `Want`s at once.
const SERVE_READERS: usize = 4;

/// Serves peers' `Want`s from the store through a few read connections, taken in turn: one
/// connection (a mutex) made concurrent `Want`s for blob chunks (1 MiB each) wait on each other.
pub struct StoreBlocks {
    readers: Vec<shoal_store::Reader>,
    next: std::sync::atomic::AtomicUsize,
}

impl StoreBlocks {
    pub fn open(store: &shoal_store::Store) -> Result<StoreBlocks, shoal_store::Error> {
        let readers = (0..SERVE_READERS)
            .map(|_| store.reader())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoreBlocks {
            readers,
            next: Default::default(),
        })
    }
}

impl BlockSource for StoreBlocks {
    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, shoal_store::Error> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers[i % self.readers.len()].get_block(cid)
    }
}

/// The libp2p behaviour of the exchange.
pub type Behaviour = libp2p::request_response::Behaviour<Codec>;

/// A configured exchange behaviour.
pub fn behaviour() -> Behaviour {
    let cfg = libp2p::request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_INBOUND_STREAMS);
    libp2p::request_response::Behaviour::with_codec(
        Codec,
        [(
            libp2p::StreamProtocol::new(PROTOCOL),
            libp2p::request_response::ProtocolSupport::Full,
        )],
        cfg,
    )
}

/// Builds the answer to a `Want` from local blocks (blocking: run in `spawn_blocking`).
/// A local read error answers that CID `have_not` (the requester asks elsewhere).
pub fn serve_want(source: &dyn BlockSource, cids: &[Cid]) -> Response {
    let mut blocks = Vec::new();
    let mut have_not = Vec::new();
    let mut size = 0usize;
    for cid in cids.iter().take(MAX_WANT) {
        if size >= RESPONSE_BUDGET {
            break; // the rest is deferred
        }
        match source.get_block(cid) {
            Ok(Some(data)) if data.len() <= MAX_BLOCK_SIZE => {
                if size + data.len() > RESPONSE_BUDGET && !blocks.is_empty() {
                    break;
                }
                size += data.len();
                blocks.push((*cid, data));
            }
            Ok(_) => have_not.push(*cid),
            Err(e) => {
                tracing::warn!(%cid, error = %e, "reading a block for a peer failed");
                have_not.push(*cid);
            }
        }
    }
    Response::Blocks { blocks, have_not }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<Cid, Vec<u8>>);
    impl BlockSource for Map {
        fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, shoal_store::Error> {
            Ok(self.0.get(cid).cloned())
        }
    }

    fn block(i: u32, size: usize) -> (Cid, Vec<u8>) {
        use sha2::Digest;
        let mut data = vec![0u8; size];
        data[..4].copy_from_slice(&i.to_be_bytes());
        let d = sha2::Sha256::digest(&data);
        let mh = cid::multihash::Multihash::<64>::wrap(wire::SHA2_256, &d).unwrap();
        (Cid::new_v1(0x55, mh), data)
    }

    #[test]
    fn serve_respects_budget_and_reports_missing() {
        let big: Vec<_> = (0..5).map(|i| block(i, RESPONSE_BUDGET / 2)).collect();
        let absent = block(99, 10).0;
        let src = Map(big.iter().cloned().collect());
        let mut want: Vec<Cid> = vec![absent];
        want.extend(big.iter().map(|b| b.0));
        match serve_want(&src, &want) {
            Response::Blocks { blocks, have_not } => {
                assert_eq!(have_not, vec![absent]);
                assert_eq!(blocks.len(), 2, "budget holds two half-budget blocks");
                let resp = Response::Blocks { blocks, have_not };
                assert!(resp.encode().len() <= MAX_RESPONSE_BYTES);
            }
            other => panic!("{other:?}"),
        }
        // One block larger than the budget is still sent alone.
        let huge = block(7, RESPONSE_BUDGET + 1);
        let src = Map([huge.clone()].into_iter().collect());
        match serve_want(&src, &[huge.0]) {
            Response::Blocks { blocks, .. } => assert_eq!(blocks.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}
