//! Frames: which chunks share a zstd frame, and reading chunks back out of a
//! decompressed frame.
//!
//! A build groups consecutive new chunks (in the order they are stored) into
//! frames of at most the store's frame target of raw bytes
//! ([`DEFAULT_FRAME_TARGET`], 1 MiB): compressed together, chunks find
//! matches in their neighbours, which per-chunk frames cannot (about 12%
//! smaller on real images at the same zstd level and CPU; benches/SIZE.md).
//! A chunk is never split: one larger than the target is a frame alone.
//! Grouping depends only on the sequence of chunks, so packs stay
//! deterministic.
//!
//! Reading a chunk decompresses its whole frame; [`Frame`] keeps the
//! decompressed bytes so the frame's other chunks are read without
//! decompressing again, and checks each chunk's BLAKE3 id the first time
//! it is handed out.

use std::collections::{HashSet, VecDeque};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use puzzle_chunker::ChunkId;

use crate::blobs::BlobRead;
use crate::digest::BlobDigest;
use crate::error::{Error, Result};
use crate::layout::Store;
use crate::pack::{self, ChunkLoc};

/// Raw bytes a frame collects before it is closed, by default.
pub const DEFAULT_FRAME_TARGET: u32 = 1 << 20;

/// Consecutive chunks to be compressed as one frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Group {
    /// The chunks, in order, with their raw lengths.
    pub chunks: Vec<(ChunkId, u32)>,
    /// Their bytes, concatenated.
    pub data: Vec<u8>,
}

/// Cuts a sequence of chunks into [`Group`]s: a group takes chunks while
/// its raw bytes stay within the target; the chunk that would pass it
/// starts the next group.
#[derive(Debug)]
pub struct Grouper {
    target: usize,
    open: Group,
}

impl Grouper {
    pub fn new(target: u32) -> Self {
        Grouper {
            target: target as usize,
            open: Group::default(),
        }
    }

    /// Adds a chunk; returns the group it closed, if any.
    pub fn push(&mut self, id: ChunkId, data: &[u8]) -> Option<Group> {
        let closed =
            if !self.open.chunks.is_empty() && self.open.data.len() + data.len() > self.target {
                Some(std::mem::take(&mut self.open))
            } else {
                None
            };
        if self.open.data.capacity() == 0 {
            self.open.data.reserve(self.target.max(data.len()));
        }
        self.open.chunks.push((id, data.len() as u32));
        self.open.data.extend_from_slice(data);
        closed
    }

    /// The last group, if it holds anything.
    pub fn finish(&mut self) -> Option<Group> {
        Some(std::mem::take(&mut self.open)).filter(|g| !g.chunks.is_empty())
    }
}

/// Buffers of at least this many bytes are anonymous mappings instead of
/// heap allocations (glibc's default mmap threshold).
const MAP_FROM: usize = 128 << 10;

/// Size of the recycled mappings: a frame of the default target, or the
/// compressed bytes of one (zstd's bound for 1 MiB is 1 MiB + 4 KiB).
const CLASS: usize = DEFAULT_FRAME_TARGET as usize + (64 << 10);

/// Idle mappings of [`CLASS`] kept for reuse, process-wide. Each is
/// resident (it was written), so this much memory stays held: 4.25 MiB.
const IDLE: usize = 4;

static POOL: Mutex<Vec<memmap2::MmapMut>> = Mutex::new(Vec::new());

/// The bytes of a frame, compressed or decompressed.
///
/// A mount keeps a cache of ~1 MiB frames that several threads allocate and
/// free in no particular order. From the heap, glibc serves them out of its
/// per-thread arenas once a freed mapping has raised its mmap threshold, and
/// the holes they leave stay resident: a daemon with a 16 MiB cache grew
/// past 110 MB (benches/RESULTS.md, "Mount daemon memory"). A mapping goes
/// back to the kernel whole when dropped; a fresh one costs page faults, so
/// a few idle ones of the common size are kept and reused ([`IDLE`]).
enum Raw {
    Heap(Vec<u8>),
    /// A mapping and how much of it is used.
    Mapped(Option<memmap2::MmapMut>, usize),
}

