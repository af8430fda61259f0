//! Node status across the swarm: what each node says about itself (display name, version,
//! uptime, apps, event count, connected peers), signed by the node, so that any node can list
//! every node of the swarm, also those it reaches only through others.
//!
//! Mechanism, and why not events: a status is a *signed message on its own gossipsub topic*
//! ([`TOPIC`]), announced by its node every [`ANNOUNCE_INTERVAL`] and soon after a change
//! (`announce.rs`), relayed by gossip only after the relaying node verified it, and kept by each
//! node **in memory** (`swarm/statuses.rs`): the newest status per source, with when it was last
//! received, at most [`MAX_NODES`] sources, dropped [`TTL`] after it was last heard of. Nothing
//! is written to the event log, so status costs no disk and cannot grow the log; a node that
//! (re)joins learns every reachable node within one announce interval. Status events in the log
//! would replicate forever to every node (the log is append-only and our pruning is per rule
//! and background), for facts that are only worth their newest value.
//!
//! What a peer can lie about, and how we check: a status is signed by its source's ed25519
//! key, taken from the source id itself as for heads (`head::embedded_key`), so nobody can
//! speak for another node. A hostile node can make many keys and invent many nodes: each costs
//! at most [`MAX_STATUS`] bytes and there are at most [`MAX_NODES`] of them (new sources beyond
//! are dropped until old ones expire), so the book stays under 8 MiB. A replayed old status is
//! not newer than what we hold (`sentAt` must grow) and is neither kept nor forwarded; a
//! status dated more than [`MAX_FUTURE`] ahead of our clock is dropped (it would shadow the
//! node's real updates). The JSON body is parsed only after the signature checked out.
//!
//! Wire layout (big-endian; `docs/format.md`, "Node status"): `0x01`, u8 source length, source
//! (peer id bytes), u64 `sentAt` (µs since the epoch), u32 body length, body (JSON
//! [`NodeStatus`]), u8 signature length, signature over `"shoal/status/1\0"` + everything
//! before the signature.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::head::{embedded_key, HeadError, Reader};

/// The gossipsub topic of node statuses.
pub const TOPIC: &str = "shoal/status/1";
/// Largest encoded status: bounds what one invented node costs.
pub const MAX_STATUS: usize = 16 << 10;
/// Most sources whose status a node keeps.
pub const MAX_NODES: usize = 512;
/// A status not heard of again for this long is forgotten (its node is gone or unreachable).
pub const TTL: Duration = Duration::from_secs(600);
/// How often a node announces its status when nothing changes.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);
/// A status dated further ahead of our clock than this is dropped.
pub const MAX_FUTURE: Duration = Duration::from_secs(300);
/// Most apps and peers a status lists (what does not fit is left out, the counts stay true).
pub const MAX_LISTED: usize = 64;

const VERSION: u8 = 1;
const SIGNING_CONTEXT: &[u8] = b"shoal/status/1\0";

/// What a node says about itself (the JSON body of a status message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The `node` settings' `displayName`, if set.
    #[serde(default)]
    pub display_name: Option<String>,
    pub version: String,
    pub uptime_secs: u64,
    /// Events stored on the node (all sources).
    pub events: u64,
    /// Peers the node is connected to (at most [`MAX_LISTED`]).
    #[serde(default)]
    pub peers: Vec<String>,
    /// Apps running and deployed (counts over every app, also those not listed).
    #[serde(default)]
    pub apps_running: u64,
    #[serde(default)]
    pub apps_deployed: u64,
    /// The node's apps (at most [`MAX_LISTED`]).
    #[serde(default)]
    pub apps: Vec<AppStatus>,
    /// Outcomes of remote app commands (`--to`) the node carried out, newest last (bounded).
    #[serde(default)]
    pub commands: Vec<CommandOutcome>,
}

/// One app as a node reports it; the fields of `GET /api/v1/apps` but `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    pub id: String,
    pub version: String,
    pub kind: String,
    pub state: String,
    #[serde(default)]
    pub settings_valid: bool,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub restarts: u64,
    /// RFC 3339.
    #[serde(default)]
    pub started_at: Option<String>,
}

/// The outcome of one remote command, so its sender can see it was carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandOutcome {
    /// `<source>/<offset>` of the command event.
    pub command: String,
    pub action: String,
    pub app: String,
    /// `ok` or the error.
    pub outcome: String,
}

