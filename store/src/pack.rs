//! Packs: chunk frames followed by a self-describing header.
//!
//! A pack is a sequence of independent zstd frames, one per chunk, so any
//! chunk can be read (or HTTP-range-fetched) alone, followed by the pack
//! index (one 48-byte entry per chunk) and a 32-byte trailer. Byte layout in
//! docs/FORMAT.md, "Pack".

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use puzzle_chunker::ChunkId;

use crate::digest::{BlobDigest, HashingWriter};
use crate::error::{Error, Result};
use crate::layout::Store;

pub const PACK_MAGIC: &[u8; 8] = b"PZLPACK\0";
pub const PACK_VERSION: u32 = 1;
pub const ENTRY_LEN: usize = 48;
pub const TRAILER_LEN: usize = 32;
/// A pack is closed once its frames reach this many bytes.
pub const DEFAULT_PACK_TARGET: u64 = 32 << 20;
/// Largest raw chunk we accept from disk (fastcdc's maximum `max`).
pub const MAX_CHUNK: u32 = 16 << 20;
/// Largest frame a chunk of `MAX_CHUNK` bytes can compress to (zstd's bound
/// is below `n + n/128 + 1 KiB`); larger claims are corrupt, not allocated.
pub const MAX_FRAME: u32 = MAX_CHUNK + (MAX_CHUNK >> 7) + (1 << 10);

/// Where a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkLoc {
    pub pack: BlobDigest,
    pub offset: u64,
    pub clen: u32,
    pub rlen: u32,
}

/// One entry of a pack index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub clen: u32,
    pub rlen: u32,
}

/// Pure pack-header bookkeeping: collects entries as frames are appended and
/// emits the index and trailer bytes.
#[derive(Debug, Default)]
pub struct PackBuilder {
    entries: Vec<PackEntry>,
    len: u64,
}

impl PackBuilder {
    /// Records a frame of `clen` bytes for chunk `id`; returns its offset.
    pub fn add(&mut self, id: ChunkId, clen: u32, rlen: u32) -> u64 {
        let offset = self.len;
        self.entries.push(PackEntry {
            id,
            offset,
            clen,
            rlen,
        });
        self.len += u64::from(clen);
        offset
    }

    /// Bytes of frames so far.
    pub fn frames_len(&self) -> u64 {
        self.len
    }

    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index and trailer that end the pack.
    pub fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_LEN + TRAILER_LEN);
        for e in &self.entries {
            out.extend_from_slice(e.id.as_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.clen.to_le_bytes());
            out.extend_from_slice(&e.rlen.to_le_bytes());
        }
        out.extend_from_slice(PACK_MAGIC);
        out.extend_from_slice(&PACK_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        out
    }
}

/// Parses the trailer and index at the end of a pack of `pack_len` bytes,
/// given the last bytes of the pack (`tail`, at least the index + trailer).
pub fn parse_trailer(tail: &[u8], pack_len: u64) -> Result<(u32, u64)> {
    let bad = |why: String| Error::Corrupt {
        what: "pack trailer".into(),
        why,
    };
    if tail.len() < TRAILER_LEN || pack_len < TRAILER_LEN as u64 {
        return Err(bad(format!("pack of {pack_len} bytes is too short")));
    }
    let t = &tail[tail.len() - TRAILER_LEN..];
    if &t[..8] != PACK_MAGIC {
        return Err(bad("bad magic".into()));
    }
    let version = u32::from_le_bytes(t[8..12].try_into().unwrap());
    if version != PACK_VERSION {
        return Err(bad(format!("unsupported pack version {version}")));
    }
    let count = u32::from_le_bytes(t[12..16].try_into().unwrap());
    let index_offset = u64::from_le_bytes(t[16..24].try_into().unwrap());
    let expect = index_offset
        .checked_add(u64::from(count) * ENTRY_LEN as u64)
        .and_then(|v| v.checked_add(TRAILER_LEN as u64));
    if expect != Some(pack_len) {
        return Err(bad(format!(
            "{count} entries at offset {index_offset} do not fit a pack of {pack_len} bytes"
        )));
    }
    Ok((count, index_offset))
}

