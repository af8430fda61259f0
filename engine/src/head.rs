//! Signed heads: "source S's log has root R, last offset O, lamport L, timestamp T", signed by S.
//!
//! A head is what the swarm gossips. Only the owner of a source's ed25519 key can make a valid
//! head for it; any node may relay one. [`SignedHead::verify`] checks both that the signature is
//! valid and that the signer *is* the claimed source: an ed25519 `PeerId` embeds its public key
//! (identity multihash of the protobuf-encoded key), so the key is taken from the source id itself
//! and never from the message.
//!
//! The byte layout (fixed, big-endian, versioned) is documented in `docs/format.md` ("Signed
//! head"). Decoding never panics on junk and never allocates more than the input's length.

use cid::Cid;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

/// First byte of an encoded head that was never pruned at its offset.
pub const HEAD_VERSION: u8 = 1;
/// First byte of an encoded head of a pruned tree: version 1's body, then `pruned` (u64).
pub const HEAD_VERSION_PRUNED: u8 = 2;
/// Domain separation prefix of the signed bytes (never sent).
const SIGNING_CONTEXT: &[u8] = b"shoal/head/1\0";
/// Upper bound of an encoded head; anything longer is rejected before parsing.
pub const MAX_HEAD_LEN: usize = 512;
/// Multihash code of the identity hash (ed25519 peer ids embed the key with it).
const IDENTITY_MULTIHASH: u64 = 0x00;

/// Why a head was rejected. Peer faults: log with the peer id and drop.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("head is malformed: {0}")]
    Malformed(&'static str),
    #[error("head source id does not embed a public key (not an ed25519 peer id)")]
    NoEmbeddedKey,
    #[error("head signature is invalid for source {0}")]
    BadSignature(PeerId),
    #[error("signing the head failed: {0}")]
    Sign(String),
}

/// The unsigned content of a head.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Head {
    /// The source (= the signing node's peer id).
    pub source: PeerId,
    /// Root CID of the source's event tree.
    pub root: Cid,
    /// Highest offset in that tree (count - 1).
    pub offset: u64,
    /// Highest lamport in that tree.
    pub lamport: u64,
    /// Timestamp (µs since the epoch) of the last event.
    pub timestamp: u64,
    /// How many times the source pruned this tree at this offset (retention, 0: never): a
    /// pruning keeps the offset and changes the root, so heads are ordered by
    /// [`Head::position`], and two roots at one position are a fork.
    pub pruned: u64,
}

/// A head with its signature; `encode`/`decode` are the wire and disk form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedHead {
    pub head: Head,
    pub signature: Vec<u8>,
}

impl Head {
    /// The bytes covered by the signature: the body of the encoding, behind a context prefix.
    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIGNING_CONTEXT.len() + 128);
        out.extend_from_slice(SIGNING_CONTEXT);
        self.encode_body(&mut out);
        out
    }

    /// (offset, pruned): a later head of a source has a higher position.
    pub fn position(&self) -> (u64, u64) {
        (self.offset, self.pruned)
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        let source = self.source.to_bytes();
        let root = self.root.to_bytes();
        // Version 1 unless pruned, so nodes that never prune stay readable by older ones.
        out.push(if self.pruned == 0 {
            HEAD_VERSION
        } else {
            HEAD_VERSION_PRUNED
        });
        // Both fit in a byte: a peer id multihash is ≤ 64+2 bytes and a CID ≤ 64+4 bytes.
        out.push(source.len() as u8);
        out.extend_from_slice(&source);
        out.push(root.len() as u8);
        out.extend_from_slice(&root);
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.lamport.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        if self.pruned != 0 {
            out.extend_from_slice(&self.pruned.to_be_bytes());
        }
    }

    /// Signs this head with `key`, which must be the source's own key.
    pub fn sign(self, key: &Keypair) -> Result<SignedHead, HeadError> {
        if key.public().to_peer_id() != self.source {
            return Err(HeadError::Sign(
                "key does not belong to the head's source".into(),
            ));
        }
        let signature = key
            .sign(&self.signing_bytes())
            .map_err(|e| HeadError::Sign(e.to_string()))?;
        Ok(SignedHead {
            head: self,
            signature,
        })
    }
}