impl Raw {
    /// A buffer of `len` bytes whose contents the caller overwrites (a
    /// reused mapping still holds an earlier frame's bytes).
    fn for_len(len: usize) -> Raw {
        if len >= MAP_FROM {
            let size = if len <= CLASS { CLASS } else { len };
            let reused = if size == CLASS {
                POOL.lock().unwrap_or_else(|p| p.into_inner()).pop()
            } else {
                None
            };
            // populate: fault the pages in with one call; they are written next.
            let map = reused.or_else(|| {
                memmap2::MmapOptions::new()
                    .len(size)
                    .populate()
                    .map_anon()
                    .ok()
            });
            if let Some(map) = map {
                return Raw::Mapped(Some(map), len);
            }
        }
        Raw::Heap(vec![0; len])
    }

    /// Bytes of memory held, used or not.
    fn held(&self) -> usize {
        match self {
            Raw::Heap(v) => v.capacity(),
            Raw::Mapped(m, _) => m.as_ref().map_or(0, |m| m.len()),
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Raw::Mapped(m, _) = self {
            if m.as_ref().is_some_and(|m| m.len() == CLASS) {
                let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < IDLE {
                    pool.extend(m.take());
                }
            }
        }
    }
}

impl Deref for Raw {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Raw::Heap(v) => v,
            Raw::Mapped(m, len) => m.as_ref().map_or(&[], |m| &m[..*len]),
        }
    }
}

impl std::ops::DerefMut for Raw {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Raw::Heap(v) => v,
            Raw::Mapped(m, len) => m.as_mut().map_or(&mut [], |m| &mut m[..*len]),
        }
    }
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Raw::Heap(_) => "heap",
            Raw::Mapped(..) => "mapped",
        };
        write!(f, "{} bytes ({kind})", self.len())
    }
}

/// A decompressed frame. Each chunk handed out is checked against its id
/// once; later reads of it are served without hashing again.
#[derive(Debug)]
pub struct Frame {
    raw: Raw,
    /// Chunks already checked: (offset in the frame, length, id).
    checked: Mutex<HashSet<(u32, u32, ChunkId)>>,
}

impl Frame {
    /// A frame from its decompressed bytes.
    pub fn new(raw: Vec<u8>) -> Self {
        Frame {
            raw: Raw::Heap(raw),
            checked: Mutex::new(HashSet::new()),
        }
    }

    /// Reads (from `source`) and decompresses the frame holding chunk `id`
    /// at `loc`; a large frame is decompressed straight into a mapping of
    /// its own.
    pub fn read(source: &dyn BlobRead, id: &ChunkId, loc: &ChunkLoc) -> Result<Frame> {
        pack::check_loc(id, loc)?;
        // The compressed bytes, up to a few hundred KiB, are mapped too:
        // a heap buffer of that size fragments the arenas the same way.
        let mut compressed = Raw::for_len(loc.clen as usize);
        source
            .read_at(&loc.pack, loc.offset, &mut compressed)
            .map_err(|e| match e {
                // A pack that ends early: the chunk it should hold is lost.
                Error::CorruptBlob { why, .. } => Error::CorruptChunk {
                    id: *id,
                    pack: loc.pack.to_string(),
                    why: format!("reading {} bytes at {}: {why}", loc.clen, loc.offset),
                },
                e => e,
            })?;
        let mut raw = Raw::for_len(loc.frame_rlen as usize);
        pack::decompress_frame_into(&compressed, &mut raw, id, &loc.pack)?;
        Ok(Frame {
            raw,
            checked: Mutex::new(HashSet::new()),
        })
    }

    /// Whether the bytes are in a mapping (not the heap).
    pub fn is_mapped(&self) -> bool {
        matches!(self.raw, Raw::Mapped(..))
    }

    /// Bytes of memory the frame holds: at least [`Frame::len`], more when
    /// it sits in a recycled mapping of the common size.
    pub fn held(&self) -> usize {
        self.raw.held()
    }

