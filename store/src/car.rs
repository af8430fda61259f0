//! CAR v1 files (the `ipfs dag export` / `ipfs dag import` format): a [`CarWriter`] and a
//! streaming [`CarReader`], for `shoal events dump/restore` and any other export of blocks.
//!
//! Layout: `varint(len) || header`, the header being dag-cbor `{"roots": [CID...], "version":
//! 1}`, then any number of sections `varint(len) || CID bytes || block bytes` where `len` covers
//! the CID and the block (varints are unsigned LEB128, as multiformats defines them).
//!
//! Invariants: the reader never holds more than one section in memory, never allocates more
//! than [`MAX_SECTION`] for one however large a length it reads, and checks every block
//! against its CID (a block whose hash does not match is an error, never returned); a CID the
//! store would not accept (see [`crate::cid::check_supported`]) is an error too. Writing is
//! streaming: the writer keeps nothing.

use crate::cid::{self, Cid};
use libipld::{cbor::DagCborCodec, codec::Codec, Ipld};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// Largest section a reader accepts (CID + block): above any block shoal writes (tree nodes
/// ≤ ~1 MiB, blob chunks ≤ 1 MiB, the exchange's 4 MiB block limit) with room for the CID.
pub const MAX_SECTION: usize = (4 << 20) + 128;
/// Largest header a reader accepts (a dump lists one root).
pub const MAX_HEADER: usize = 64 << 10;

/// Why a CAR file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    #[error("cannot read or write the CAR stream")]
    Io(#[from] io::Error),
    #[error("not a CAR v1 file: {0}")]
    Header(String),
    #[error("section {index} (at byte {at}) is malformed: {reason}")]
    Section { index: u64, at: u64, reason: String },
    #[error("section {index}: the block does not hash to its CID {cid}")]
    HashMismatch { index: u64, cid: Cid },
}

/// Writes `v` as an unsigned LEB128 varint.
fn write_varint(w: &mut impl Write, mut v: u64) -> io::Result<usize> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = byte;
            n += 1;
            break;
        }
        buf[n] = byte | 0x80;
        n += 1;
    }
    w.write_all(&buf[..n])?;
    Ok(n)
}

/// Reads an unsigned LEB128 varint; `Ok(None)` at a clean end of the stream.
fn read_varint(r: &mut impl Read) -> io::Result<Option<(u64, usize)>> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let mut byte = [0u8; 1];
        match r.read(&mut byte) {
            Ok(0) if i == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let b = byte[0];
        if i == 9 && b > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "varint overflows u64",
            ));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "varint longer than 10 bytes",
    ))
}

/// Writes a CAR v1 stream: the header at creation, then one section per [`CarWriter::block`].
pub struct CarWriter<W: Write> {
    out: W,
    bytes: u64,
}