/// The public key embedded in an ed25519 peer id.
pub fn embedded_key(peer: &PeerId) -> Result<PublicKey, HeadError> {
    let mh = peer.as_ref();
    if mh.code() != IDENTITY_MULTIHASH {
        return Err(HeadError::NoEmbeddedKey);
    }
    PublicKey::try_decode_protobuf(mh.digest()).map_err(|_| HeadError::NoEmbeddedKey)
}

impl SignedHead {
    /// Checks the signature against the key embedded in the claimed source.
    /// A head that passes was made by the source's owner (the claimed source IS the signer).
    pub fn verify(&self) -> Result<(), HeadError> {
        let key = embedded_key(&self.head.source)?;
        // Defensive: the embedded key must hash back to the very same peer id.
        if key.to_peer_id() != self.head.source {
            return Err(HeadError::NoEmbeddedKey);
        }
        if key.verify(&self.head.signing_bytes(), &self.signature) {
            Ok(())
        } else {
            Err(HeadError::BadSignature(self.head.source))
        }
    }

    /// Wire/disk encoding: body, then signature length (1 byte) and signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200);
        self.head.encode_body(&mut out);
        out.push(self.signature.len() as u8);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes exactly one head from `bytes` (trailing bytes are an error).
    /// Does not verify the signature: call [`SignedHead::verify`].
    pub fn decode(bytes: &[u8]) -> Result<SignedHead, HeadError> {
        let mut r = Reader { bytes };
        let head = Self::read(&mut r)?;
        if !r.bytes.is_empty() {
            return Err(HeadError::Malformed("trailing bytes"));
        }
        Ok(head)
    }

    /// Reads one head from the front of `r` (used by messages that carry several).
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<SignedHead, HeadError> {
        let version = r.u8()?;
        if version != HEAD_VERSION && version != HEAD_VERSION_PRUNED {
            return Err(HeadError::Malformed("unknown version"));
        }
        let n = r.u8()? as usize;
        let source = PeerId::from_bytes(r.take(n)?).map_err(|_| HeadError::Malformed("source"))?;
        let n = r.u8()? as usize;
        let root = Cid::try_from(r.take(n)?).map_err(|_| HeadError::Malformed("root cid"))?;
        let offset = r.u64()?;
        let lamport = r.u64()?;
        let timestamp = r.u64()?;
        let pruned = match version {
            HEAD_VERSION => 0,
            _ => match r.u64()? {
                // Version 2 with 0 would be a second encoding of a version 1 head.
                0 => return Err(HeadError::Malformed("version 2 with pruned 0")),
                p => p,
            },
        };
        let n = r.u8()? as usize;
        let signature = r.take(n)?.to_vec();
        Ok(SignedHead {
            head: Head {
                source,
                root,
                offset,
                lamport,
                timestamp,
                pruned,
            },
            signature,
        })
    }
}

