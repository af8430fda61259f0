//! The one place where libipld's `Cid` (cid 0.7, what banyan links with) and `cid::Cid` (0.11,
//! what libp2p and the store's public API use) meet.
//!
//! Both types are converted through their byte form, which round-trips exactly. This module also
//! computes CIDs (SHA2-256 through the `sha2` crate) and checks that a CID is one the store
//! accepts. Invariant: every CID the store writes or accepts is CIDv1, SHA2-256 (32-byte digest),
//! codec dag-cbor (0x71), dag-pb (0x70) or raw (0x55).

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};

pub use cid::Cid;

/// Multicodec code of dag-cbor: tree nodes, heads, upload manifests.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of dag-pb: the nodes of a blob's UnixFS DAG.
pub const DAG_PB: u64 = 0x70;
/// Multicodec code of raw bytes: blob chunks.
pub const RAW: u64 = 0x55;
/// Multihash code of SHA2-256.
pub const SHA2_256: u64 = 0x12;

/// The link type inside banyan trees.
pub(crate) type IpldCid = libipld::Cid;

/// SHA2-256 digest of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The CID (v1, SHA2-256) of `data` under `codec`.
pub fn cid_of(codec: u64, data: &[u8]) -> Cid {
    let digest = sha256(data);
    // Cannot fail: a 32-byte digest always fits a 64-byte multihash (no input affects this).
    let mh = multihash::Multihash::<64>::wrap(SHA2_256, &digest)
        .expect("a 32-byte digest fits a 64-byte multihash");
    Cid::new_v1(codec, mh)
}

/// The banyan-side CID of a dag-cbor block.
pub(crate) fn ipld_cid_of(data: &[u8]) -> Result<IpldCid> {
    to_ipld(&cid_of(DAG_CBOR, data))
}

/// Converts a public CID to the libipld one (exact round trip through the byte form; both
/// types allow multihashes up to 64 bytes, so this only fails for CIDs we reject anyway).
pub(crate) fn to_ipld(cid: &Cid) -> Result<IpldCid> {
    IpldCid::try_from(cid.to_bytes().as_slice()).map_err(|e| Error::UnsupportedCid {
        cid: cid.to_string(),
        reason: e.to_string(),
    })
}

/// Converts a libipld CID (e.g. read from a banyan block) to the public type.
pub(crate) fn from_ipld(cid: &IpldCid) -> Result<Cid> {
    Cid::try_from(cid.to_bytes().as_slice()).map_err(|e| Error::UnsupportedCid {
        cid: cid.to_string(),
        reason: e.to_string(),
    })
}

/// Parses a CID from its binary form (as stored in SQLite).
pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Cid> {
    Cid::try_from(bytes).map_err(|e| Error::UnsupportedCid {
        cid: hex::encode(bytes),
        reason: e.to_string(),
    })
}

/// Checks the store can hold a block under `cid`: v1, SHA2-256, dag-cbor, dag-pb or raw.
pub fn check_supported(cid: &Cid) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::UnsupportedCid {
            cid: cid.to_string(),
            reason: reason.to_string(),
        })
    };
    if cid.version() != cid::Version::V1 {
        return bad("only CIDv1 is accepted");
    }
    if ![DAG_CBOR, DAG_PB, RAW].contains(&cid.codec()) {
        return bad("codec must be dag-cbor (0x71), dag-pb (0x70) or raw (0x55)");
    }
    if cid.hash().code() != SHA2_256 || cid.hash().size() != 32 {
        return bad("hash must be SHA2-256");
    }
    Ok(())
}

/// Checks `data` hashes to `cid` (which must be supported).
pub fn verify(cid: &Cid, data: &[u8]) -> Result<()> {
    check_supported(cid)?;
    if cid.hash().digest() == sha256(data) {
        Ok(())
    } else {
        Err(Error::HashMismatch { cid: *cid })
    }
}

/// Serializes a CID as its string form (for the inspector's JSON).
pub fn serialize<S: serde::Serializer>(cid: &Cid, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(cid)
}

/// Serializes an optional CID as its string form or null.
pub fn serialize_opt<S: serde::Serializer>(
    cid: &Option<Cid>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match cid {
        Some(c) => s.collect_str(c),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_between_cid_types() {
        for codec in [DAG_CBOR, RAW] {
            let c = cid_of(codec, b"hello");
            let i = to_ipld(&c).unwrap();
            assert_eq!(i.to_bytes(), c.to_bytes());
            assert_eq!(from_ipld(&i).unwrap(), c);
            assert_eq!(from_bytes(&c.to_bytes()).unwrap(), c);
        }
    }

    #[test]
    fn verify_detects_mismatch_and_unsupported() {
        let c = cid_of(RAW, b"abc");
        verify(&c, b"abc").unwrap();
        assert!(matches!(
            verify(&c, b"abd"),
            Err(Error::HashMismatch { .. })
        ));
        let other = Cid::new_v1(0x0129, *c.hash());
        assert!(matches!(
            verify(&other, b"abc"),
            Err(Error::UnsupportedCid { .. })
        ));
    }

    #[test]
    fn junk_cid_bytes_never_panic() {
        for len in 0..80u8 {
            let junk: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(len))
                .collect();
            let _ = from_bytes(&junk);
        }
    }
}
