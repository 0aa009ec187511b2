//! Packs: compressed frames followed by a self-describing header.
//!
//! A pack is a sequence of independent zstd frames, each holding one or more
//! consecutive chunks (see [`crate::frame`] for how chunks are grouped), so
//! any chunk can be read (or HTTP-range-fetched) by decompressing one frame,
//! followed by the pack index (one 56-byte entry per chunk: its frame and
//! its place inside the frame) and a 32-byte trailer. Byte layout in
//! docs/FORMAT.md, "Pack".

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use puzzle_chunker::ChunkId;

use crate::digest::{BlobDigest, HashingWriter};
use crate::error::{Error, Result};
use crate::layout::Store;

pub const PACK_MAGIC: &[u8; 8] = b"PZLPACK\0";
pub const PACK_VERSION: u32 = 2;
pub const ENTRY_LEN: usize = 56;
pub const TRAILER_LEN: usize = 32;
/// A pack is closed once its frames reach this many bytes.
pub const DEFAULT_PACK_TARGET: u64 = 32 << 20;
/// Largest raw chunk we accept from disk (fastcdc's maximum `max`).
pub const MAX_CHUNK: u32 = 16 << 20;
/// Largest raw frame (all its chunks) we accept from disk.
pub const MAX_FRAME_RAW: u32 = 16 << 20;
/// Largest frame a raw frame of `MAX_FRAME_RAW` bytes can compress to
/// (zstd's bound is below `n + n/128 + 1 KiB`); larger claims are corrupt,
/// not allocated.
pub const MAX_FRAME: u32 = MAX_FRAME_RAW + (MAX_FRAME_RAW >> 7) + (1 << 10);

/// Where a chunk lives: the frame holding it (`offset`, `clen` and
/// `frame_rlen`: where the frame starts in the pack, its compressed and its
/// raw length) and the chunk's bytes inside the frame's raw bytes
/// (`at`, `rlen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkLoc {
    pub pack: BlobDigest,
    pub offset: u64,
    pub clen: u32,
    pub frame_rlen: u32,
    pub at: u32,
    pub rlen: u32,
}

impl ChunkLoc {
    /// Checks the lengths against each other and the limits; says why not.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.frame_rlen > MAX_FRAME_RAW || self.clen > MAX_FRAME || self.clen == 0 {
            return Err(format!(
                "a frame of {} bytes compressed to {} is out of bounds",
                self.frame_rlen, self.clen
            ));
        }
        if self.rlen > MAX_CHUNK
            || u64::from(self.at) + u64::from(self.rlen) > u64::from(self.frame_rlen)
        {
            return Err(format!(
                "{} bytes at {} do not fit a frame of {} bytes",
                self.rlen, self.at, self.frame_rlen
            ));
        }
        Ok(())
    }

    /// The chunk's share of its frame's compressed bytes, in proportion to
    /// its raw bytes. The shares of the chunks of one frame sum to exactly
    /// the frame's `clen` (each rounds the frame's cumulative share down).
    pub fn stored_share(&self) -> u64 {
        let (c, f) = (u64::from(self.clen), u64::from(self.frame_rlen));
        if f == 0 {
            return if self.at == 0 { c } else { 0 };
        }
        let cum = |raw: u64| c * raw.min(f) / f;
        let at = u64::from(self.at);
        cum(at + u64::from(self.rlen)) - cum(at)
    }
}

/// One entry of a pack index: a chunk and its place (see [`ChunkLoc`]).
/// `frame_rlen` is not stored; the reader sums the frame's chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub id: ChunkId,
    pub offset: u64,
    pub clen: u32,
    pub frame_rlen: u32,
    pub at: u32,
    pub rlen: u32,
}

impl PackEntry {
    /// This entry as a location in `pack`.
    pub fn loc(&self, pack: BlobDigest) -> ChunkLoc {
        ChunkLoc {
            pack,
            offset: self.offset,
            clen: self.clen,
            frame_rlen: self.frame_rlen,
            at: self.at,
            rlen: self.rlen,
        }
    }
}

/// Pure pack-header bookkeeping: collects entries as frames are appended and
/// emits the index and trailer bytes.
#[derive(Debug, Default)]
pub struct PackBuilder {
    entries: Vec<PackEntry>,
    frames: u32,
    len: u64,
}

