//! Wire format of `/shoal/exchange/1` and its `request_response::Codec`.
//!
//! Every message is read whole, through `take(limit + 1)`: a peer cannot make us buffer more
//! than [`MAX_REQUEST_BYTES`] / [`MAX_RESPONSE_BYTES`]. Decoding is bounds-checked and never
//! panics; counts are checked against the limits before anything is allocated for them. The
//! byte layout is in `docs/format.md` ("Block exchange").

use std::io;

use cid::Cid;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use sha2::{Digest, Sha256};

use super::{MAX_BLOCK_SIZE, MAX_DIGEST_ENTRIES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, MAX_WANT};
use crate::head::{HeadError, Reader, SignedHead};

/// The protocol name.
pub const PROTOCOL: &str = "/shoal/exchange/1";

const TAG_WANT: u8 = 1;
const TAG_DIGEST: u8 = 2;
/// A digest with pruning generations: TAG_DIGEST's entries, then the entries whose `pruned`
/// is not 0 (u32 count, count × (u32 entry index, u64 pruned)). Sent only when some entry is
/// pruned, so swarms that never prune keep the older format.
const TAG_DIGEST_PRUNED: u8 = 3;
const TAG_BLOCKS: u8 = 1;
const TAG_HEADS: u8 = 2;

/// Multihash code of SHA-256, the only block hash shoal accepts.
pub const SHA2_256: u64 = 0x12;

/// A request to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// "Send me these blocks" (at most [`MAX_WANT`]).
    Want(Vec<Cid>),
    /// "This is what I know": per source, a short hash of its id and the highest offset known.
    /// The answer carries the signed heads the asker is behind on.
    Digest(Vec<DigestEntry>),
}

/// One line of a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestEntry {
    /// First 8 bytes of SHA-256 of the source's peer id bytes.
    pub source_hash: [u8; 8],
    pub offset: u64,
    /// The pruning generation at that offset (`Head::pruned`; 0: not pruned).
    pub pruned: u64,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Blocks found (unverified until [`verify_block`]), and CIDs the peer does not have.
    /// Wanted CIDs in neither list were deferred (response size budget): ask again.
    Blocks {
        blocks: Vec<(Cid, Vec<u8>)>,
        have_not: Vec<Cid>,
    },
    /// Heads newer than the asker's digest.
    Heads(Vec<SignedHead>),
}

