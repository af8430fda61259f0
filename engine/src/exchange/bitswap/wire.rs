//! Bitswap 1.2.0 messages on the wire: the protobuf `Message` of the spec (`BITSWAP.md` in
//! ipfs/specs), each framed by an unsigned-varint length prefix, several per stream.
//!
//! ```text
//! message Message {
//!   message Wantlist {
//!     enum WantType { Block = 0; Have = 1; }
//!     message Entry { bytes block = 1; int32 priority = 2; bool cancel = 3;
//!                     WantType wantType = 4; bool sendDontHave = 5; }
//!     repeated Entry entries = 1; bool full = 2;
//!   }
//!   message Block { bytes prefix = 1; bytes data = 2; }
//!   enum BlockPresenceType { Have = 0; DontHave = 1; }
//!   message BlockPresence { bytes cid = 1; BlockPresenceType type = 2; }
//!   Wantlist wantlist = 1;
//!   repeated bytes blocks = 2;          // Bitswap 1.0.0: ignored
//!   repeated Block payload = 3;
//!   repeated BlockPresence blockPresences = 4;
//!   int32 pendingBytes = 5;             // ignored
//! }
//! ```
//!
//! Decoding is by hand over `prost`'s varint primitives, so every count is checked against its
//! cap *while* parsing (a generated decoder would first allocate a struct per entry: two bytes
//! of input each). A payload block carries no CID, only its prefix (version, codec, hash
//! code and length): the CID is computed here from the block's bytes, so a block can never
//! arrive under a CID it does not hash to. Only SHA-256 is accepted, as everywhere in shoal;
//! blocks under other hashes are skipped (counted).

use std::io;

use bytes::{Buf, Bytes};
use cid::Cid;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};
use sha2::{Digest, Sha256};

use super::{MAX_BLOCKS_PER_MESSAGE, MAX_ENTRIES_PER_MESSAGE, MAX_MESSAGE_BYTES};
use crate::exchange::wire::SHA2_256;
use crate::exchange::MAX_BLOCK_SIZE;

/// The protocol name.
pub const PROTOCOL: &str = "/ipfs/bitswap/1.2.0";

/// Multicodec of dag-pb, the only codec of a CIDv0.
const DAG_PB: u64 = 0x70;

/// What a wantlist entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WantType {
    /// The block itself.
    Block,
    /// Only whether the peer has it (answered with a presence).
    Have,
}

/// One wantlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub cid: Cid,
    pub priority: i32,
    /// Withdraws an earlier want of `cid`.
    pub cancel: bool,
    pub want_type: WantType,
    /// Answer `DontHave` when the block is not here (else say nothing).
    pub send_dont_have: bool,
}

/// A block presence: the answer to a want-have, or to a want with `send_dont_have`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Have,
    DontHave,
}

/// A Bitswap message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub wantlist: Vec<Entry>,
    /// The wantlist replaces the sender's previous one (else it amends it).
    pub full: bool,
    /// Blocks, each under the CID computed from its bytes and prefix.
    pub blocks: Vec<(Cid, Bytes)>,
    pub presences: Vec<(Cid, Presence)>,
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated or malformed protobuf")]
    Malformed,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u64),
    #[error("invalid CID")]
    Cid,
    #[error("invalid CID prefix")]
    Prefix,
    #[error("more than {MAX_ENTRIES_PER_MESSAGE} wantlist entries or presences")]
    TooManyEntries,
    #[error("more than {MAX_BLOCKS_PER_MESSAGE} blocks")]
    TooManyBlocks,
    #[error("a block larger than {MAX_BLOCK_SIZE} bytes")]
    BlockTooLarge,
}

/// A decoded message and the number of its blocks skipped for an unsupported hash.
#[derive(Debug)]
pub struct Decoded {
    pub message: Message,
    pub skipped: usize,
}

/// One protobuf field: its number and value.
enum Field {
    Varint(u64),
    Bytes(Bytes),
}

/// Reads the fields of one protobuf message in order.
struct Fields(Bytes);