impl PackBuilder {
    /// Records a frame of `clen` bytes holding `chunks` (id, raw length) in
    /// this order; returns the frame's offset.
    pub fn add_frame(&mut self, clen: u32, chunks: &[(ChunkId, u32)]) -> u64 {
        let offset = self.len;
        let frame_rlen = chunks.iter().map(|c| c.1).sum();
        let mut at = 0;
        for &(id, rlen) in chunks {
            self.entries.push(PackEntry {
                id,
                offset,
                clen,
                frame_rlen,
                at,
                rlen,
            });
            at += rlen;
        }
        self.frames += 1;
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
            out.extend_from_slice(&e.at.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        out.extend_from_slice(PACK_MAGIC);
        out.extend_from_slice(&PACK_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.frames.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out
    }
}

/// What a pack trailer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Index entries, one per chunk.
    pub count: u32,
    /// Frames (each holding one or more chunks).
    pub frames: u32,
    /// Where the index starts: the bytes of frames.
    pub index_offset: u64,
}

/// Parses the trailer at the end of a pack of `pack_len` bytes, given the
/// last bytes of the pack (`tail`, at least the trailer).
pub fn parse_trailer(tail: &[u8], pack_len: u64) -> Result<Trailer> {
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
    let frames = u32::from_le_bytes(t[24..28].try_into().unwrap());
    let reserved = u32::from_le_bytes(t[28..32].try_into().unwrap());
    let expect = index_offset
        .checked_add(u64::from(count) * ENTRY_LEN as u64)
        .and_then(|v| v.checked_add(TRAILER_LEN as u64));
    if expect != Some(pack_len) {
        return Err(bad(format!(
            "{count} entries at offset {index_offset} do not fit a pack of {pack_len} bytes"
        )));
    }
    if frames > count || (frames == 0) != (count == 0) || reserved != 0 {
        return Err(bad(format!("{frames} frames for {count} entries")));
    }
    Ok(Trailer {
        count,
        frames,
        index_offset,
    })
}

/// Parses a pack's index (the bytes from `index_offset` up to the trailer)
/// and checks its layout: frames contiguous from offset 0 to `index_offset`,
/// the chunks of each frame contiguous from 0 inside it, lengths in bounds.
pub fn parse_index(index: &[u8], t: &Trailer) -> Result<Vec<PackEntry>> {
    let bad = |why: String| Error::Corrupt {
        what: "pack index".into(),
        why,
    };
    if index.len() != t.count as usize * ENTRY_LEN {
        return Err(bad(format!(
            "index is {} bytes, want {}",
            index.len(),
            t.count as usize * ENTRY_LEN
        )));
    }
    let mut out: Vec<PackEntry> = Vec::with_capacity(t.count as usize);
    // Start of the current frame in `out`, and where the next frame starts.
    let mut frame_start = 0usize;
    let mut frames = 0u32;
    let mut next = 0u64;
    let close = |out: &mut [PackEntry], from: usize| -> Result<()> {
        let Some(last) = out.last() else {
            return Ok(());
        };
        let raw = u64::from(last.at) + u64::from(last.rlen);
        if raw > u64::from(MAX_FRAME_RAW) {
            return Err(bad(format!(
                "frame at {} holds {raw} bytes, over the limit",
                last.offset
            )));
        }
        for e in &mut out[from..] {
            e.frame_rlen = raw as u32;
        }
        Ok(())
    };
    for (i, e) in index.chunks_exact(ENTRY_LEN).enumerate() {
        let entry = PackEntry {
            id: ChunkId::from_bytes(e[..32].try_into().unwrap()),
            offset: u64::from_le_bytes(e[32..40].try_into().unwrap()),
            clen: u32::from_le_bytes(e[40..44].try_into().unwrap()),
            rlen: u32::from_le_bytes(e[44..48].try_into().unwrap()),
            at: u32::from_le_bytes(e[48..52].try_into().unwrap()),
            frame_rlen: 0,
        };
        let reserved = u32::from_le_bytes(e[52..56].try_into().unwrap());
        let prev = out.last();
        let continues = prev.is_some_and(|p| {
            p.offset == entry.offset
                && p.clen == entry.clen
                && u64::from(p.at) + u64::from(p.rlen) == u64::from(entry.at)
        });
        let starts = entry.offset == next && entry.at == 0;
        if !(continues || starts)
            || reserved != 0
            || entry.rlen > MAX_CHUNK
            || entry.clen == 0
            || entry.clen > MAX_FRAME
        {
            return Err(bad(format!("entry {i} ({}) is out of place", entry.id)));
        }
        if !continues {
            close(&mut out, frame_start)?;
            frame_start = out.len();
            frames += 1;
            next = entry.offset + u64::from(entry.clen);
        }
        out.push(entry);
    }
    close(&mut out, frame_start)?;
    if next != t.index_offset {
        return Err(bad(format!(
            "frames end at {next}, index starts at {}",
            t.index_offset
        )));
    }
    if frames != t.frames {
        return Err(bad(format!(
            "{frames} frames, the trailer says {}",
            t.frames
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
    let t = parse_trailer(&trailer, pack_len)?;
    let mut index = vec![0u8; t.count as usize * ENTRY_LEN];
    file.read_exact_at(&mut index, t.index_offset).map_err(io)?;
    parse_index(&index, &t)
}

/// Decompresses a whole frame of `frame_rlen` raw bytes (the frame holding
/// chunk `id`, named in errors).
pub fn decompress_frame(
    frame: &[u8],
    frame_rlen: u32,
    id: &ChunkId,
    pack: &BlobDigest,
) -> Result<Vec<u8>> {
    let corrupt = |why: String| Error::CorruptChunk {
        id: *id,
        pack: pack.to_string(),
        why,
    };
    if frame_rlen > MAX_FRAME_RAW {
        return Err(corrupt(format!(
            "frame length {frame_rlen} is over the limit"
        )));
    }
    let mut data = vec![0u8; frame_rlen as usize];
    decompress_frame_into(frame, &mut data, id, pack)?;
    Ok(data)
}

/// Decompresses a frame into `out`, which it must fill exactly.
pub fn decompress_frame_into(
    frame: &[u8],
    out: &mut [u8],
    id: &ChunkId,
    pack: &BlobDigest,
) -> Result<()> {
    let corrupt = |why: String| Error::CorruptChunk {
        id: *id,
        pack: pack.to_string(),
        why,
    };
    let want = out.len();
    if want > MAX_FRAME_RAW as usize {
        return Err(corrupt(format!("frame length {want} is over the limit")));
    }
    // A frame longer than `out` is an error here, not a truncation.
    let n =
        zstd::bulk::decompress_to_buffer(frame, out).map_err(|e| corrupt(format!("zstd: {e}")))?;
    if n != want {
        return Err(corrupt(format!("frame gave {n} bytes, want {want}")));
    }
    Ok(())
}

/// The chunk `id` at `loc` in the decompressed frame `raw`, checked against
/// its BLAKE3 id.
pub fn chunk_in_frame<'r>(raw: &'r [u8], id: &ChunkId, loc: &ChunkLoc) -> Result<&'r [u8]> {
    let corrupt = |why: String| Error::CorruptChunk {
        id: *id,
        pack: loc.pack.to_string(),
        why,
    };
    let start = loc.at as usize;
    let data = start
        .checked_add(loc.rlen as usize)
        .and_then(|end| raw.get(start..end))
        .ok_or_else(|| {
            corrupt(format!(
                "{} bytes at {start} are outside a frame of {} bytes",
                loc.rlen,
                raw.len()
            ))
        })?;
    let actual = ChunkId::of(data);
    if actual != *id {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
}

/// [`ChunkLoc::check`] as the error reading chunk `id` gives: call it
/// before allocating the frame's buffers.
pub fn check_loc(id: &ChunkId, loc: &ChunkLoc) -> Result<()> {
    loc.check().map_err(|why| Error::CorruptChunk {
        id: *id,
        pack: loc.pack.to_string(),
        why,
    })
}

/// Reads the compressed bytes of the frame at `loc` into `frame` (`clen`
/// bytes long; see [`check_loc`]).
pub fn read_compressed_frame(
    file: &File,
    id: &ChunkId,
    loc: &ChunkLoc,
    frame: &mut [u8],
) -> Result<()> {
    file.read_exact_at(frame, loc.offset)
        .map_err(|e| Error::CorruptChunk {
            id: *id,
            pack: loc.pack.to_string(),
            why: format!("reading {} bytes at {}: {e}", loc.clen, loc.offset),
        })
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

    /// Appends a compressed frame holding `chunks` (id, raw length) in this
    /// order; returns its offset in the pack.
    pub fn append_frame(&mut self, frame: &[u8], chunks: &[(ChunkId, u32)]) -> Result<u64> {
        self.out.write_all(frame).map_err(|source| Error::Io {
            path: "tmp pack".into(),
            source,
        })?;
        Ok(self.builder.add_frame(frame.len() as u32, chunks))
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

#[cfg(test)]
mod tests;