/// The short hash used in digests.
pub fn source_hash(source: &libp2p::PeerId) -> [u8; 8] {
    let d = Sha256::digest(source.to_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

/// Does `data` hash to `cid`? Only SHA-256 multihashes are accepted.
pub fn verify_block(cid: &Cid, data: &[u8]) -> bool {
    let mh = cid.hash();
    mh.code() == SHA2_256 && mh.size() == 32 && Sha256::digest(data).as_slice() == mh.digest()
}

fn bad(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn from_head(e: HeadError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn put_cid(out: &mut Vec<u8>, cid: &Cid) {
    let b = cid.to_bytes();
    out.push(b.len() as u8);
    out.extend_from_slice(&b);
}

fn get_cid(r: &mut Reader<'_>) -> io::Result<Cid> {
    let n = r.u8().map_err(from_head)? as usize;
    Cid::try_from(r.take(n).map_err(from_head)?).map_err(|_| bad("invalid cid"))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Want(cids) => {
                let mut out = Vec::with_capacity(3 + cids.len() * 40);
                out.push(TAG_WANT);
                out.extend_from_slice(&(cids.len() as u16).to_be_bytes());
                for c in cids {
                    put_cid(&mut out, c);
                }
                out
            }
            Request::Digest(entries) => {
                let mut out = Vec::with_capacity(9 + entries.len() * 16);
                let pruned: Vec<(usize, u64)> = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.pruned != 0)
                    .map(|(i, e)| (i, e.pruned))
                    .collect();
                out.push(if pruned.is_empty() {
                    TAG_DIGEST
                } else {
                    TAG_DIGEST_PRUNED
                });
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    out.extend_from_slice(&e.source_hash);
                    out.extend_from_slice(&e.offset.to_be_bytes());
                }
                if !pruned.is_empty() {
                    out.extend_from_slice(&(pruned.len() as u32).to_be_bytes());
                    for (i, p) in pruned {
                        out.extend_from_slice(&(i as u32).to_be_bytes());
                        out.extend_from_slice(&p.to_be_bytes());
                    }
                }
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Request> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(bad("request too large"));
        }
        let mut r = Reader::new(bytes);
        let req = match r.u8().map_err(from_head)? {
            TAG_WANT => {
                let n = r.u16().map_err(from_head)? as usize;
                if n > MAX_WANT {
                    return Err(bad("too many cids wanted"));
                }
                let mut cids = Vec::with_capacity(n);
                for _ in 0..n {
                    cids.push(get_cid(&mut r)?);
                }
                Request::Want(cids)
            }
            tag @ (TAG_DIGEST | TAG_DIGEST_PRUNED) => {
                let n = r.u32().map_err(from_head)? as usize;
                if n > MAX_DIGEST_ENTRIES {
                    return Err(bad("digest too long"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let mut source_hash = [0u8; 8];
                    source_hash.copy_from_slice(r.take(8).map_err(from_head)?);
                    let offset = r.u64().map_err(from_head)?;
                    entries.push(DigestEntry {
                        source_hash,
                        offset,
                        pruned: 0,
                    });
                }
                if tag == TAG_DIGEST_PRUNED {
                    let m = r.u32().map_err(from_head)? as usize;
                    if m > n {
                        return Err(bad("more pruned entries than entries"));
                    }
                    for _ in 0..m {
                        let i = r.u32().map_err(from_head)? as usize;
                        let pruned = r.u64().map_err(from_head)?;
                        match entries.get_mut(i) {
                            Some(e) if pruned != 0 => e.pruned = pruned,
                            _ => return Err(bad("bad pruned digest entry")),
                        }
                    }
                }
                Request::Digest(entries)
            }
            _ => return Err(bad("unknown request tag")),
        };
        if !r.is_empty() {
            return Err(bad("trailing bytes in request"));
        }
        Ok(req)
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Blocks { blocks, have_not } => {
                let size: usize = blocks.iter().map(|(_, d)| d.len() + 45).sum();
                let mut out = Vec::with_capacity(5 + size + have_not.len() * 40);
                out.push(TAG_BLOCKS);
                out.extend_from_slice(&(blocks.len() as u16).to_be_bytes());
                for (c, d) in blocks {
                    put_cid(&mut out, c);
                    out.extend_from_slice(&(d.len() as u32).to_be_bytes());
                    out.extend_from_slice(d);
                }
                out.extend_from_slice(&(have_not.len() as u16).to_be_bytes());
                for c in have_not {
                    put_cid(&mut out, c);
                }
                out
            }
            Response::Heads(heads) => {
                let mut out = Vec::with_capacity(3 + heads.len() * 200);
                out.push(TAG_HEADS);
                out.extend_from_slice(&(heads.len() as u16).to_be_bytes());
                for h in heads {
                    let b = h.encode();
                    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
                    out.extend_from_slice(&b);
                }
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Response> {
        if bytes.len() > MAX_RESPONSE_BYTES {
            return Err(bad("response too large"));
        }
        let mut r = Reader::new(bytes);
        let resp = match r.u8().map_err(from_head)? {
            TAG_BLOCKS => {
                let n = r.u16().map_err(from_head)? as usize;
                if n > MAX_WANT {
                    return Err(bad("too many blocks"));
                }
                let mut blocks = Vec::with_capacity(n);
                for _ in 0..n {
                    let cid = get_cid(&mut r)?;
                    let len = r.u32().map_err(from_head)? as usize;
                    if len > MAX_BLOCK_SIZE {
                        return Err(bad("block too large"));
                    }
                    blocks.push((cid, r.take(len).map_err(from_head)?.to_vec()));
                }
                let n = r.u16().map_err(from_head)? as usize;
                if n > MAX_WANT {
                    return Err(bad("too many have-nots"));
                }
                let mut have_not = Vec::with_capacity(n);
                for _ in 0..n {
                    have_not.push(get_cid(&mut r)?);
                }
                Response::Blocks { blocks, have_not }
            }
            TAG_HEADS => {
                let n = r.u16().map_err(from_head)? as usize;
                let mut heads = Vec::with_capacity(n.min(bytes.len() / 64));
                for _ in 0..n {
                    let len = r.u16().map_err(from_head)? as usize;
                    let h =
                        SignedHead::decode(r.take(len).map_err(from_head)?).map_err(from_head)?;
                    heads.push(h);
                }
                Response::Heads(heads)
            }
            _ => return Err(bad("unknown response tag")),
        };
        if !r.is_empty() {
            return Err(bad("trailing bytes in response"));
        }
        Ok(resp)
    }
}

/// The `request_response` codec: whole messages, size-capped in both directions.
#[derive(Debug, Clone, Default)]
pub struct Codec;

async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(bad("message over the size limit"));
    }
    Ok(buf)
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = libp2p::StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Request::decode(&read_capped(io, MAX_REQUEST_BYTES).await?)
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        Response::decode(&read_capped(io, MAX_RESPONSE_BYTES).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.encode()).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        resp: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&resp.encode()).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Head;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    pub(crate) fn block(data: &[u8]) -> (Cid, Vec<u8>) {
        let d = Sha256::digest(data);
        let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, &d).unwrap();
        (Cid::new_v1(0x55, mh), data.to_vec())
    }

    #[test]
    fn roundtrips() {
        let (a, da) = block(b"a");
        let (b, _) = block(b"b");
        for req in [
            Request::Want(vec![a, b]),
            Request::Want(vec![]),
            Request::Digest(vec![DigestEntry {
                source_hash: [1; 8],
                offset: 9,
                pruned: 0,
            }]),
            Request::Digest(vec![
                DigestEntry {
                    source_hash: [1; 8],
                    offset: 9,
                    pruned: 0,
                },
                DigestEntry {
                    source_hash: [2; 8],
                    offset: 4,
                    pruned: 2,
                },
            ]),
        ] {
            assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        }
        let key = Keypair::generate_ed25519();
        let head = Head {
            source: key.public().to_peer_id(),
            root: a,
            offset: 1,
            lamport: 2,
            timestamp: 3,
            pruned: 0,
        }
        .sign(&key)
        .unwrap();
        for resp in [
            Response::Blocks {
                blocks: vec![(a, da)],
                have_not: vec![b],
            },
            Response::Heads(vec![head.clone(), head]),
        ] {
            assert_eq!(Response::decode(&resp.encode()).unwrap(), resp);
        }
    }

    #[test]
    fn verify_checks_hash() {
        let (a, da) = block(b"hello");
        assert!(verify_block(&a, &da));
        assert!(!verify_block(&a, b"hellO"));
    }

    #[test]
    fn oversized_counts_rejected_without_allocating() {
        let mut m = vec![TAG_DIGEST];
        m.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Request::decode(&m).is_err());
        let mut m = vec![TAG_BLOCKS];
        m.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(Response::decode(&m).is_err());
    }

    proptest! {
        #[test]
        fn junk_requests_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn junk_responses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn want_roundtrip(datas in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..50)) {
            let cids: Vec<Cid> = datas.iter().map(|d| block(d).0).collect();
            let req = Request::Want(cids);
            prop_assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        }
    }
}