/// A cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    pub(crate) bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], HeadError> {
        if self.bytes.len() < n {
            return Err(HeadError::Malformed("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, HeadError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, HeadError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, HeadError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, HeadError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root(n: u8) -> Cid {
        let mh = cid::multihash::Multihash::<64>::wrap(0x12, &[n; 32]).unwrap();
        Cid::new_v1(0x71, mh)
    }

    fn head_for(key: &Keypair, offset: u64) -> Head {
        Head {
            source: key.public().to_peer_id(),
            root: root(offset as u8),
            offset,
            lamport: offset * 3 + 1,
            timestamp: 1_700_000_000_000_000 + offset,
            pruned: 0,
        }
    }

    #[test]
    fn pruned_heads_roundtrip_as_version_2_and_order_after_unpruned() {
        let key = Keypair::generate_ed25519();
        let plain = head_for(&key, 9);
        let pruned = Head {
            pruned: 3,
            root: root(1),
            ..plain.clone()
        };
        assert!(plain.position() < pruned.position());
        let signed = pruned.sign(&key).unwrap();
        let bytes = signed.encode();
        assert_eq!(bytes[0], HEAD_VERSION_PRUNED);
        let back = SignedHead::decode(&bytes).unwrap();
        back.verify().unwrap();
        assert_eq!(back, signed);
        // The generation is signed.
        let mut h = back.clone();
        h.head.pruned = 4;
        assert!(h.verify().is_err());
        assert_eq!(plain.sign(&key).unwrap().encode()[0], HEAD_VERSION);
    }

    #[test]
    fn sign_verify_roundtrip() {
        let key = Keypair::generate_ed25519();
        let signed = head_for(&key, 41).sign(&key).unwrap();
        signed.verify().unwrap();
        let bytes = signed.encode();
        assert!(bytes.len() < MAX_HEAD_LEN);
        let back = SignedHead::decode(&bytes).unwrap();
        assert_eq!(back, signed);
        back.verify().unwrap();
    }

    #[test]
    fn tampered_fields_fail() {
        let key = Keypair::generate_ed25519();
        let signed = head_for(&key, 7).sign(&key).unwrap();
        let mut h = signed.clone();
        h.head.offset += 1;
        assert_eq!(h.verify(), Err(HeadError::BadSignature(h.head.source)));
        let mut h = signed.clone();
        h.head.root = root(99);
        assert!(h.verify().is_err());
        let mut h = signed.clone();
        h.signature[0] ^= 1;
        assert!(h.verify().is_err());
    }

    #[test]
    fn forged_source_fails() {
        // Mallory signs a head claiming Alice's source with her own key.
        let alice = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        let forged = Head {
            source: alice.public().to_peer_id(),
            ..head_for(&mallory, 3)
        };
        assert!(forged.clone().sign(&mallory).is_err());
        let signature = mallory.sign(&forged.signing_bytes()).unwrap();
        let forged = SignedHead {
            head: forged,
            signature,
        };
        assert!(forged.verify().is_err());
        // A source that is not an ed25519 peer id (no embedded key) never verifies.
        let mut h = head_for(&mallory, 3).sign(&mallory).unwrap();
        h.head.source = PeerId::random();
        let _ = h.verify(); // random peer ids are identity-hashed too; must not panic
    }

    #[test]
    fn truncations_fail_cleanly() {
        let key = Keypair::generate_ed25519();
        let bytes = head_for(&key, 1).sign(&key).unwrap().encode();
        for n in 0..bytes.len() {
            assert!(SignedHead::decode(&bytes[..n]).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(SignedHead::decode(&long).is_err());
    }

    proptest! {
        #[test]
        fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(h) = SignedHead::decode(&bytes) {
                let _ = h.verify();
            }
        }

        #[test]
        fn mutated_heads_never_panic(idx in 0usize..200, val in any::<u8>()) {
            let key = Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
            let mut bytes = head_for(&key, 5).sign(&key).unwrap().encode();
            let i = idx % bytes.len();
            let changed = bytes[i] != val;
            bytes[i] = val;
            if let Ok(h) = SignedHead::decode(&bytes) {
                // any change to the signed content or signature must fail verification
                prop_assert!(!changed || h.verify().is_err());
            }
        }

        #[test]
        fn roundtrip(offset in any::<u64>(), lamport in any::<u64>(), ts in any::<u64>(), pruned in any::<u64>()) {
            let key = Keypair::ed25519_from_bytes([9u8; 32]).unwrap();
            let h = Head { offset, lamport, timestamp: ts, pruned, ..head_for(&key, 0) };
            let s = h.sign(&key).unwrap();
            let back = SignedHead::decode(&s.encode()).unwrap();
            prop_assert!(back.verify().is_ok());
            prop_assert_eq!(back, s);
        }
    }
}