    /// Raw bytes held.
    #[allow(clippy::len_without_is_empty)] // nothing asks: frames are read, not built
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// The bytes of chunk `id` at `loc` in this frame, checked against `id`
    /// unless they were before.
    pub fn chunk(&self, id: &ChunkId, loc: &ChunkLoc) -> Result<&[u8]> {
        let key = (loc.at, loc.rlen, *id);
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.contains(&key) {
            let start = loc.at as usize;
            return Ok(&self.raw[start..start + loc.rlen as usize]);
        }
        // Hash outside the lock: two readers may both check one chunk.
        drop(checked);
        let data = pack::chunk_in_frame(&self.raw, id, loc)?;
        checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        checked.insert(key);
        Ok(data)
    }

    /// Like [`Frame::chunk`], but the result keeps the frame alive.
    pub fn chunk_bytes(self: &Arc<Self>, id: &ChunkId, loc: &ChunkLoc) -> Result<ChunkBytes> {
        self.chunk(id, loc)?;
        Ok(ChunkBytes {
            frame: self.clone(),
            start: loc.at as usize,
            len: loc.rlen as usize,
        })
    }
}

/// A checked chunk inside a shared decompressed frame.
#[derive(Clone, Debug)]
pub struct ChunkBytes {
    frame: Arc<Frame>,
    start: usize,
    len: usize,
}

impl Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.frame.raw[self.start..self.start + self.len]
    }
}

impl ChunkBytes {
    /// The frame this chunk is part of.
    pub fn frame(&self) -> &Arc<Frame> {
        &self.frame
    }
}

/// Recently decompressed frames, for one reader going through an image
/// (extract, gc): neighbouring chunks are mostly in the same frame. Bounded
/// in raw bytes; the latest frame is always kept. The mount has its own
/// cache, shared between threads.
pub struct FrameReader<'a> {
    source: Arc<dyn BlobRead>,
    /// Readers made from a store borrow it in name, for callers to hold
    /// it while they read.
    store: std::marker::PhantomData<&'a Store>,
    /// Most recent first: (pack, frame offset), frame.
    recent: VecDeque<((BlobDigest, u64), Arc<Frame>)>,
    bytes: usize,
    capacity: usize,
}

impl<'a> FrameReader<'a> {
    /// Reads the frames of `store`'s packs.
    pub fn new(store: &'a Store, capacity: usize) -> Self {
        Self::with_source(Arc::new(store.blob_reader()), capacity)
    }

