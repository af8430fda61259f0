//! Forks: a source that signed two different trees at one offset (`docs/format.md`, "Forks").
//!
//! A signed head names a source, an offset and the root of the source's whole tree at that
//! offset; an honest source never signs two roots for one offset. One that does (a buggy or
//! compromised device, or a device restored from an old backup that published again) is
//! *equivocating*. The node keeps the head it had first (stored or known) and refuses the
//! other: the other head is neither replicated, nor forwarded by gossip, nor answered in
//! digests. This module records each forked source once, with both roots, so node info shows
//! it and the log says it once per source, naming the peer that brought the second head.
//!
//! Invariant: at most [`MAX_FORKS`] sources are recorded (a peer could present many forked
//! sources; later ones are counted, not kept), so memory stays bounded.

use std::collections::BTreeMap;

use libp2p::PeerId;
use serde::Serialize;

use crate::head::SignedHead;

/// Forked sources recorded at most.
pub const MAX_FORKS: usize = 64;

/// One forked source as node info shows it (`GET /api/v1/node/info` `forks[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForkInfo {
    pub source: String,
    /// The offset signed twice.
    pub offset: u64,
    /// Root of the head this node kept.
    pub kept_root: String,
    /// Root of the head it refused (the first other one seen).
    pub refused_root: String,
    /// The peer that sent the refused head.
    pub from: String,
}

/// The forked sources seen since start.
#[derive(Debug, Default)]
pub(crate) struct Forks {
    seen: BTreeMap<PeerId, ForkInfo>,
    /// Forked sources beyond [`MAX_FORKS`], not recorded.
    pub(crate) dropped: u64,
}

impl Forks {
    /// Records that `refused` (from `peer`) conflicts with `kept`; returns the new record if
    /// this source was not recorded before (the caller publishes it), logging a warning then.
    pub(crate) fn note(
        &mut self,
        kept: &SignedHead,
        refused: &SignedHead,
        peer: PeerId,
    ) -> Option<ForkInfo> {
        let source = kept.head.source;
        if self.seen.contains_key(&source) {
            return None;
        }
        if self.seen.len() >= MAX_FORKS {
            self.dropped = self.dropped.saturating_add(1);
            return None;
        }
        let info = ForkInfo {
            source: source.to_string(),
            offset: kept.head.offset,
            kept_root: kept.head.root.to_string(),
            refused_root: refused.head.root.to_string(),
            from: peer.to_string(),
        };
        tracing::warn!(
            %source, offset = info.offset, kept = %info.kept_root, refused = %info.refused_root,
            %peer, "source signed two trees at one offset (a fork); keeping the first, refusing \
             the other (see docs/format.md, Forks; logged once per source)"
        );
        self.seen.insert(source, info.clone());
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Head;

    fn head(source: PeerId, root: &[u8]) -> SignedHead {
        use sha2::Digest;
        let d = sha2::Sha256::digest(root);
        let mh = cid::multihash::Multihash::<64>::wrap(0x12, &d).unwrap();
        SignedHead {
            head: Head {
                source,
                root: cid::Cid::new_v1(0x71, mh),
                offset: 7,
                lamport: 7,
                timestamp: 0,
                pruned: 0,
            },
            signature: vec![0; 64],
        }
    }

    /// Issue 12 item 7: each forked source is recorded (and logged) once, and no more than
    /// `MAX_FORKS` are kept however many a peer presents.
    #[test]
    fn a_fork_is_recorded_once_per_source_and_the_record_is_bounded() {
        let mut forks = Forks::default();
        let peer = PeerId::random();
        let source = PeerId::random();
        let (a, b) = (head(source, b"a"), head(source, b"b"));
        let info = forks.note(&a, &b, peer).unwrap();
        assert_eq!(info.kept_root, a.head.root.to_string());
        assert_eq!(info.refused_root, b.head.root.to_string());
        assert!(forks.note(&a, &b, peer).is_none(), "once per source");
        for _ in 1..MAX_FORKS + 10 {
            let s = PeerId::random();
            forks.note(&head(s, b"a"), &head(s, b"b"), peer);
        }
        assert_eq!(forks.seen.len(), MAX_FORKS);
        assert_eq!(forks.dropped, 10);
    }
}