impl Fields {
    fn next(&mut self) -> Result<Option<(u64, Field)>, DecodeError> {
        if !self.0.has_remaining() {
            return Ok(None);
        }
        let key = decode_varint(&mut self.0).map_err(|_| DecodeError::Malformed)?;
        let (number, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Field::Varint(decode_varint(&mut self.0).map_err(|_| DecodeError::Malformed)?),
            2 => {
                let len = decode_varint(&mut self.0).map_err(|_| DecodeError::Malformed)?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Malformed)?;
                if len > self.0.remaining() {
                    return Err(DecodeError::Malformed);
                }
                Field::Bytes(self.0.split_to(len))
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if n > self.0.remaining() {
                    return Err(DecodeError::Malformed);
                }
                self.0.advance(n);
                return self.next();
            }
            other => return Err(DecodeError::WireType(other)),
        };
        Ok(Some((number, value)))
    }
}

fn bytes_field(v: Field) -> Result<Bytes, DecodeError> {
    match v {
        Field::Bytes(b) => Ok(b),
        Field::Varint(_) => Err(DecodeError::Malformed),
    }
}

fn varint_field(v: Field) -> Result<u64, DecodeError> {
    match v {
        Field::Varint(n) => Ok(n),
        Field::Bytes(_) => Err(DecodeError::Malformed),
    }
}

fn cid_field(v: Field) -> Result<Cid, DecodeError> {
    Cid::try_from(bytes_field(v)?.as_ref()).map_err(|_| DecodeError::Cid)
}

/// The prefix of a CID: version, codec, multihash code and digest length, as varints.
pub fn prefix(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    let version: u64 = match cid.version() {
        cid::Version::V0 => 0,
        cid::Version::V1 => 1,
    };
    for n in [
        version,
        cid.codec(),
        cid.hash().code(),
        u64::from(cid.hash().size()),
    ] {
        encode_varint(n, &mut out);
    }
    out
}

/// The CID of `data` under `prefix`; `Ok(None)` for a hash shoal does not accept.
fn cid_of(mut prefix: Bytes, data: &[u8]) -> Result<Option<Cid>, DecodeError> {
    let mut next = || decode_varint(&mut prefix).map_err(|_| DecodeError::Prefix);
    let (version, codec, code, len) = (next()?, next()?, next()?, next()?);
    if code != SHA2_256 || len != 32 {
        return Ok(None);
    }
    let digest = Sha256::digest(data);
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, &digest)
        .map_err(|_| DecodeError::Prefix)?;
    match version {
        0 if codec == DAG_PB => Cid::new_v0(mh).map(Some).map_err(|_| DecodeError::Prefix),
        1 => Ok(Some(Cid::new_v1(codec, mh))),
        _ => Err(DecodeError::Prefix),
    }
}

fn decode_entry(b: Bytes) -> Result<Entry, DecodeError> {
    let mut f = Fields(b);
    let mut cid = None;
    let mut entry = Entry {
        cid: Cid::default(),
        priority: 0,
        cancel: false,
        want_type: WantType::Block,
        send_dont_have: false,
    };
    while let Some((n, v)) = f.next()? {
        match n {
            1 => cid = Some(cid_field(v)?),
            // int32 on the wire: a negative one is sign-extended to 64 bits; truncation is
            // the protobuf rule.
            2 => entry.priority = varint_field(v)? as i32,
            3 => entry.cancel = varint_field(v)? != 0,
            4 => {
                entry.want_type = if varint_field(v)? == 1 {
                    WantType::Have
                } else {
                    WantType::Block
                }
            }
            5 => entry.send_dont_have = varint_field(v)? != 0,
            _ => {}
        }
    }
    entry.cid = cid.ok_or(DecodeError::Cid)?;
    Ok(entry)
}