/// A status with its source, date and signature; `encode`/`decode` are the wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedStatus {
    pub source: PeerId,
    /// µs since the epoch; grows with every announcement of one node.
    pub sent_at: u64,
    pub status: NodeStatus,
    body: Vec<u8>,
    signature: Vec<u8>,
}

/// Why a status message was rejected (peer fault: logged with the peer, dropped).
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("malformed status message: {0}")]
    Malformed(&'static str),
    #[error("status message too large ({0} bytes)")]
    TooLarge(usize),
    #[error("status source id does not embed a public key (not an ed25519 peer id)")]
    NoEmbeddedKey,
    #[error("status signature is invalid for source {0}")]
    BadSignature(PeerId),
    #[error("status body is not a node status: {0}")]
    Body(#[source] serde_json::Error),
    #[error("cannot sign the status: {0}")]
    Sign(String),
}

impl SignedStatus {
    /// Signs `status` as `key`'s node, dated `sent_at`. A status whose encoding would exceed
    /// [`MAX_STATUS`] sheds its app and peer lists (the counts stay) rather than not going out.
    pub fn sign(
        key: &Keypair,
        sent_at: u64,
        mut status: NodeStatus,
    ) -> Result<SignedStatus, StatusError> {
        let source = key.public().to_peer_id();
        let mut body = serde_json::to_vec(&status).map_err(StatusError::Body)?;
        if body.len() + 256 > MAX_STATUS {
            status.apps.clear();
            status.peers.clear();
            status.commands.clear();
            body = serde_json::to_vec(&status).map_err(StatusError::Body)?;
        }
        let unsigned = unsigned_bytes(&source, sent_at, &body);
        let signature = key
            .sign(&signing_bytes(&unsigned))
            .map_err(|e| StatusError::Sign(e.to_string()))?;
        Ok(SignedStatus {
            source,
            sent_at,
            status,
            body,
            signature,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = unsigned_bytes(&self.source, self.sent_at, &self.body);
        // An ed25519 signature is 64 bytes.
        out.push(self.signature.len() as u8);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and checks a message: size, layout, signature by the claimed source, then the
    /// body. A message that passes may be kept and forwarded.
    pub fn decode(bytes: &[u8]) -> Result<SignedStatus, StatusError> {
        if bytes.len() > MAX_STATUS {
            return Err(StatusError::TooLarge(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        if r.u8().map_err(truncated)? != VERSION {
            return Err(StatusError::Malformed("unknown version"));
        }
        let n = r.u8().map_err(truncated)? as usize;
        let source = PeerId::from_bytes(r.take(n).map_err(truncated)?)
            .map_err(|_| StatusError::Malformed("source"))?;
        let sent_at = r.u64().map_err(truncated)?;
        let n = r.u32().map_err(truncated)? as usize;
        let body = r.take(n).map_err(truncated)?;
        // What the signature covers: everything read so far.
        let signed_len = bytes.len() - r.bytes.len();
        let n = r.u8().map_err(truncated)? as usize;
        let signature = r.take(n).map_err(truncated)?;
        if !r.is_empty() {
            return Err(StatusError::Malformed("trailing bytes"));
        }
        // The key is the one embedded in the source id, never one from the message.
        let key = embedded_key(&source).map_err(|_| StatusError::NoEmbeddedKey)?;
        if key.to_peer_id() != source {
            return Err(StatusError::NoEmbeddedKey);
        }
        if !key.verify(&signing_bytes(&bytes[..signed_len]), signature) {
            return Err(StatusError::BadSignature(source));
        }
        let status = serde_json::from_slice(body).map_err(StatusError::Body)?;
        Ok(SignedStatus {
            source,
            sent_at,
            status,
            body: body.to_vec(),
            signature: signature.to_vec(),
        })
    }
}

/// The reader fails only on input that ends too early.
fn truncated(_: HeadError) -> StatusError {
    StatusError::Malformed("truncated")
}

fn unsigned_bytes(source: &PeerId, sent_at: u64, body: &[u8]) -> Vec<u8> {
    let source = source.to_bytes();
    let mut out = Vec::with_capacity(16 + source.len() + body.len() + 65);
    out.push(VERSION);
    // A peer id multihash is at most 66 bytes.
    out.push(source.len() as u8);
    out.extend_from_slice(&source);
    out.extend_from_slice(&sent_at.to_be_bytes());
    // `sign` keeps the body under MAX_STATUS.
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn signing_bytes(unsigned: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + unsigned.len());
    out.extend_from_slice(SIGNING_CONTEXT);
    out.extend_from_slice(unsigned);
    out
}

#[cfg(test)]
mod tests;