    /// Reads frames from `source`.
    pub fn with_source(source: Arc<dyn BlobRead>, capacity: usize) -> Self {
        FrameReader {
            source,
            store: std::marker::PhantomData,
            recent: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// The checked bytes of chunk `id` at `loc`.
    pub fn chunk(&mut self, id: &ChunkId, loc: &ChunkLoc) -> Result<ChunkBytes> {
        let key = (loc.pack, loc.offset);
        let frame = match self.recent.iter().position(|(k, _)| *k == key) {
            Some(pos) => {
                let hit = self.recent.remove(pos).expect("present");
                let f = hit.1.clone();
                self.recent.push_front(hit);
                f
            }
            None => {
                let f = Arc::new(Frame::read(self.source.as_ref(), id, loc)?);
                self.bytes += f.len();
                self.recent.push_front((key, f.clone()));
                while self.bytes > self.capacity && self.recent.len() > 1 {
                    let (_, old) = self.recent.pop_back().expect("more than one");
                    self.bytes -= old.len();
                }
                f
            }
        };
        frame.chunk_bytes(id, loc)
    }
}

/// Compresses one group as one zstd frame.
pub fn compress(cx: &mut zstd::bulk::Compressor<'_>, group: &Group) -> std::io::Result<Vec<u8>> {
    cx.compress(&group.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::PackBuilder;
    use proptest::prelude::*;

    fn chunk(n: usize, len: usize) -> (ChunkId, Vec<u8>) {
        let d: Vec<u8> = (0..len).map(|i| (i * 31 + n * 7) as u8).collect();
        (ChunkId::of(&d), d)
    }

    fn group_all(target: u32, lens: &[usize]) -> Vec<Group> {
        let mut g = Grouper::new(target);
        let mut out = Vec::new();
        for (n, &len) in lens.iter().enumerate() {
            let (id, d) = chunk(n, len);
            out.extend(g.push(id, &d));
        }
        out.extend(g.finish());
        out
    }

    #[test]
    fn groups_fill_up_to_the_target_and_big_chunks_stand_alone() {
        let sizes = |gs: &[Group]| -> Vec<Vec<u32>> {
            gs.iter()
                .map(|g| g.chunks.iter().map(|c| c.1).collect())
                .collect()
        };
        let gs = group_all(100, &[40, 60, 1, 99, 250, 10, 0, 90]);
        assert_eq!(
            sizes(&gs),
            vec![vec![40, 60], vec![1, 99], vec![250], vec![10, 0, 90]]
        );
        assert!(group_all(100, &[]).is_empty());
        for g in &gs {
            let total: u32 = g.chunks.iter().map(|c| c.1).sum();
            assert_eq!(total as usize, g.data.len());
        }
    }

    proptest! {
        /// Groups cover the chunks in order, each within the target unless
        /// it is one chunk, and no group could have taken the next chunk.
        #[test]
        fn grouping_covers_in_order_within_the_target(
            target in 1u32..5000,
            lens in proptest::collection::vec(0usize..3000, 0..40),
        ) {
            let gs = group_all(target, &lens);
            let got: Vec<u32> = gs.iter().flat_map(|g| g.chunks.iter().map(|c| c.1)).collect();
            let want: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
            prop_assert_eq!(got, want);
            for (i, g) in gs.iter().enumerate() {
                prop_assert!(!g.chunks.is_empty());
                prop_assert!(g.data.len() <= target as usize || g.chunks.len() == 1);
                if let Some(next) = gs.get(i + 1) {
                    prop_assert!(g.data.len() + next.chunks[0].1 as usize > target as usize);
                }
            }
        }

        /// Every chunk of a grouped frame reads back from the decompressed
        /// frame through the pack index's locations, and a chunk named with
        /// the wrong id is refused.
        #[test]
        fn chunks_read_back_from_their_frames(
            target in 1u32..20_000,
            lens in proptest::collection::vec(0usize..6000, 1..20),
        ) {
            let gs = group_all(target, &lens);
            let mut b = PackBuilder::default();
            let mut bytes = Vec::new();
            let mut cx = zstd::bulk::Compressor::new(3).unwrap();
            for g in &gs {
                let f = compress(&mut cx, g).unwrap();
                b.add_frame(f.len() as u32, &g.chunks);
                bytes.extend_from_slice(&f);
            }
            let pack = BlobDigest::of(b"pack");
            let mut n = 0;
            for e in b.entries() {
                let loc = e.loc(pack);
                prop_assert!(loc.check().is_ok());
                let f = &bytes[e.offset as usize..][..e.clen as usize];
                let raw = pack::decompress_frame(f, e.frame_rlen, &e.id, &pack).unwrap();
                let frame = Arc::new(Frame::new(raw));
                let (id, d) = chunk(n, lens[n]);
                prop_assert_eq!(e.id, id);
                prop_assert_eq!(frame.chunk(&id, &loc).unwrap(), &d[..]);
                // Again, from the checked set.
                prop_assert_eq!(&*frame.chunk_bytes(&id, &loc).unwrap(), &d[..]);
                let other = ChunkId::of(b"not this chunk");
                prop_assert!(frame.chunk(&other, &loc).is_err());
                n += 1;
            }
            prop_assert_eq!(n, lens.len());
        }
    }

    /// Frames read from a pack: a large one sits in a mapping of the common
    /// size (reused after drop, stale bytes and all) and reads back right;
    /// a small one is on the heap.
    #[test]
    fn read_frames_large_ones_mapped_and_reused() {
        use std::io::Write;
        let pack = BlobDigest::of(b"pack");
        let mut file: Vec<u8> = Vec::new();
        let mut b = PackBuilder::default();
        let mut cx = zstd::bulk::Compressor::new(3).unwrap();
        let groups = [
            vec![chunk(1, 700 << 10), chunk(2, 300 << 10)],
            vec![chunk(3, 5000)],
        ];
        for g in &groups {
            let mut gr = Grouper::new(DEFAULT_FRAME_TARGET);
            for (id, d) in g {
                assert!(gr.push(*id, d).is_none());
            }
            let group = gr.finish().unwrap();
            let f = compress(&mut cx, &group).unwrap();
            b.add_frame(f.len() as u32, &group.chunks);
            file.write_all(&f).unwrap();
        }
        // The common size holds a full frame, or its compressed bytes at
        // zstd's worst.
        assert!(CLASS >= zstd::zstd_safe::compress_bound(DEFAULT_FRAME_TARGET as usize));
        let entries = b.entries();
        let mut blobs = crate::blobs::MemBlobs::new();
        blobs.insert(pack, file);
        for round in 0..3 {
            for (e, (id, d)) in entries.iter().zip(groups.iter().flatten()) {
                let loc = e.loc(pack);
                let f = Arc::new(Frame::read(&blobs, id, &loc).unwrap());
                assert_eq!(&*f.chunk_bytes(id, &loc).unwrap(), &d[..], "round {round}");
                if loc.frame_rlen as usize >= MAP_FROM {
                    assert!(f.is_mapped());
                    assert_eq!(f.held(), CLASS);
                    assert_eq!(f.len(), 1000 << 10);
                } else {
                    assert!(!f.is_mapped());
                    assert_eq!(f.held(), 5000);
                }
            }
        }
    }

    /// A store, the chunks it holds with their locations, and its pack.
    type OneStore = (
        Store,
        Vec<(ChunkId, Vec<u8>)>,
        Vec<ChunkLoc>,
        std::path::PathBuf,
    );

    /// A store holding one pack of `n` frames, each one chunk of 1000
    /// bytes; returns the chunks, their locations and the pack's path.
    fn store_of_frames(dir: &std::path::Path, n: usize) -> OneStore {
        let store = Store::open_or_create(
            dir,
            &crate::StoreConfig::new(puzzle_chunker::ChunkParams::default(), 3),
        )
        .unwrap();
        let chunks: Vec<_> = (0..n).map(|i| chunk(i, 1000)).collect();
        let mut w = pack::PackWriter::new(&store).unwrap();
        let mut cx = zstd::bulk::Compressor::new(3).unwrap();
        for (id, d) in &chunks {
            let mut g = Grouper::new(DEFAULT_FRAME_TARGET);
            g.push(*id, d);
            w.append_frame(
                &compress(&mut cx, &g.finish().unwrap()).unwrap(),
                &[(*id, 1000)],
            )
            .unwrap();
        }
        let info = w.finish(&store).unwrap();
        let locs = info.entries.iter().map(|e| e.loc(info.digest)).collect();
        let path = store.blob_path(&info.digest);
        (store, chunks, locs, path)
    }

    /// Overwrites the pack's frames with zeros in place: a frame still
    /// held by a reader reads back, one read again from the file does not.
    fn damage(path: &std::path::Path, frames_len: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&vec![0; frames_len as usize], 0).unwrap();
    }

    /// The reader keeps the most recently used frames up to its capacity
    /// in raw bytes, and drops the least recently used beyond it; the
    /// latest frame is kept whatever the capacity.
    #[test]
    fn frame_reader_keeps_recent_frames_within_its_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let (store, chunks, locs, path) = store_of_frames(dir.path(), 5);
        let end = locs[4].offset + u64::from(locs[4].clen);
        let read =
            |r: &mut FrameReader, i: usize| r.chunk(&chunks[i].0, &locs[i]).map(|b| b.to_vec());
        let served = |r: &mut FrameReader, i: usize| match read(r, i) {
            Ok(b) => {
                assert_eq!(b, chunks[i].1);
                true
            }
            Err(e) => {
                assert!(matches!(e, crate::error::Error::CorruptChunk { .. }), "{e}");
                false
            }
        };

        // Room for exactly two frames: 0 and 1 stay, then 0 is used again
        // and 2 pushes out 1, the least recently used.
        let mut r = FrameReader::new(&store, 2000);
        for i in [0, 1, 0, 2] {
            assert!(served(&mut r, i));
        }
        damage(&path, end);
        assert!(served(&mut r, 0));
        assert!(served(&mut r, 2));
        assert!(!served(&mut r, 1));

        // Capacity 0 still keeps the latest frame.
        let (store, _, _, path) = store_of_frames(&dir.path().join("b"), 5);
        let mut r = FrameReader::new(&store, 0);
        assert!(served(&mut r, 3));
        damage(&path, end);
        assert!(served(&mut r, 3));
        assert!(!served(&mut r, 2));

        // Room for three: a reader that has dropped frames still counts
        // the bytes of the ones it holds.
        let (store, _, _, path) = store_of_frames(&dir.path().join("c"), 5);
        let mut r = FrameReader::new(&store, 3000);
        for i in 0..5 {
            assert!(served(&mut r, i));
        }
        damage(&path, end);
        for i in [2, 3, 4] {
            assert!(served(&mut r, i), "frame {i}");
        }
        assert!(!served(&mut r, 1));
        assert!(!served(&mut r, 0));
    }

    /// The largest chunk the chunker can cut (16 MiB) is stored as a frame
    /// of its own and reads back, also right after a frame of the common
    /// size was freed (its mapping, kept for reuse, is too small).
    #[test]
    fn a_chunk_of_the_largest_size_reads_back() {
        use std::io::Write;
        let mut b = PackBuilder::default();
        let mut file: Vec<u8> = Vec::new();
        let mut cx = zstd::bulk::Compressor::new(1).unwrap();
        let chunks = [chunk(8, 900 << 10), chunk(9, pack::MAX_CHUNK as usize)];
        for (id, d) in &chunks {
            let mut g = Grouper::new(DEFAULT_FRAME_TARGET);
            assert!(g.push(*id, d).is_none());
            let group = g.finish().unwrap();
            let f = compress(&mut cx, &group).unwrap();
            b.add_frame(f.len() as u32, &group.chunks);
            file.write_all(&f).unwrap();
        }
        let pack = BlobDigest::of(b"p");
        let mut blobs = crate::blobs::MemBlobs::new();
        blobs.insert(pack, file);
        let (small, loc) = (b.entries()[0].loc(pack), b.entries()[1].loc(pack));
        drop(Frame::read(&blobs, &chunks[0].0, &small).unwrap());
        let (id, d) = &chunks[1];
        assert_eq!(loc.frame_rlen, pack::MAX_FRAME_RAW);
        let frame = Arc::new(Frame::read(&blobs, id, &loc).unwrap());
        assert_eq!(frame.len(), d.len());
        assert!(*frame.chunk_bytes(id, &loc).unwrap() == d[..]);
    }

    /// Freed mappings of the common size are kept for reuse, at most
    /// [`IDLE`] of them: what a mount holds beyond its cache is bounded.
    #[test]
    fn freed_mappings_are_kept_up_to_the_limit() {
        POOL.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let raws: Vec<Raw> = (0..IDLE + 2).map(|_| Raw::for_len(CLASS)).collect();
        assert!(raws.iter().all(|r| r.held() == CLASS && r.len() == CLASS));
        drop(raws);
        // Other tests may take some back meanwhile, never add past the limit.
        let kept = POOL.lock().unwrap_or_else(|p| p.into_inner()).len();
        assert!(kept > 0 && kept <= IDLE, "{kept} kept");
        // A larger buffer is not one of them and is not kept.
        let big = Raw::for_len(CLASS + 1);
        assert_eq!(big.held(), CLASS + 1);
    }

    #[test]
    fn stored_shares_of_a_frame_sum_to_its_length() {
        let pack = BlobDigest::of(b"p");
        let mut b = PackBuilder::default();
        let chunks: Vec<(ChunkId, u32)> = [3u32, 0, 7, 1000, 5]
            .iter()
            .enumerate()
            .map(|(i, &l)| (ChunkId::of(&[i as u8]), l))
            .collect();
        b.add_frame(77, &chunks);
        b.add_frame(5, &chunks[..1]);
        let shares: Vec<u64> = b
            .entries()
            .iter()
            .map(|e| e.loc(pack).stored_share())
            .collect();
        assert_eq!(shares[..5].iter().sum::<u64>(), 77);
        assert_eq!(shares[5], 5);
        assert_eq!(shares[1], 0, "an empty chunk costs nothing");
        // A frame of one empty chunk still accounts for its bytes.
        let mut b = PackBuilder::default();
        b.add_frame(9, &chunks[1..2]);
        assert_eq!(b.entries()[0].loc(pack).stored_share(), 9);
    }
}