impl Message {
    /// Decodes one message (without its length prefix), hashing every payload block.
    pub fn decode(bytes: Bytes) -> Result<Decoded, DecodeError> {
        let mut message = Message::default();
        let mut skipped = 0;
        let mut blocks = 0usize;
        let mut f = Fields(bytes);
        while let Some((n, v)) = f.next()? {
            match n {
                1 => {
                    let mut w = Fields(bytes_field(v)?);
                    while let Some((n, v)) = w.next()? {
                        match n {
                            1 => {
                                if message.wantlist.len() >= MAX_ENTRIES_PER_MESSAGE {
                                    return Err(DecodeError::TooManyEntries);
                                }
                                message.wantlist.push(decode_entry(bytes_field(v)?)?);
                            }
                            2 => message.full = varint_field(v)? != 0,
                            _ => {}
                        }
                    }
                }
                3 => {
                    blocks += 1;
                    if blocks > MAX_BLOCKS_PER_MESSAGE {
                        return Err(DecodeError::TooManyBlocks);
                    }
                    let mut b = Fields(bytes_field(v)?);
                    let (mut prefix, mut data) = (None, Bytes::new());
                    while let Some((n, v)) = b.next()? {
                        match n {
                            1 => prefix = Some(bytes_field(v)?),
                            2 => data = bytes_field(v)?,
                            _ => {}
                        }
                    }
                    if data.len() > MAX_BLOCK_SIZE {
                        return Err(DecodeError::BlockTooLarge);
                    }
                    match cid_of(prefix.ok_or(DecodeError::Prefix)?, &data)? {
                        Some(cid) => message.blocks.push((cid, data)),
                        None => skipped += 1,
                    }
                }
                4 => {
                    if message.presences.len() >= MAX_ENTRIES_PER_MESSAGE {
                        return Err(DecodeError::TooManyEntries);
                    }
                    let mut p = Fields(bytes_field(v)?);
                    let (mut cid, mut presence) = (None, Presence::Have);
                    while let Some((n, v)) = p.next()? {
                        match n {
                            1 => cid = Some(cid_field(v)?),
                            2 if varint_field(v)? == 1 => presence = Presence::DontHave,
                            _ => {}
                        }
                    }
                    message
                        .presences
                        .push((cid.ok_or(DecodeError::Cid)?, presence));
                }
                // 2: Bitswap 1.0.0 blocks (no prefix), 5: pendingBytes: not used.
                _ => {}
            }
        }
        Ok(Decoded { message, skipped })
    }

    /// The encoded message (without its length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_estimate());
        if !self.wantlist.is_empty() || self.full {
            let mut w = Vec::with_capacity(self.wantlist.len() * 48);
            for e in &self.wantlist {
                let mut m = Vec::with_capacity(48);
                put_bytes(&mut m, 1, &e.cid.to_bytes());
                put_varint(&mut m, 2, e.priority as i64 as u64);
                put_varint(&mut m, 3, u64::from(e.cancel));
                put_varint(&mut m, 4, u64::from(e.want_type == WantType::Have));
                put_varint(&mut m, 5, u64::from(e.send_dont_have));
                put_bytes(&mut w, 1, &m);
            }
            put_varint(&mut w, 2, u64::from(self.full));
            put_bytes(&mut out, 1, &w);
        }
        for (cid, data) in &self.blocks {
            let prefix = prefix(cid);
            let len = 1 + encoded_len_varint(prefix.len() as u64) + prefix.len();
            let len = len + 1 + encoded_len_varint(data.len() as u64) + data.len();
            encode_varint(3 << 3 | 2, &mut out);
            encode_varint(len as u64, &mut out);
            put_bytes(&mut out, 1, &prefix);
            put_bytes(&mut out, 2, data);
        }
        for (cid, presence) in &self.presences {
            let mut m = Vec::with_capacity(48);
            put_bytes(&mut m, 1, &cid.to_bytes());
            put_varint(&mut m, 2, u64::from(*presence == Presence::DontHave));
            put_bytes(&mut out, 4, &m);
        }
        out
    }

    /// Roughly the encoded size (exact enough to split messages under a size budget).
    pub fn encoded_len_estimate(&self) -> usize {
        let blocks: usize = self.blocks.iter().map(|(_, d)| d.len() + 24).sum();
        blocks + (self.wantlist.len() + self.presences.len()) * 56 + 8
    }

    pub fn is_empty(&self) -> bool {
        self.wantlist.is_empty()
            && !self.full
            && self.blocks.is_empty()
            && self.presences.is_empty()
    }
}

fn put_varint(out: &mut Vec<u8>, field: u64, value: u64) {
    encode_varint(field << 3, out);
    encode_varint(value, out);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, value: &[u8]) {
    encode_varint(field << 3 | 2, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one length-prefixed frame; `Ok(None)` at a clean end of the stream. A frame over
/// [`MAX_MESSAGE_BYTES`] is refused before anything is allocated for it.
pub async fn read_frame<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Option<Bytes>> {
    let mut len: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if io.read(&mut b).await? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        len |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_MESSAGE_BYTES {
                return Err(bad(format!(
                    "a message of {len} bytes (at most {MAX_MESSAGE_BYTES})"
                )));
            }
            let mut buf = vec![0u8; len];
            io.read_exact(&mut buf).await?;
            return Ok(Some(Bytes::from(buf)));
        }
    }
    Err(bad("a length prefix longer than 10 bytes".into()))
}