impl<W: Write> CarWriter<W> {
    /// Writes the header naming `roots`.
    pub fn new(mut out: W, roots: &[Cid]) -> Result<Self, CarError> {
        let mut header = BTreeMap::new();
        let links = roots
            .iter()
            .map(|c| {
                cid::to_ipld(c)
                    .map(Ipld::Link)
                    .map_err(|e| CarError::Header(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        header.insert("roots".to_string(), Ipld::List(links));
        header.insert("version".to_string(), Ipld::Integer(1));
        let bytes = DagCborCodec
            .encode(&Ipld::StringMap(header))
            .map_err(|e| CarError::Header(e.to_string()))?;
        let n = write_varint(&mut out, bytes.len() as u64)?;
        out.write_all(&bytes)?;
        Ok(CarWriter {
            out,
            bytes: (n + bytes.len()) as u64,
        })
    }

    /// Appends one block (its CID is trusted: the caller read it from its own store).
    pub fn block(&mut self, cid: &Cid, data: &[u8]) -> Result<(), CarError> {
        let cid_bytes = cid.to_bytes();
        let len = (cid_bytes.len() + data.len()) as u64;
        let n = write_varint(&mut self.out, len)?;
        self.out.write_all(&cid_bytes)?;
        self.out.write_all(data)?;
        self.bytes += n as u64 + len;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> Result<W, CarError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a CAR v1 stream section by section (see the module invariants).
pub struct CarReader<R: Read> {
    input: R,
    roots: Vec<Cid>,
    index: u64,
    at: u64,
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, CarError> {
        let bad = |s: &str| CarError::Header(s.to_string());
        let (len, n) = read_varint(&mut input)?.ok_or_else(|| bad("the stream is empty"))?;
        if len == 0 || len > MAX_HEADER as u64 {
            return Err(CarError::Header(format!(
                "header length {len} (at most {MAX_HEADER} bytes)"
            )));
        }
        let mut header = vec![0u8; len as usize];
        input.read_exact(&mut header)?;
        crate::blocks::check_dag_cbor(&header).map_err(CarError::Header)?;
        let ipld: Ipld = DagCborCodec
            .decode(&header)
            .map_err(|e| CarError::Header(e.to_string()))?;
        let Ipld::StringMap(map) = ipld else {
            return Err(bad("the header is not a map"));
        };
        match map.get("version") {
            Some(Ipld::Integer(1)) => {}
            _ => return Err(bad("version is not 1")),
        }
        let Some(Ipld::List(list)) = map.get("roots") else {
            return Err(bad("roots is not a list"));
        };
        let mut roots = Vec::with_capacity(list.len());
        for r in list {
            let Ipld::Link(l) = r else {
                return Err(bad("a root is not a CID"));
            };
            roots.push(cid::from_ipld(l).map_err(|e| CarError::Header(e.to_string()))?);
        }
        Ok(CarReader {
            input,
            roots,
            index: 0,
            at: (n as u64) + len,
        })
    }

    /// The roots the header names.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// Bytes consumed so far.
    pub fn bytes(&self) -> u64 {
        self.at
    }

    /// The next block, hash-checked; `Ok(None)` at the end of the stream.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        let (index, at) = (self.index, self.at);
        let section = |reason: String| CarError::Section { index, at, reason };
        let Some((len, n)) = read_varint(&mut self.input)? else {
            return Ok(None);
        };
        if len == 0 || len > MAX_SECTION as u64 {
            return Err(section(format!(
                "length {len} (a section holds 1 to {MAX_SECTION} bytes)"
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.input.read_exact(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                section("the stream ends inside it".into())
            } else {
                CarError::Io(e)
            }
        })?;
        let mut cursor = io::Cursor::new(&buf[..]);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| section(format!("CID: {e}")))?;
        cid::check_supported(&cid).map_err(|e| section(e.to_string()))?;
        let start = cursor.position() as usize;
        let data = buf.split_off(start);
        if cid::cid_of(cid.codec(), &data) != cid {
            return Err(CarError::HashMismatch { index, cid });
        }
        self.index += 1;
        self.at += n as u64 + len;
        Ok(Some((cid, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cid::{cid_of, DAG_CBOR, RAW};

    #[test]
    fn round_trip_and_junk() {
        let a = (cid_of(RAW, b"hello"), b"hello".to_vec());
        let cbor = DagCborCodec
            .encode(&Ipld::List(vec![Ipld::Integer(1)]))
            .unwrap();
        let b = (cid_of(DAG_CBOR, &cbor), cbor);
        let mut w = CarWriter::new(Vec::new(), &[b.0]).unwrap();
        w.block(&a.0, &a.1).unwrap();
        w.block(&b.0, &b.1).unwrap();
        let written = w.bytes();
        let bytes = w.finish().unwrap();
        assert_eq!(written, bytes.len() as u64);
        let mut r = CarReader::new(&bytes[..]).unwrap();
        assert_eq!(r.roots(), &[b.0]);
        assert_eq!(r.next_block().unwrap(), Some(a.clone()));
        assert_eq!(r.next_block().unwrap(), Some(b.clone()));
        assert_eq!(r.next_block().unwrap(), None);
        assert_eq!(r.bytes(), bytes.len() as u64);

        // A flipped block byte: the hash check refuses it.
        let mut bad = bytes.clone();
        let pos = bytes.windows(5).position(|w| w == b"hello").unwrap();
        bad[pos] ^= 1;
        let mut r = CarReader::new(&bad[..]).unwrap();
        assert!(matches!(
            r.next_block(),
            Err(CarError::HashMismatch { index: 0, .. })
        ));

        // Every truncation and every single-byte change is an error or a clean read, never a
        // panic; a huge length is refused before allocating.
        for cut in 0..bytes.len() {
            if let Ok(mut r) = CarReader::new(&bytes[..cut]) {
                while let Ok(Some(_)) = r.next_block() {}
            }
        }
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0x80, 0xff] {
                let mut junk = bytes.clone();
                junk[i] = v;
                if let Ok(mut r) = CarReader::new(&junk[..]) {
                    while let Ok(Some(_)) = r.next_block() {}
                }
            }
        }
        let mut huge = Vec::new();
        write_varint(&mut huge, u64::MAX).unwrap();
        assert!(CarReader::new(&huge[..]).is_err());
    }
}
