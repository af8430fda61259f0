//! The gossip message on topic [`TOPIC`]: a signed head, optionally with the blocks of a small
//! append inline (the fast path: a direct peer needs no block-exchange round trip).
//!
//! Layout (big-endian; `docs/format.md`, "Gossip"): `0x01`, u16 head length, head, u16 block
//! count, count × (u8 CID length, CID, u32 length, bytes). [`decode`] checks the head's
//! signature and every inline block's hash: a message that passes can be forwarded.

use cid::Cid;

use crate::exchange::wire::verify_block;
use crate::head::{HeadError, Reader, SignedHead};

/// The gossipsub topic of heads.
pub const TOPIC: &str = "shoal/heads/1";
/// Largest gossip message (gossipsub's `max_transmit_size`).
pub const MAX_MESSAGE: usize = 256 << 10;
/// Inline blocks are only attached while their total stays below this.
pub const INLINE_LIMIT: usize = 128 << 10;

const TAG_HEAD: u8 = 1;

/// A decoded and checked gossip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadMessage {
    pub head: SignedHead,
    pub blocks: Vec<(Cid, Vec<u8>)>,
}

/// Why a message was rejected (the sender is penalised by gossipsub and logged).
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("malformed gossip message: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("inline block {0} does not match its hash")]
    BadBlock(Cid),
}

/// Encodes a head with the given blocks, dropping the blocks if they exceed [`INLINE_LIMIT`].
pub fn encode(head: &SignedHead, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let inline: usize = blocks.iter().map(|(_, d)| d.len() + 48).sum();
    let blocks = if inline <= INLINE_LIMIT && blocks.len() < u16::MAX as usize {
        blocks
    } else {
        &[]
    };
    let h = head.encode();
    let mut out = Vec::with_capacity(5 + h.len() + inline);
    out.push(TAG_HEAD);
    out.extend_from_slice(&(h.len() as u16).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&(blocks.len() as u16).to_be_bytes());
    for (cid, data) in blocks {
        let c = cid.to_bytes();
        out.push(c.len() as u8);
        out.extend_from_slice(&c);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// Decodes and checks a message (signature, source, every inline block's hash).
pub fn decode(bytes: &[u8]) -> Result<HeadMessage, GossipError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(GossipError::Malformed("too large"));
    }
    let mut r = Reader::new(bytes);
    if r.u8()? != TAG_HEAD {
        return Err(GossipError::Malformed("unknown tag"));
    }
    let n = r.u16()? as usize;
    let head = SignedHead::decode(r.take(n)?)?;
    head.verify()?;
    let count = r.u16()? as usize;
    let mut blocks = Vec::with_capacity(count.min(bytes.len() / 40));
    for _ in 0..count {
        let n = r.u8()? as usize;
        let cid = Cid::try_from(r.take(n)?).map_err(|_| GossipError::Malformed("cid"))?;
        let len = r.u32()? as usize;
        let data = r.take(len)?;
        if !verify_block(&cid, data) {
            return Err(GossipError::BadBlock(cid));
        }
        blocks.push((cid, data.to_vec()));
    }
    if !r.is_empty() {
        return Err(GossipError::Malformed("trailing bytes"));
    }
    Ok(HeadMessage { head, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::wire::SHA2_256;
    use crate::head::Head;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;
    use sha2::Digest;

    fn block(data: &[u8]) -> (Cid, Vec<u8>) {
        let mh =
            cid::multihash::Multihash::<64>::wrap(SHA2_256, &sha2::Sha256::digest(data)).unwrap();
        (Cid::new_v1(0x71, mh), data.to_vec())
    }

    fn signed(key: &Keypair) -> SignedHead {
        Head {
            source: key.public().to_peer_id(),
            root: block(b"root").0,
            offset: 3,
            lamport: 4,
            timestamp: 5,
            pruned: 0,
        }
        .sign(key)
        .unwrap()
    }

    #[test]
    fn roundtrip_with_blocks() {
        let key = Keypair::generate_ed25519();
        let head = signed(&key);
        let blocks = vec![block(b"root"), block(b"leaf")];
        let m = decode(&encode(&head, &blocks)).unwrap();
        assert_eq!(m.head, head);
        assert_eq!(m.blocks, blocks);
    }

    #[test]
    fn large_appends_go_without_blocks() {
        let key = Keypair::generate_ed25519();
        let blocks = vec![block(&vec![1u8; INLINE_LIMIT + 1])];
        let m = decode(&encode(&signed(&key), &blocks)).unwrap();
        assert!(m.blocks.is_empty());
    }

    #[test]
    fn wrong_inline_block_rejected() {
        let key = Keypair::generate_ed25519();
        let (cid, _) = block(b"x");
        let bytes = encode(&signed(&key), &[(cid, b"y".to_vec())]);
        assert!(matches!(decode(&bytes), Err(GossipError::BadBlock(_))));
    }

    #[test]
    fn forged_head_rejected() {
        let key = Keypair::generate_ed25519();
        let mut head = signed(&key);
        head.head.offset = 1000;
        assert!(matches!(
            decode(&encode(&head, &[])),
            Err(GossipError::Head(_))
        ));
    }

    proptest! {
        #[test]
        fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