/// Writes one message with its length prefix; returns the bytes written.
pub async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    message: &Message,
) -> io::Result<usize> {
    let body = message.encode();
    let mut frame = Vec::with_capacity(body.len() + 10);
    encode_varint(body.len() as u64, &mut frame);
    frame.extend_from_slice(&body);
    io.write_all(&frame).await?;
    io.flush().await?;
    Ok(frame.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(data: &[u8]) -> Cid {
        let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, &Sha256::digest(data)).unwrap();
        Cid::new_v1(0x55, mh)
    }

    #[test]
    fn roundtrips_and_computes_cids() {
        let data = Bytes::from_static(b"hello bitswap");
        let cid = raw(&data);
        let v0 = Cid::new_v0(
            cid::multihash::Multihash::<64>::wrap(SHA2_256, &Sha256::digest(b"pb")).unwrap(),
        )
        .unwrap();
        let m = Message {
            wantlist: vec![Entry {
                cid,
                priority: -3,
                cancel: false,
                want_type: WantType::Have,
                send_dont_have: true,
            }],
            full: true,
            blocks: vec![(cid, data.clone()), (v0, Bytes::from_static(b"pb"))],
            presences: vec![(cid, Presence::DontHave), (cid, Presence::Have)],
        };
        let d = Message::decode(Bytes::from(m.encode())).unwrap();
        assert_eq!(d.message, m);
        assert_eq!(d.skipped, 0);
    }

    /// A block is filed under the CID its bytes hash to: a peer cannot pass one block off as
    /// another.
    #[test]
    fn block_cid_comes_from_its_bytes() {
        let asked = raw(b"asked for");
        let m = Message {
            blocks: vec![(asked, Bytes::from_static(b"something else"))],
            ..Message::default()
        };
        let d = Message::decode(Bytes::from(m.encode())).unwrap();
        assert_eq!(d.message.blocks[0].0, raw(b"something else"));
    }

    #[test]
    fn unsupported_hashes_are_skipped() {
        let mut body = Vec::new();
        let mut prefix = Vec::new();
        for n in [1u64, 0x55, 0x1e, 32] {
            encode_varint(n, &mut prefix); // blake3
        }
        let mut block = Vec::new();
        put_bytes(&mut block, 1, &prefix);
        put_bytes(&mut block, 2, b"x");
        put_bytes(&mut body, 3, &block);
        let d = Message::decode(Bytes::from(body)).unwrap();
        assert!(d.message.blocks.is_empty());
        assert_eq!(d.skipped, 1);
    }

    #[test]
    fn counts_are_capped_while_parsing() {
        let mut w = Vec::new();
        let mut e = Vec::new();
        put_bytes(&mut e, 1, &raw(b"a").to_bytes());
        for _ in 0..=MAX_ENTRIES_PER_MESSAGE {
            put_bytes(&mut w, 1, &e);
        }
        let mut body = Vec::new();
        put_bytes(&mut body, 1, &w);
        assert_eq!(
            Message::decode(Bytes::from(body)).unwrap_err(),
            DecodeError::TooManyEntries
        );
    }

    #[test]
    fn frames_roundtrip_and_oversized_frames_are_refused() {
        futures::executor::block_on(async {
            let m = Message {
                presences: vec![(raw(b"a"), Presence::Have)],
                ..Message::default()
            };
            let mut buf = Vec::new();
            write_frame(&mut buf, &m).await.unwrap();
            write_frame(&mut buf, &m).await.unwrap();
            let mut r = futures::io::Cursor::new(buf);
            for _ in 0..2 {
                let f = read_frame(&mut r).await.unwrap().unwrap();
                assert_eq!(Message::decode(f).unwrap().message, m);
            }
            assert!(read_frame(&mut r).await.unwrap().is_none());
            let mut huge = Vec::new();
            encode_varint(MAX_MESSAGE_BYTES as u64 + 1, &mut huge);
            let mut r = futures::io::Cursor::new(huge);
            assert!(read_frame(&mut r).await.is_err());
        });
    }

    proptest! {
        #[test]
        fn junk_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
            let _ = Message::decode(Bytes::from(bytes));
        }
    }
}