/// Parses a pack's index (the bytes from `index_offset` up to the trailer).
pub fn parse_index(index: &[u8], count: u32, index_offset: u64) -> Result<Vec<PackEntry>> {
    let bad = |why: String| Error::Corrupt {
        what: "pack index".into(),
        why,
    };
    if index.len() != count as usize * ENTRY_LEN {
        return Err(bad(format!(
            "index is {} bytes, want {}",
            index.len(),
            count as usize * ENTRY_LEN
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    let mut next = 0u64;
    for (i, e) in index.chunks_exact(ENTRY_LEN).enumerate() {
        let entry = PackEntry {
            id: ChunkId::from_bytes(e[..32].try_into().unwrap()),
            offset: u64::from_le_bytes(e[32..40].try_into().unwrap()),
            clen: u32::from_le_bytes(e[40..44].try_into().unwrap()),
            rlen: u32::from_le_bytes(e[44..48].try_into().unwrap()),
        };
        if entry.offset != next
            || entry.rlen > MAX_CHUNK
            || entry.clen == 0
            || entry.clen > MAX_FRAME
        {
            return Err(bad(format!("entry {i} ({}) is out of place", entry.id)));
        }
        next = entry.offset + u64::from(entry.clen);
        out.push(entry);
    }
    if next != index_offset {
        return Err(bad(format!(
            "frames end at {next}, index starts at {index_offset}"
        )));
    }
    Ok(out)
}

/// Reads the index of a pack file.
pub fn read_pack_index(file: &File, pack_len: u64) -> Result<Vec<PackEntry>> {
    let io = |source| Error::Io {
        path: "pack".into(),
        source,
    };
    let mut trailer = [0u8; TRAILER_LEN];
    if pack_len < TRAILER_LEN as u64 {
        return parse_trailer(&[], pack_len).map(|_| Vec::new());
    }
    file.read_exact_at(&mut trailer, pack_len - TRAILER_LEN as u64)
        .map_err(io)?;
    let (count, index_offset) = parse_trailer(&trailer, pack_len)?;
    let mut index = vec![0u8; count as usize * ENTRY_LEN];
    file.read_exact_at(&mut index, index_offset).map_err(io)?;
    parse_index(&index, count, index_offset)
}

/// Decompresses one frame and checks it is the chunk `id`.
pub fn decode_frame(frame: &[u8], id: &ChunkId, rlen: u32, pack: &BlobDigest) -> Result<Vec<u8>> {
    let corrupt = |why: String| Error::CorruptChunk {
        id: *id,
        pack: pack.to_string(),
        why,
    };
    if rlen > MAX_CHUNK {
        return Err(corrupt(format!("raw length {rlen} is over the limit")));
    }
    let data =
        zstd::bulk::decompress(frame, rlen as usize).map_err(|e| corrupt(format!("zstd: {e}")))?;
    if data.len() != rlen as usize {
        return Err(corrupt(format!("{} bytes, want {rlen}", data.len())));
    }
    let actual = ChunkId::of(&data);
    if actual != *id {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
}

/// Reads and verifies the chunk at `loc` from an open pack file.
pub fn read_chunk(file: &File, id: &ChunkId, loc: &ChunkLoc) -> Result<Vec<u8>> {
    if loc.clen > MAX_FRAME {
        return Err(Error::CorruptChunk {
            id: *id,
            pack: loc.pack.to_string(),
            why: format!("frame length {} is over the limit", loc.clen),
        });
    }
    let mut frame = vec![0u8; loc.clen as usize];
    file.read_exact_at(&mut frame, loc.offset)
        .map_err(|e| Error::CorruptChunk {
            id: *id,
            pack: loc.pack.to_string(),
            why: format!("reading {} bytes at {}: {e}", loc.clen, loc.offset),
        })?;
    decode_frame(&frame, id, loc.rlen, &loc.pack)
}

/// A pack being written to the store's `tmp/`.
pub struct PackWriter {
    out: HashingWriter<std::io::BufWriter<tempfile::NamedTempFile>>,
    builder: PackBuilder,
}

/// A finished, durable pack.
#[derive(Clone, Debug)]
pub struct PackInfo {
    pub digest: BlobDigest,
    pub size: u64,
    pub entries: Vec<PackEntry>,
}

impl PackWriter {
    pub fn new(store: &Store) -> Result<PackWriter> {
        let tmp = store.temp_file()?;
        Ok(PackWriter {
            out: HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, tmp)),
            builder: PackBuilder::default(),
        })
    }

    /// Appends a compressed frame; returns its offset in the pack.
    pub fn append(&mut self, id: ChunkId, frame: &[u8], rlen: u32) -> Result<u64> {
        self.out.write_all(frame).map_err(|source| Error::Io {
            path: "tmp pack".into(),
            source,
        })?;
        Ok(self.builder.add(id, frame.len() as u32, rlen))
    }

    pub fn frames_len(&self) -> u64 {
        self.builder.frames_len()
    }

    pub fn is_empty(&self) -> bool {
        self.builder.is_empty()
    }

    /// Writes the header, fsyncs, and renames the pack into `blobs/`.
    pub fn finish(mut self, store: &Store) -> Result<PackInfo> {
        let header = self.builder.header();
        let io = |source| Error::Io {
            path: store.tmp_dir(),
            source,
        };
        self.out.write_all(&header).map_err(io)?;
        let (buf, digest, size) = self.out.finish();
        let tmp = buf.into_inner().map_err(|e| io(e.into_error()))?;
        store.persist_blob(tmp, &digest)?;
        Ok(PackInfo {
            digest,
            size,
            entries: self.builder.entries,
        })
    }
}

/// Open pack files of one store, by digest.
pub struct PackFiles<'a> {
    store: &'a Store,
    open: std::collections::HashMap<BlobDigest, File>,
}

impl<'a> PackFiles<'a> {
    pub fn new(store: &'a Store) -> Self {
        PackFiles {
            store,
            open: Default::default(),
        }
    }

    pub fn read(&mut self, id: &ChunkId, loc: &ChunkLoc) -> Result<Vec<u8>> {
        if !self.open.contains_key(&loc.pack) {
            let path = self.store.blob_path(&loc.pack);
            let f = File::open(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::BlobMissing {
                        digest: loc.pack.to_string(),
                    }
                } else {
                    Error::Io { path, source: e }
                }
            })?;
            self.open.insert(loc.pack, f);
        }
        read_chunk(&self.open[&loc.pack], id, loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(data: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(data, 3).unwrap()
    }

    #[test]
    fn header_round_trip_and_checks() {
        let mut b = PackBuilder::default();
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let mut bytes = Vec::new();
        for c in &chunks {
            let f = frame(c);
            b.add(ChunkId::of(c), f.len() as u32, c.len() as u32);
            bytes.extend_from_slice(&f);
        }
        let frames_len = bytes.len() as u64;
        bytes.extend_from_slice(&b.header());
        let (count, idx) = parse_trailer(&bytes, bytes.len() as u64).unwrap();
        assert_eq!((count, idx), (5, frames_len));
        let entries =
            parse_index(&bytes[idx as usize..bytes.len() - TRAILER_LEN], count, idx).unwrap();
        assert_eq!(entries, b.entries());
        for (e, c) in entries.iter().zip(&chunks) {
            let f = &bytes[e.offset as usize..][..e.clen as usize];
            let pack = BlobDigest::of(b"x");
            assert_eq!(&decode_frame(f, &e.id, e.rlen, &pack).unwrap(), c);
        }
        // A flipped byte anywhere in the trailer is refused.
        for i in bytes.len() - TRAILER_LEN..bytes.len() - 8 {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            let r = parse_trailer(&bad, bad.len() as u64);
            assert!(r.is_err(), "flip at {i} accepted");
        }
        // An entry pointing elsewhere is refused.
        let mut bad = bytes.clone();
        bad[idx as usize + 32] ^= 1;
        assert!(parse_index(&bad[idx as usize..bad.len() - TRAILER_LEN], count, idx).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Fuzz stand-in (fuzz/fuzz_targets/pack_header.rs): a pack tail with
        /// overwritten bytes parses or is refused, never panics, and whatever
        /// parses is self-consistent.
        #[test]
        fn mutated_pack_headers_never_panic(
            n in 0usize..6,
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
            claimed_len in proptest::option::of(proptest::prelude::any::<u64>()),
        ) {
            let mut b = PackBuilder::default();
            let mut bytes = Vec::new();
            for i in 0..n {
                let c = vec![i as u8; 100 + i];
                let f = frame(&c);
                b.add(ChunkId::of(&c), f.len() as u32, c.len() as u32);
                bytes.extend_from_slice(&f);
            }
            bytes.extend_from_slice(&b.header());
            let len = bytes.len();
            for (at, v) in edits {
                bytes[at % len] = v;
            }
            let pack_len = claimed_len.unwrap_or(len as u64);
            if let Ok((count, idx)) = parse_trailer(&bytes, pack_len) {
                let start = usize::try_from(idx).ok().filter(|&s| s <= len - TRAILER_LEN);
                if let (Some(start), true) = (start, pack_len == len as u64) {
                    if let Ok(entries) = parse_index(&bytes[start..len - TRAILER_LEN], count, idx) {
                        let mut next = 0;
                        for e in &entries {
                            proptest::prop_assert_eq!(e.offset, next);
                            next += u64::from(e.clen);
                        }
                        proptest::prop_assert_eq!(next, idx);
                    }
                }
            }
        }
    }

    #[test]
    fn corrupt_frame_is_an_error_not_wrong_bytes() {
        let data = vec![7u8; 5000];
        let id = ChunkId::of(&data);
        let mut f = frame(&data);
        let pack = BlobDigest::of(b"p");
        let last = f.len() - 5;
        f[last] ^= 1;
        assert!(decode_frame(&f, &id, 5000, &pack).is_err());
        let other = ChunkId::of(b"other");
        assert!(matches!(
            decode_frame(&frame(&data), &other, 5000, &pack),
            Err(Error::CorruptChunk { .. })
        ));
        assert!(decode_frame(&frame(&data), &id, 4999, &pack).is_err());
    }
}
