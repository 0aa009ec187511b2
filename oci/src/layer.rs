//! Converting a layer tar into a [`Layer`]: metadata kept apart, file
//! contents chunked as one stream in sorted-path order.
//!
//! Two phases:
//! 1. [`spool`] parses the tar, normalizes paths, turns whiteouts into explicit
//!    deletions, and copies regular-file bytes to a temp file. The caller then
//!    checks the layer's digests ([`crate::source::LayerReader::finish`]).
//! 2. [`Spooled::chunk`] reads the spooled contents back in sorted-path order,
//!    cuts them with FastCDC, and hands every chunk to the store's writer.
//!
//! A tar whose entries already come in sorted-path order (as reproducible
//! image builders write them) spools its files in chunking order, so another
//! thread can chunk the spool while it grows ([`spool_live`],
//! [`LiveSpool::chunk`]) and phase 2 has nothing left to read. Either way the
//! writer keeps nothing unless the build finishes, so chunks stored before a
//! layer's digests were checked are dropped with the build if they fail.
//!
//! Entry order and tar-header noise (mtimes, uid names, PAX padding) never
//! change the chunk stream, only the metadata.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use puzzle_chunker::{ChunkId, ChunkParams, StreamChunker};
use puzzle_store::known::{KnownFiles, StoredChunks};
use puzzle_store::tree::{
    normalize_path, split_parent, Extent, FileDigest, Layer, LayerEntry, Meta, Node,
};
use puzzle_store::writer::ChunkWriter;
use tar::EntryType;

use crate::error::{Error, Result};

/// Longest xattr value or PAX record we keep (Linux's own xattr limit).
const MAX_XATTR_VALUE: usize = 64 << 10;

/// Counts from converting one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerCounts {
    /// Tar entries read.
    pub entries: u64,
    /// Regular files (after dropping duplicate paths).
    pub files: u64,
    /// Bytes of regular-file contents.
    pub file_bytes: u64,
    /// Bytes written to the spool: file contents, less files found stored
    /// ([`KnownFiles`]), plus any a later entry of the same path superseded.
    pub spooled_bytes: u64,
}

/// An entry waiting for its contents to be chunked.
enum Pending {
    Node {
        node: Node,
        meta: Meta,
    },
    File {
        source: Source,
        size: u64,
        digest: FileDigest,
        meta: Meta,
    },
    Link(LinkTo),
}

/// Where a file's bytes wait to be chunked.
enum Source {
    /// At this offset of the spool file.
    Spool(u64),
    /// Already stored: the extents of a converted layer's file with the same
    /// contents ([`KnownFiles`]). `at`: where it was spooled before it was
    /// found stored (the space is given back, see [`SpoolOut::release`]);
    /// `None` if it never was.
    Stored {
        at: Option<u64>,
        extents: Vec<Extent>,
    },
}

/// Where a path was defined in a layer's entries (indexes in tar order).
struct Seen {
    /// Its latest definition.
    latest: usize,
    /// Its latest definition as something other than a directory, which
    /// removes what the layer put under that path before.
    nondir: Option<usize>,
}

/// What a hard link names.
enum LinkTo {
    /// While parsing: the entry (index in tar order) its target named when
    /// the link was read.
    Entry(usize),
    /// After grouping: the path in this layer that carries the data.
    Path(Vec<u8>),
    /// A path this layer had not defined when the link was read: an entry
    /// of the lower layers.
    Lower(Vec<u8>),
}

/// Most bytes of tar headers and extension records (PAX `x`/`g`, GNU `L`/`K`)
/// read between two entries. The tar crate holds extension data in memory.
const HEADER_BUDGET: u64 = 8 << 20;

/// Reads through a shared byte budget: the tar crate reads extension records
/// whole into memory, so between entries only [`HEADER_BUDGET`] bytes may be
/// read; file contents are streamed with the budget lifted.
struct Budgeted<R> {
    inner: R,
    left: Rc<Cell<u64>>,
    /// Bytes read so far: the position in the tar stream.
    pos: u64,
    /// Where skipped bytes go (see the `Seek` impl), allocated on first use.
    skipped: Vec<u8>,
}

/// Forward skips only, by reading: with this the tar crate skips the padding
/// after each entry through one reused buffer instead of zeroing a 32 KiB
/// buffer of its own every time (2.4 % of an as-built build's CPU on a layer
/// of many small files). The tar crate only seeks forward from the current
/// position.
impl<R: Read> io::Seek for Budgeted<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let backwards = || io::Error::other("a layer stream only skips forward");
        let io::SeekFrom::Current(n) = pos else {
            return Err(backwards());
        };
        let want = u64::try_from(n).map_err(|_| backwards())?;
        let mut buf = std::mem::take(&mut self.skipped);
        buf.resize(buf.len().max(want.min(8192) as usize), 0);
        let skipped = copy_hashing(
            &mut self.by_ref().take(want),
            &mut io::sink(),
            &mut buf,
            None,
        );
        self.skipped = buf;
        if skipped? < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "unexpected EOF during skip",
            ));
        }
        Ok(self.pos)
    }
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(format!(
                "more than {} MiB of tar headers and extension records (PAX, GNU long names) \
                 before the next entry",
                HEADER_BUDGET >> 20
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Copy buffer size for file contents.
const COPY_BUF: usize = 256 << 10;

/// Largest file [`spool_live`] holds in memory, not spooled, until it knows
/// whether the store has its contents. Bigger files are spooled.
pub const HOLD_FILE: u64 = 64 << 20;

/// Copies `from` to `to` through `buf`, hashing what passes when `hasher` is
/// given. Returns the bytes copied.
fn copy_hashing(
    from: &mut dyn Read,
    to: &mut dyn Write,
    buf: &mut [u8],
    mut hasher: Option<&mut blake3::Hasher>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Spool writes are gathered into blocks of this size; a [`LiveSpool`] grows
/// by one block at a time.
const SPOOL_BUF: usize = 1 << 20;

/// Bytes of layer contents held in spool files at once, and the most held
/// so far: the temporary disk a build takes besides its new packs.
#[derive(Debug, Default)]
pub struct SpoolMeter {
    now: AtomicU64,
    peak: AtomicU64,
}

impl SpoolMeter {
    fn add(&self, n: u64) {
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn sub(&self, n: u64) {
        self.now.fetch_sub(n, Ordering::SeqCst);
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Bytes held now.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// A spool file and the bytes of it that take disk space (written, less
/// given back), counted in a [`SpoolMeter`] until the file goes.
struct SpoolFile {
    file: std::fs::File,
    held: u64,
    meter: Option<Arc<SpoolMeter>>,
}

impl SpoolFile {
    fn grew(&mut self, n: u64) {
        self.held += n;
        if let Some(m) = &self.meter {
            m.add(n);
        }
    }

    fn shrank(&mut self, n: u64) {
        let n = n.min(self.held);
        self.held -= n;
        if let Some(m) = &self.meter {
            m.sub(n);
        }
    }

    /// Gives back the disk space of bytes `off..off + len` by punching a hole
    /// (ext4, xfs, btrfs and tmpfs can). Where the file system cannot, the
    /// bytes stay, counted, until the spool goes.
    fn punch(&mut self, off: u64, len: u64) {
        use rustix::fs::{fallocate, FallocateFlags};
        if len > 0
            && fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                off,
                len,
            )
            .is_ok()
        {
            self.shrank(len);
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        self.shrank(self.held);
    }
}

/// The spool file behind a buffer; each block written is published to `live`.
struct SpoolOut<'a> {
    spool: SpoolFile,
    buf: Vec<u8>,
    /// Bytes written to the file.
    written: u64,
    live: Option<&'a LiveSpool>,
    /// Spooled ranges (offset, length) of files found stored, whose space is
    /// given back once nobody reads them again ([`SpoolOut::release`]).
    stored: Vec<(u64, u64)>,
}

impl SpoolOut<'_> {
    fn write_through(&mut self, data: &[u8]) -> io::Result<()> {
        self.spool.file.write_all(data)?;
        self.written += data.len() as u64;
        self.spool.grew(data.len() as u64);
        if let Some(live) = self.live {
            live.grew(self.written);
            live.wait_room(self.written);
        }
        // As the chunking side moves on, while a big file is written.
        self.release_read()
    }

    /// Where the next byte written goes.
    fn pos(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Notes that the spooled bytes `off..off + len` are a file found
    /// stored, and gives back what nobody reads again.
    fn release(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.stored.push((off, len));
        self.flush()?;
        self.release_read()
    }

    /// Gives back the space of the ranges of files found stored that nobody
    /// reads again, keeping the others. While the layer is chunked live, a
    /// range is done once the chunking side read past it. Ranges ending the
    /// spool are cut off (the next file is written there) where no reader
    /// can see it; others become holes. Call with nothing buffered.
    fn release_read(&mut self) -> io::Result<()> {
        if self.stored.is_empty() {
            return Ok(());
        }
        debug_assert!(self.buf.is_empty());
        let (read_to, gone_from) = match self.live {
            Some(live) => live.reader_at(),
            None => (u64::MAX, 0),
        };
        // From the end backwards, so neighbours ending the spool all go.
        let mut ranges = std::mem::take(&mut self.stored);
        ranges.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (off, len) in ranges {
            if off >= gone_from && off + len == self.written {
                self.spool.file.set_len(off)?;
                self.spool.file.seek(io::SeekFrom::Start(off))?;
                self.written = off;
                self.spool.shrank(len);
            } else if off >= gone_from || off + len <= read_to {
                self.spool.punch(off, len);
            } else {
                self.stored.push((off, len));
            }
        }
        Ok(())
    }
}

impl Write for SpoolOut<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > SPOOL_BUF {
            self.flush()?;
        }
        if data.len() >= SPOOL_BUF {
            self.write_through(data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let res = self.write_through(&buf);
            self.buf = buf;
            self.buf.clear();
            res?;
        }
        Ok(())
    }
}

/// A layer's spool while [`spool_live`] still writes it, for chunking it as
/// it grows ([`LiveSpool::chunk`]). Shared between the two threads.
#[derive(Default)]
pub struct LiveSpool {
    state: Mutex<LiveState>,
    changed: Condvar,
}

#[derive(Default)]
struct LiveState {
    /// The spool file, once created.
    file: Option<std::sync::Arc<std::fs::File>>,
    /// Bytes written to it so far.
    len: u64,
    /// `Some(true)`: every byte is in and came in chunking order;
    /// `Some(false)`: abandoned, the spool is not the chunk stream.
    end: Option<bool>,
    /// Bytes the chunking side has read.
    read: u64,
    /// The chunking side has stopped reading.
    done: bool,
    /// Counts the bytes the spool holds.
    meter: Option<Arc<SpoolMeter>>,
}

/// Most bytes the reading side of a [`LiveSpool`] gets ahead of the chunking
/// side: until they are chunked, spooled files the store holds cannot be
/// given back, so this bounds the spool of a layer read in order (to its new
/// files, the file being read, and this).
pub const LIVE_LAG: u64 = 32 << 20;

impl LiveSpool {
    pub fn new() -> LiveSpool {
        LiveSpool::default()
    }

    /// A live spool whose bytes on disk are counted in `meter`.
    pub fn metered(meter: Arc<SpoolMeter>) -> LiveSpool {
        let live = LiveSpool::default();
        live.update(|st| st.meter = Some(meter));
        live
    }

    fn meter(&self) -> Option<Arc<SpoolMeter>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .meter
            .clone()
    }

    /// Waits while the reading side, having written `written` bytes, is more
    /// than [`LIVE_LAG`] ahead of the chunking side (which is chunking).
    fn wait_room(&self, written: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.end.is_none() && !st.done && written.saturating_sub(st.read) > LIVE_LAG {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// How far the chunking side has read, and from where on it reads
    /// nothing ever again (0 once it stopped; where the spool was when it
    /// was abandoned; `u64::MAX` while it may read anything written).
    fn reader_at(&self) -> (u64, u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gone_from = if st.done {
            0
        } else if st.end == Some(false) {
            st.len
        } else {
            u64::MAX
        };
        (st.read, gone_from)
    }

    fn update(&self, f: impl FnOnce(&mut LiveState)) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut st);
        self.changed.notify_all();
    }

    fn start(&self, file: std::fs::File) {
        self.update(|st| st.file = Some(std::sync::Arc::new(file)));
    }

    /// Once the stream is abandoned it grows no more for the chunking side:
    /// what it chunks is the prefix published before, whatever the timing.
    fn grew(&self, len: u64) {
        self.update(|st| {
            if st.end.is_none() {
                st.len = len;
            }
        });
    }

    /// Ends the stream, complete or abandoned; only the first call counts.
    /// The reading side calls it however it stops, so the chunking side never
    /// waits for bytes that will not come.
    pub fn end(&self, complete: bool) {
        self.update(|st| {
            st.end.get_or_insert(complete);
        });
    }

    /// Chunks the spool while it grows, storing new chunks through `writer`.
    /// Returns the chunks in stream order once the spool is complete, or
    /// `None` once the reading side abandoned it; the caller then waits for
    /// the [`Spooled`] layer and chunks it the usual way. What was stored by
    /// then comes from the in-order prefix the reading side published before
    /// it gave up, so it is the same whatever the threads' timing (packs stay
    /// deterministic); and nothing is stored before [`HOLD_NEW`] bytes of new
    /// chunks are cut, so a layer with little new content abandoned early or
    /// late stores nothing twice. (One with more, abandoned after that, leaves
    /// a few chunks unused around where its order broke.)
    /// `progress` is called with the bytes chunked so far.
    pub fn chunk(
        &self,
        params: ChunkParams,
        writer: &mut ChunkWriter<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Option<Vec<(ChunkId, u32)>>> {
        // However this returns, the reading side stops waiting for it and
        // may give back what it spooled.
        struct Done<'a>(&'a LiveSpool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.update(|st| st.done = true);
            }
        }
        let _done = Done(self);
        let mut tail = LiveTail {
            live: self,
            pos: 0,
            abandoned: false,
        };
        // Chunks are held back, not stored, until the layer is complete or
        // HOLD_NEW bytes of new chunks are held: a layer abandoned by then
        // leaves nothing behind (no unused chunk, no count in the writer's
        // stats), which covers every layer with no new contents (a rebuild,
        // an as-built twin). Past that the chunks are stored as they come,
        // so compression keeps pace with reading.
        let mut held: Vec<(ChunkId, u32, Option<Vec<u8>>)> = Vec::new();
        let mut held_new = 0u64;
        let mut holding = true;
        let release = |held: &mut Vec<(ChunkId, u32, Option<Vec<u8>>)>,
                       writer: &mut ChunkWriter<'_>|
         -> Result<()> {
            for (id, len, data) in held.drain(..) {
                match data {
                    Some(data) => {
                        writer.put(id, data)?;
                    }
                    None => writer.note_reused(u64::from(len)),
                }
            }
            Ok(())
        };
        let result = chunk_stream(&mut tail, params, progress, &mut |id, data| {
            if !holding {
                writer.put(id, data)?;
                return Ok(());
            }
            let len = data.len() as u32;
            if writer.has(&id)? {
                held.push((id, len, None));
            } else {
                held_new += u64::from(len);
                held.push((id, len, Some(data)));
            }
            if held_new >= HOLD_NEW {
                holding = false;
                release(&mut held, writer)?;
            }
            Ok(())
        });
        match result {
            Ok(chunks) => {
                release(&mut held, writer)?;
                Ok(Some(chunks))
            }
            Err(_) if tail.abandoned => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// New chunk bytes [`LiveSpool::chunk`] holds back before it stores them
/// (and any after them) ahead of knowing the whole layer is in order.
const HOLD_NEW: u64 = 16 << 20;

/// Reads a [`LiveSpool`] from the start, waiting for it to grow.
struct LiveTail<'a> {
    live: &'a LiveSpool,
    pos: u64,
    abandoned: bool,
}

impl Read for LiveTail<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (file, len) = {
            let mut st = self.live.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                // Bytes published before the stream was abandoned are still
                // served (see `spool_to`).
                if st.len > self.pos {
                    break;
                }
                match st.end {
                    Some(true) => return Ok(0),
                    Some(false) => {
                        self.abandoned = true;
                        return Err(io::Error::other("the layer is not in sorted order"));
                    }
                    None => {}
                }
                st = self
                    .live
                    .changed
                    .wait(st)
                    .unwrap_or_else(|e| e.into_inner());
            }
            (
                st.file.clone().expect("a spool with bytes has a file"),
                st.len,
            )
        };
        let want = buf.len().min((len - self.pos) as usize);
        let n = file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool file is short",
            ));
        }
        self.pos += n as u64;
        let pos = self.pos;
        self.live.update(|st| st.read = pos);
        Ok(n)
    }
}

/// Cuts `stream` into chunks, handing each to `store`; the chunks in stream
/// order, as (id, length).
fn chunk_stream(
    stream: &mut dyn Read,
    params: ChunkParams,
    progress: &mut dyn FnMut(u64),
    store: &mut dyn FnMut(ChunkId, Vec<u8>) -> Result<()>,
) -> Result<Vec<(ChunkId, u32)>> {
    let mut chunks = Vec::new();
    let mut done = 0u64;
    for chunk in StreamChunker::new(stream, params) {
        let chunk = chunk.map_err(|e| match Error::from_io(e) {
            Ok(inner) => inner,
            Err(source) => Error::Io {
                path: "layer spool file".into(),
                source,
            },
        })?;
        let id = ChunkId::of(&chunk.data);
        let len = chunk.data.len();
        store(id, chunk.data)?;
        chunks.push((id, len as u32));
        done += len as u64;
        progress(done);
    }
    Ok(chunks)
}

/// A parsed layer whose file contents sit in a temp file.
pub struct Spooled {
    spool: SpoolFile,
    /// Bytes in the spool file (superseded files included).
    spool_len: u64,
    /// Ranges of files found stored whose space is given back once the
    /// chunking side is done with them ([`Spooled::chunk`]).
    unreleased: Vec<(u64, u64)>,
    entries: Vec<(Vec<u8>, Pending)>,
    whiteouts: Vec<Vec<u8>>,
    opaques: Vec<Vec<u8>>,
    pub counts: LayerCounts,
}

fn entry_err(path: &[u8], why: impl Into<String>) -> Error {
    Error::Entry {
        entry: puzzle_store::error::show_path(path),
        why: why.into(),
    }
}

/// Phase 1: parse the tar stream `tar`, spooling file contents into a temp
/// file in `tmp_dir`. `progress` is called with the bytes of file content
/// read so far.
pub fn spool(tar: &mut dyn Read, tmp_dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<Spooled> {
    spool_to(tar, tmp_dir, progress, None, None)
}

/// [`spool`], publishing the spool to `live` as it grows, for another thread
/// to chunk it meanwhile ([`LiveSpool::chunk`]). `live` is ended when this
/// returns: complete if every entry came in sorted-path order, abandoned at
/// the first one that did not (or on an error).
///
/// Once abandoned, a file whose contents `known` finds stored is not
/// spooled: files of a size `known` may have are held in memory (up to
/// [`HOLD_FILE`] bytes) until their digest is known.
pub fn spool_live(
    tar: &mut dyn Read,
    tmp_dir: &Path,
    progress: &mut dyn FnMut(u64),
    live: &LiveSpool,
    known: Option<&mut KnownFiles<'_>>,
) -> Result<Spooled> {
    // Abandoned on every early return; ending a second time changes nothing.
    struct Abandon<'a>(&'a LiveSpool);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            self.0.end(false);
        }
    }
    let _abandon = Abandon(live);
    let spooled = spool_to(tar, tmp_dir, progress, Some(live), known)?;
    live.end(true);
    Ok(spooled)
}

fn spool_to(
    tar: &mut dyn Read,
    tmp_dir: &Path,
    progress: &mut dyn FnMut(u64),
    live: Option<&LiveSpool>,
    mut known: Option<&mut KnownFiles<'_>>,
) -> Result<Spooled> {
    let spool_err = |source| Error::Io {
        path: tmp_dir.to_path_buf(),
        source,
    };
    let spool_file = tempfile::tempfile_in(tmp_dir).map_err(spool_err)?;
    if let Some(live) = live {
        live.start(spool_file.try_clone().map_err(spool_err)?);
    }
    let mut out = SpoolOut {
        spool: SpoolFile {
            file: spool_file,
            held: 0,
            meter: live.and_then(LiveSpool::meter),
        },
        buf: Vec::with_capacity(SPOOL_BUF),
        written: 0,
        live,
        stored: Vec::new(),
    };
    // The live spool while every entry so far came in sorted-path order, and
    // the last one's path.
    let mut watch = live;
    let mut sorted_up_to: Option<Vec<u8>> = None;
    let mut buf = vec![0u8; COPY_BUF];
    // A file's bytes while it may turn out stored.
    let mut held: Vec<u8> = Vec::new();
    // Converted layers `known` had learned when files were last looked up.
    let mut learned = 0;
    // File bytes read, and written to the spool.
    let (mut read, mut spooled) = (0u64, 0u64);
    // In tar order, every definition kept (later ones win at the end).
    let mut entries: Vec<(Vec<u8>, Pending)> = Vec::new();
    // Path -> its definitions so far in `entries`.
    let mut seen: HashMap<Vec<u8>, Seen> = HashMap::new();
    let mut whiteouts = Vec::new();
    let mut opaques = Vec::new();
    let mut counts = LayerCounts::default();
    let tar_err = |e: io::Error, at: &str| match Error::from_io(e) {
        Ok(inner) => inner,
        Err(e) => Error::Tar {
            at: at.to_string(),
            source: e,
        },
    };

    let budget = Rc::new(Cell::new(HEADER_BUDGET));
    let mut archive = tar::Archive::new(Budgeted {
        inner: tar,
        left: budget.clone(),
        pos: 0,
        skipped: Vec::new(),
    });
    let mut iter = archive
        .entries_with_seek()
        .map_err(|e| tar_err(e, "the start of the layer"))?;
    // The last entry's raw path, shown only in errors.
    let mut last: Option<Vec<u8>> = None;
    let show_last = |last: &Option<Vec<u8>>| match last {
        Some(p) => puzzle_store::error::show_path(p),
        None => "the start of the layer".to_string(),
    };
    loop {
        budget.set(HEADER_BUDGET);
        let Some(entry) = iter.next() else { break };
        let mut entry =
            entry.map_err(|e| tar_err(e, &format!("the entry after {}", show_last(&last))))?;
        // Entry data is streamed, never held: no budget while reading it.
        budget.set(u64::MAX);
        counts.entries += 1;
        let raw_path: &[u8] = last.insert(entry.path_bytes().into_owned());
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let path = normalize_path(raw_path).map_err(|why| entry_err(raw_path, why))?;
        let meta = entry_meta(&mut entry, &path)?;

        // Whiteouts become explicit deletions.
        let (parent, name) = split_parent(&path);
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                opaques.push(parent.to_vec());
            } else if hidden.starts_with(b".wh.") || hidden.is_empty() {
                // Other aufs bookkeeping (.wh..wh.plnk, ...): not content.
            } else {
                let mut p = parent.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(hidden);
                whiteouts.push(p);
            }
            continue;
        }
        if let Some(live) = watch {
            if sorted_up_to.as_ref().is_some_and(|prev| path <= *prev) {
                // Everything before this entry is published first, so the
                // live side always cuts the same in-order prefix, whatever
                // the threads' timing: packs stay deterministic.
                watch = None;
                out.flush().map_err(spool_err)?;
                live.end(false);
            } else {
                sorted_up_to = Some(path.clone());
            }
        }

        let pending = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                let offset = out.pos();
                let mut hasher = blake3::Hasher::new();
                // The live chunker reads every file from the spool.
                let hold = watch.is_none()
                    && size <= HOLD_FILE
                    && known.as_ref().is_some_and(|k| k.may_have(size));
                let to: &mut dyn Write = if hold {
                    held.clear();
                    held.reserve(size as usize);
                    &mut held
                } else {
                    &mut out
                };
                let n = copy_hashing(&mut entry, to, &mut buf, Some(&mut hasher)).map_err(|e| {
                    match Error::from_io(e) {
                        Ok(inner) => inner,
                        // Writing the spool failed, not reading the layer:
                        // kept as an I/O error so a full disk is recognised.
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                            ) =>
                        {
                            spool_err(e)
                        }
                        Err(e) => entry_err(&path, format!("reading contents: {e}")),
                    }
                })?;
                if n != size {
                    return Err(entry_err(
                        &path,
                        format!(
                            "truncated: the header says {size} bytes, the layer ends after {n}"
                        ),
                    ));
                }
                let digest = FileDigest::from_bytes(*hasher.finalize().as_bytes());
                read += n;
                progress(read);
                // Looked up also when spooled already: a sampled file makes
                // its layer's files known for the rest of this one, and a
                // spooled file found stored gives its space back.
                let stored = match known.as_deref_mut() {
                    Some(k) => k.find(size, &digest)?.map(<[Extent]>::to_vec),
                    None => None,
                };
                let source = match stored {
                    Some(extents) if hold => Source::Stored { at: None, extents },
                    stored => {
                        if hold {
                            out.write_all(&held).map_err(spool_err)?;
                        }
                        spooled += n;
                        match stored {
                            Some(extents) => {
                                out.release(offset, n).map_err(spool_err)?;
                                Source::Stored {
                                    at: Some(offset),
                                    extents,
                                }
                            }
                            None => Source::Spool(offset),
                        }
                    }
                };
                Pending::File {
                    source,
                    size,
                    digest,
                    meta,
                }
            }
            EntryType::Directory => Pending::Node {
                node: Node::Dir,
                meta,
            },
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "symlink without a target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(entry_err(&path, "empty or invalid symlink target"));
                }
                Pending::Node {
                    node: Node::Symlink(target.into_owned()),
                    meta,
                }
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "hard link without a target"))?;
                let target = normalize_path(&target).map_err(|why| {
                    entry_err(
                        &path,
                        format!(
                            "hard link target {}: {why}",
                            String::from_utf8_lossy(&target).escape_debug()
                        ),
                    )
                })?;
                if target.is_empty() {
                    return Err(entry_err(&path, "hard link to the root"));
                }
                // The target is what its path names at this point of the tar.
                match seen.get(&target).map(|d| (d.latest, &entries[d.latest].1)) {
                    None => Pending::Link(LinkTo::Lower(target)),
                    Some((
                        _,
                        Pending::Node {
                            node: Node::Dir, ..
                        },
                    )) => {
                        return Err(entry_err(
                            &path,
                            format!(
                                "hard link target {} is a directory",
                                puzzle_store::error::show_path(&target)
                            ),
                        ))
                    }
                    Some((_, Pending::Link(LinkTo::Entry(j)))) => Pending::Link(LinkTo::Entry(*j)),
                    Some((_, Pending::Link(LinkTo::Lower(t)))) => {
                        Pending::Link(LinkTo::Lower(t.clone()))
                    }
                    Some((_, Pending::Link(LinkTo::Path(_)))) => {
                        unreachable!("paths are assigned after parsing")
                    }
                    Some((i, _)) => Pending::Link(LinkTo::Entry(i)),
                }
            }
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let node = if kind == EntryType::Char {
                    Node::CharDev { major, minor }
                } else {
                    Node::BlockDev { major, minor }
                };
                Pending::Node { node, meta }
            }
            EntryType::Fifo => Pending::Node {
                node: Node::Fifo,
                meta,
            },
            other => {
                return Err(entry_err(
                    &path,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ))
            }
        };
        // Skip whatever data the entry has left without holding it.
        copy_hashing(&mut entry, &mut io::sink(), &mut buf, None)
            .map_err(|e| tar_err(e, &format!("the entry {}", show_last(&last))))?;
        let nondir = !matches!(
            pending,
            Pending::Node {
                node: Node::Dir,
                ..
            }
        );
        let at = entries.len();
        match seen.get_mut(&path) {
            Some(d) => {
                d.latest = at;
                if nondir {
                    d.nondir = Some(at);
                }
            }
            None => {
                let nondir = nondir.then_some(at);
                seen.insert(path.clone(), Seen { latest: at, nondir });
            }
        }
        entries.push((path, pending));
        if let Some(k) = known.as_deref() {
            // A layer learned just now may hold files spooled before.
            if k.learned() > learned {
                learned = k.learned();
                for (off, len) in found_stored(&mut entries, k) {
                    out.release(off, len).map_err(spool_err)?;
                }
            }
        }
    }
    drop(archive);
    out.flush().map_err(spool_err)?;
    out.release_read().map_err(spool_err)?;
    let SpoolOut {
        spool,
        written: spool_len,
        stored: unreleased,
        ..
    } = out;

    counts.spooled_bytes = spooled;
    let entries = settle_links(entries, &seen);
    for (_, p) in &entries {
        if let Pending::File { size, .. } = p {
            counts.files += 1;
            counts.file_bytes += size;
        }
    }
    whiteouts.sort();
    whiteouts.dedup();
    opaques.sort();
    opaques.dedup();
    Ok(Spooled {
        spool,
        spool_len,
        unreleased,
        entries,
        whiteouts,
        opaques,
        counts,
    })
}

/// Marks the spooled files of `entries` that `known` holds as stored;
/// returns their spool ranges (offset, length).
fn found_stored(entries: &mut [(Vec<u8>, Pending)], known: &KnownFiles<'_>) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    for (_, p) in entries {
        if let Pending::File {
            source: source @ Source::Spool(_),
            size,
            digest,
            ..
        } = p
        {
            if let (Source::Spool(off), Some(extents)) = (&source, known.lookup(*size, digest)) {
                found.push((*off, *size));
                *source = Source::Stored {
                    at: Some(*off),
                    extents: extents.to_vec(),
                };
            }
        }
    }
    found
}

/// Keeps the last definition of each path, sorted by path, and settles hard
/// links within the layer. An entry is also dropped when a later entry of
/// the layer defined one of its ancestors as a non-directory (tar order: `d/`,
/// `d/x`, then a file `d` leaves only the file).
///
/// A link names the entry its target path held when the link was read. When
/// that entry was superseded later at its own path, its data lives on under
/// the link names. Of each link group the smallest path carries the data
/// and the others link to it: which name a tar writer gives the data to
/// depends on its directory walk, and the chunk stream must not.
fn settle_links(
    entries: Vec<(Vec<u8>, Pending)>,
    seen: &HashMap<Vec<u8>, Seen>,
) -> Vec<(Vec<u8>, Pending)> {
    let alive = |i: usize| {
        let path = &entries[i].0;
        seen.get(path).map(|d| d.latest) == Some(i)
            && !path.iter().enumerate().any(|(k, &b)| {
                b == b'/'
                    && seen
                        .get(&path[..k])
                        .and_then(|d| d.nondir)
                        .is_some_and(|n| n > i)
            })
    };
    // Data entry (tar index) -> surviving links to it.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (_, p)) in entries.iter().enumerate() {
        if let Pending::Link(LinkTo::Entry(j)) = p {
            if alive(i) {
                groups.entry(*j).or_default().push(i);
            }
        }
    }
    let alive: Vec<bool> = (0..entries.len()).map(alive).collect();
    let mut slots: Vec<Option<(Vec<u8>, Pending)>> = entries.into_iter().map(Some).collect();
    let path_of = |slots: &[Option<(Vec<u8>, Pending)>], i: usize| {
        slots[i].as_ref().expect("present").0.clone()
    };
    for (data, links) in groups {
        let owner = links
            .iter()
            .copied()
            .chain(alive[data].then_some(data))
            .min_by(|&a, &b| path_of(&slots, a).cmp(&path_of(&slots, b)))
            .expect("a group has a link");
        let owner_path = path_of(&slots, owner);
        if owner != data {
            let taken = std::mem::replace(
                &mut slots[data].as_mut().expect("present").1,
                Pending::Link(LinkTo::Path(owner_path.clone())),
            );
            slots[owner].as_mut().expect("present").1 = taken;
        }
        for l in links.into_iter().filter(|&l| l != owner) {
            slots[l].as_mut().expect("present").1 = Pending::Link(LinkTo::Path(owner_path.clone()));
        }
    }
    let mut out: Vec<(Vec<u8>, Pending)> = slots
        .into_iter()
        .zip(alive)
        .filter_map(|(s, a)| if a { s } else { None })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Mode, owner, mtime (with PAX nanoseconds) and PAX xattrs of an entry.
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Meta> {
    let h = entry.header();
    let mode = h
        .mode()
        .map_err(|e| entry_err(path, format!("mode: {e}")))?
        & 0o7777;
    let uid = h.uid().map_err(|e| entry_err(path, format!("uid: {e}")))?;
    let gid = h.gid().map_err(|e| entry_err(path, format!("gid: {e}")))?;
    let uid = u32::try_from(uid).map_err(|_| entry_err(path, format!("uid {uid} is too large")))?;
    let gid = u32::try_from(gid).map_err(|_| entry_err(path, format!("gid {gid} is too large")))?;
    let mut mtime = h
        .mtime()
        .map_err(|e| entry_err(path, format!("mtime: {e}")))? as i64;
    let mut mtime_nsec = 0u32;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| entry_err(path, format!("PAX header: {e}")))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| entry_err(path, format!("PAX record: {e}")))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                let v = ext
                    .value()
                    .map_err(|_| entry_err(path, "PAX mtime is not text"))?;
                (mtime, mtime_nsec) = parse_pax_time(v)
                    .ok_or_else(|| entry_err(path, format!("bad PAX mtime {v:?}")))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                let value = ext.value_bytes();
                if name.is_empty() || value.len() > MAX_XATTR_VALUE {
                    return Err(entry_err(path, "invalid xattr record"));
                }
                xattrs.push((name.to_vec(), value.to_vec()));
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec,
        xattrs,
    })
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = frac.as_bytes().iter().take(9).map(|b| u32::from(b - b'0'));
    let mut nsec = 0u32;
    for _ in 0..9 {
        nsec = nsec * 10 + digits.next().unwrap_or(0);
    }
    if int.starts_with('-') && nsec > 0 {
        // -1.5 means 1.5 s before the epoch: (-2, 0.5 s).
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

/// Regular-file contents in sorted-path order, read back from the spool or,
/// for files not spooled, from the store.
struct SpoolStream<'a, 'b> {
    spool: &'a std::fs::File,
    /// (where, size, content digest) of each file.
    files: Vec<(&'a Source, u64, &'a FileDigest)>,
    stored: &'a mut StoredChunks<'b>,
    idx: usize,
    /// Bytes of the current file read.
    pos: u64,
    /// In a stored file: the extent being read, its bytes read, and the
    /// file's bytes so far, hashed (checked against its digest at its end:
    /// the extents come from another layer's record).
    ext: usize,
    ext_pos: u32,
    hasher: blake3::Hasher,
}

impl Read for SpoolStream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(source, size, digest)) = self.files.get(self.idx) {
            if self.pos == size {
                if let Source::Stored { .. } = source {
                    let got = std::mem::replace(&mut self.hasher, blake3::Hasher::new());
                    if got.finalize().as_bytes() != digest.as_bytes() {
                        return Err(stored_err("a file's extents do not give its contents"));
                    }
                }
                self.idx += 1;
                self.pos = 0;
                (self.ext, self.ext_pos) = (0, 0);
                continue;
            }
            let want = buf.len().min((size - self.pos) as usize);
            let n = match source {
                Source::Spool(off) => {
                    let n = self.spool.read_at(&mut buf[..want], off + self.pos)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "spool file is short",
                        ));
                    }
                    n
                }
                Source::Stored { extents, .. } => {
                    let Some(e) = extents.get(self.ext) else {
                        return Err(stored_err("a file's extents are short"));
                    };
                    if self.ext_pos == e.len {
                        self.ext += 1;
                        self.ext_pos = 0;
                        continue;
                    }
                    let bytes = self
                        .stored
                        .chunk(&e.chunk)
                        .map_err(|e| io::Error::from(Error::Store(e)))?;
                    let n = want.min((e.len - self.ext_pos) as usize);
                    let start = e.offset as usize + self.ext_pos as usize;
                    let Some(data) = bytes.get(start..start + n) else {
                        return Err(stored_err("an extent runs past its chunk"));
                    };
                    buf[..n].copy_from_slice(data);
                    self.hasher.update(data);
                    self.ext_pos += n as u32;
                    n
                }
            };
            self.pos += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// An error reading back a file that was not spooled: the record its
/// extents came from does not fit the file.
fn stored_err(why: &str) -> io::Error {
    Error::Store(puzzle_store::Error::Corrupt {
        what: "a converted layer's record".into(),
        why: why.into(),
    })
    .into()
}

impl Spooled {
    /// Phase 2: chunk the contents and store new chunks through `writer`;
    /// files that were not spooled are read from the store through `stored`.
    /// `progress` is called with the bytes chunked so far.
    pub fn chunk(
        mut self,
        params: ChunkParams,
        writer: &mut ChunkWriter<'_>,
        stored: &mut StoredChunks<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Layer> {
        // The live chunking side is done with the spool by now.
        for (off, len) in std::mem::take(&mut self.unreleased) {
            self.spool.punch(off, len);
        }
        let files: Vec<(&Source, u64, &FileDigest)> = self
            .entries
            .iter()
            .filter_map(|(_, p)| match p {
                Pending::File {
                    source,
                    size,
                    digest,
                    ..
                } => Some((source, *size, digest)),
                _ => None,
            })
            .collect();
        let mut stream = SpoolStream {
            spool: &self.spool.file,
            files,
            stored,
            idx: 0,
            pos: 0,
            ext: 0,
            ext_pos: 0,
            hasher: blake3::Hasher::new(),
        };
        let chunks = chunk_stream(&mut stream, params, progress, &mut |id, data| {
            writer.put(id, data)?;
            Ok(())
        })?;
        Ok(self.with_chunks(&chunks))
    }

    /// Whether `chunks`, cut from the spool file as written
    /// ([`LiveSpool::chunk`]), are this layer's chunk stream: they are when
    /// the files in chunking order lie end to end from the spool's start,
    /// filling it (no superseded file in between).
    pub fn is_stream(&self, chunks: &[(ChunkId, u32)]) -> bool {
        let mut at = 0u64;
        for (_, p) in &self.entries {
            if let Pending::File { source, size, .. } = p {
                let spooled_at = match source {
                    Source::Spool(off) | Source::Stored { at: Some(off), .. } => Some(*off),
                    Source::Stored { at: None, .. } => None,
                };
                if spooled_at != Some(at) {
                    return false;
                }
                at += size;
            }
        }
        at == self.spool_len && chunks.iter().map(|c| u64::from(c.1)).sum::<u64>() == at
    }

    /// Finishes the layer with `chunks` from [`LiveSpool::chunk`]; errors
    /// unless [`Spooled::is_stream`] holds.
    pub fn with_stream(self, chunks: &[(ChunkId, u32)]) -> Result<Layer> {
        if !self.is_stream(chunks) {
            return Err(Error::Invalid(
                "the chunks were not cut from this layer's chunk stream".into(),
            ));
        }
        Ok(self.with_chunks(chunks))
    }

    /// The layer made of `chunks`, the chunk stream of its files in chunking
    /// order, as (id, length).
    fn with_chunks(self, chunks: &[(ChunkId, u32)]) -> Layer {
        let sizes: Vec<u64> = self.files().map(|f| f.0).collect();
        let mut extents: Vec<Vec<Extent>> = vec![Vec::new(); sizes.len()];
        // Cursor over files: which file the next chunk byte belongs to.
        let (mut fi, mut fpos) = (0usize, 0u64);
        for &(id, len) in chunks {
            let len = u64::from(len);
            let mut coff = 0u64;
            while coff < len {
                while sizes[fi] == fpos {
                    fi += 1;
                    fpos = 0;
                }
                let take = (sizes[fi] - fpos).min(len - coff);
                extents[fi].push(Extent {
                    chunk: id,
                    offset: coff as u32,
                    len: take as u32,
                });
                coff += take;
                fpos += take;
            }
        }
        self.with_extents(extents)
    }

    /// The stream key: identifies the chunk stream this layer's contents make
    /// with `params` (BLAKE3 over the chunk parameters and, in chunking order,
    /// every file's size and content digest). Two layers with the same key cut
    /// into the same chunks, so a layer whose key was converted before can
    /// take its extents from that layer without reading its contents again.
    pub fn stream_key(&self, params: ChunkParams) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"puzzle stream key v1\0");
        for v in [params.min(), params.avg(), params.max()] {
            h.update(&v.to_le_bytes());
        }
        for (_, p) in &self.entries {
            if let Pending::File { size, digest, .. } = p {
                h.update(&size.to_le_bytes());
                h.update(digest.as_bytes());
            }
        }
        *h.finalize().as_bytes()
    }

    /// Regular files in chunking order: (size, content digest).
    pub fn files(&self) -> impl Iterator<Item = (u64, FileDigest)> + '_ {
        self.entries.iter().filter_map(|(_, p)| match p {
            Pending::File { size, digest, .. } => Some((*size, *digest)),
            _ => None,
        })
    }

    /// Finishes the layer with `extents` (one list per file, in chunking
    /// order) instead of chunking: for a layer whose [`Spooled::stream_key`]
    /// was converted before. Errors if the lists do not fit the files.
    pub fn reuse(self, extents: Vec<Vec<Extent>>) -> Result<Layer> {
        let fits = extents.len() == self.files().count()
            && self
                .files()
                .zip(&extents)
                .all(|((size, _), ex)| ex.iter().map(|e| u64::from(e.len)).sum::<u64>() == size);
        if !fits {
            return Err(Error::Invalid(
                "reused extents do not match the layer's files".into(),
            ));
        }
        Ok(self.with_extents(extents))
    }

    /// The layer, with one extent list per file in chunking order.
    fn with_extents(self, extents: Vec<Vec<Extent>>) -> Layer {
        let mut extents = extents.into_iter();
        let entries = self
            .entries
            .into_iter()
            .map(|(path, p)| match p {
                Pending::Node { node, meta } => LayerEntry::Node { path, node, meta },
                Pending::File {
                    size, digest, meta, ..
                } => LayerEntry::Node {
                    path,
                    node: Node::File {
                        size,
                        extents: extents.next().expect("one extent list per file"),
                        digest,
                    },
                    meta,
                },
                Pending::Link(LinkTo::Path(target)) => LayerEntry::HardLink { path, target },
                Pending::Link(LinkTo::Lower(target)) => LayerEntry::LowerLink { path, target },
                Pending::Link(LinkTo::Entry(_)) => unreachable!("links are settled in spool"),
            })
            .collect();
        Layer {
            entries,
            whiteouts: self.whiteouts,
            opaques: self.opaques,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use puzzle_store::writer::WriteStats;

    #[test]
    fn stream_key_follows_contents_in_chunking_order_only() {
        use puzzle_testkit::{layer_tar, Entry};
        let tmp = tempfile::tempdir().unwrap();
        let key = |entries: &[Entry], params: ChunkParams| {
            let tar = layer_tar(entries);
            let sp = spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
            sp.stream_key(params)
        };
        let p = ChunkParams::default();
        let base = key(&[Entry::file("a", b"1"), Entry::file("b", b"22")], p);
        // Tar order, mtimes and names that keep the order: same stream.
        let same = key(
            &[
                Entry::file("b2", b"22").mtime(5, 0),
                Entry::file("a", b"1").owner(3, 3),
            ],
            p,
        );
        assert_eq!(base, same);
        // Other contents, another order of contents, other chunk parameters.
        let other = key(&[Entry::file("a", b"1"), Entry::file("b", b"23")], p);
        let swapped = key(&[Entry::file("a", b"22"), Entry::file("b", b"1")], p);
        let params = ChunkParams::new(8192, 32768, 131072).unwrap();
        let other_params = key(&[Entry::file("a", b"1"), Entry::file("b", b"22")], params);
        for k in [other, swapped, other_params] {
            assert_ne!(k, base);
        }
    }

    /// Small chunks, so a few hundred KiB of files make many.
    fn small_params() -> ChunkParams {
        ChunkParams::new(1024, 4096, 16384).unwrap()
    }

    /// Runs `f` with a writer on a fresh store; nothing is kept.
    fn with_writer<T>(f: impl FnOnce(&mut ChunkWriter<'_>, &mut StoredChunks<'_>) -> T) -> T {
        use puzzle_store::{index::ChunkIndex, Store, StoreConfig};
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(small_params(), 3);
        let store = Store::open_or_create(&dir.path().join("store"), &config).unwrap();
        let index = ChunkIndex::open(&store).unwrap();
        let mut writer = ChunkWriter::new(&store, &index, 1);
        f(&mut writer, &mut StoredChunks::new(&store, &index))
    }

    /// Spools `tar` on another thread while chunking it live: the chunks (or
    /// `None` if the stream was abandoned) and the spool result.
    fn live(tar: &[u8], w: &mut ChunkWriter<'_>) -> (Option<Vec<(ChunkId, u32)>>, Result<Spooled>) {
        let tmp = tempfile::tempdir().unwrap();
        let live = LiveSpool::new();
        std::thread::scope(|s| {
            let reader =
                s.spawn(|| spool_live(&mut &tar[..], tmp.path(), &mut |_| {}, &live, None));
            let chunks = live.chunk(small_params(), w, &mut |_| {}).unwrap();
            (chunks, reader.join().unwrap())
        })
    }

    /// Files of many chunks, several times the spool's block so the live
    /// side chunks while the spool grows, with the entries that carry no
    /// contents.
    fn sorted_entries() -> Vec<puzzle_testkit::Entry> {
        use puzzle_testkit::{pseudo_random, text_like, Entry};
        vec![
            Entry::dir("etc"),
            Entry::file("etc/a", text_like(1, 1_200_000)),
            Entry::file("etc/a.d", b""),
            Entry::hardlink("etc/b", "etc/a"),
            Entry::symlink("etc/c", "a"),
            Entry::file("usr/bin/x", pseudo_random(2, 2_500_000)),
            Entry::file("usr/lib/y", text_like(3, 3_000)),
            Entry::file("usr/lib/z", pseudo_random(4, 90_000)),
        ]
    }

    /// A reader handing out at most 16 KiB a call, pausing before each.
    struct Slow<'a>(&'a [u8]);

    impl Read for Slow<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(std::time::Duration::from_micros(100));
            let n = buf.len().min(16 << 10).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Spools `tar` live against a fresh writer, the chunking side starting
    /// late (`slow` false) or keeping up with a slow reader; the live result
    /// and what the writer stored.
    fn live_timed(tar: &[u8], slow: bool) -> (Option<Vec<(ChunkId, u32)>>, WriteStats) {
        let tmp = tempfile::tempdir().unwrap();
        with_writer(|w, _| {
            let live = LiveSpool::new();
            std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let mut fast = tar;
                    let mut slow_tar = Slow(tar);
                    let r: &mut dyn Read = if slow { &mut slow_tar } else { &mut fast };
                    spool_live(r, tmp.path(), &mut |_| {}, &live, None)
                });
                if !slow {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                let chunks = live.chunk(small_params(), w, &mut |_| {}).unwrap();
                reader.join().unwrap().unwrap();
                (chunks, w.stats())
            })
        })
    }

    #[test]
    fn an_abandoned_stream_stores_nothing_until_much_is_new() {
        use puzzle_testkit::{pseudo_random, Entry};
        // Contents after the entry out of order too: the live side must not
        // see them, however long it takes to get there.
        let tar = |size: usize| {
            puzzle_testkit::layer_tar(&[
                Entry::file("a", pseudo_random(5, size)),
                Entry::file("b", pseudo_random(6, size / 2)),
                Entry::file("a.late", pseudo_random(7, 3 << 20)),
                Entry::file("c", pseudo_random(8, 1 << 20)),
            ])
        };
        // Less new content than is held back: nothing stored, however late
        // the order breaks.
        for slow in [false, true] {
            let (chunks, stats) = live_timed(&tar(3 << 20), slow);
            assert_eq!(chunks, None);
            assert_eq!(stats, WriteStats::default(), "slow {slow}");
        }
        // More: what is stored is what a chunker cuts of the in-order prefix
        // before a read fails, the same whatever the threads' timing.
        struct ThenFail<'a>(&'a [u8]);
        impl Read for ThenFail<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("abandoned"));
                }
                self.0.read(buf)
            }
        }
        let size = (HOLD_NEW as usize) * 3 / 4;
        let prefix = [pseudo_random(5, size), pseudo_random(6, size / 2)].concat();
        let expect = StreamChunker::new(ThenFail(&prefix), small_params())
            .take_while(|c| c.is_ok())
            .count();
        let big = tar(size);
        let (fast, slow) = (live_timed(&big, false), live_timed(&big, true));
        assert_eq!((fast.0, slow.0), (None, None));
        assert_eq!(fast.1, slow.1);
        assert_eq!(fast.1.new_chunks, expect as u64);
    }

    #[test]
    fn live_chunking_of_a_sorted_tar_equals_chunking_the_spool() {
        let tar = puzzle_testkit::layer_tar(&sorted_entries());
        let (chunks, spooled) = with_writer(|w, _| live(&tar, w));
        let (chunks, spooled) = (
            chunks.expect("a sorted tar is chunked live"),
            spooled.unwrap(),
        );
        assert!(chunks.len() > 20, "{} chunks", chunks.len());
        assert!(spooled.is_stream(&chunks));
        let streamed = spooled.with_stream(&chunks).unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let sp = spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
        let chunked = with_writer(|w, s| sp.chunk(small_params(), w, s, &mut |_| {})).unwrap();
        assert_eq!(streamed, chunked);
    }

    #[test]
    fn live_chunking_gives_up_at_the_first_entry_out_of_order() {
        use puzzle_testkit::Entry;
        let mut entries = sorted_entries();
        // Out of order late, after most contents went by; a superseded path;
        // a later entry that replaces a directory with a file.
        let late = {
            let mut e = entries.clone();
            e.push(Entry::file("etc/zz", b"late"));
            e
        };
        let again = {
            let mut e = entries.clone();
            e.push(Entry::file("usr/lib/z", b"again"));
            e
        };
        entries.swap(5, 6);
        let cases = [("swapped", entries), ("late", late), ("again", again)];
        for (what, entries) in cases {
            let tar = puzzle_testkit::layer_tar(&entries);
            let (chunks, spooled) = with_writer(|w, _| live(&tar, w));
            assert_eq!(chunks, None, "{what}");
            // The spool itself is fine and chunks the usual way.
            let sp = spooled.unwrap();
            let layer = with_writer(|w, s| sp.chunk(small_params(), w, s, &mut |_| {})).unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let again = spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
            let expect =
                with_writer(|w, s| again.chunk(small_params(), w, s, &mut |_| {})).unwrap();
            assert_eq!(layer, expect, "{what}");
        }
    }

    #[test]
    fn live_chunking_stops_when_reading_fails() {
        let tar = puzzle_testkit::layer_tar(&sorted_entries());
        // Cut inside the big file: the tar is truncated.
        let cut = &tar[..tar.len() / 2];
        let (chunks, spooled) = with_writer(|w, _| live(cut, w));
        assert_eq!(chunks, None);
        assert!(spooled.is_err());
    }

    #[test]
    fn chunks_from_another_stream_are_refused() {
        let tar = puzzle_testkit::layer_tar(&sorted_entries());
        let (chunks, spooled) = with_writer(|w, _| live(&tar, w));
        let (mut chunks, spooled) = (chunks.unwrap(), spooled.unwrap());
        chunks.pop();
        assert!(!spooled.is_stream(&chunks));
        assert!(spooled.with_stream(&chunks).is_err());
    }

    #[test]
    fn reuse_refuses_extents_that_do_not_fit() {
        use puzzle_testkit::{layer_tar, Entry};
        let tmp = tempfile::tempdir().unwrap();
        let tar = layer_tar(&[Entry::file("a", b"hello")]);
        let ext = |len| Extent {
            chunk: ChunkId::of(b"hello"),
            offset: 0,
            len,
        };
        let sp = || spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
        assert!(sp().reuse(vec![vec![ext(4)]]).is_err());
        assert!(sp().reuse(vec![]).is_err());
        assert!(sp().reuse(vec![vec![ext(5)]]).is_ok());
    }

    #[test]
    fn files_are_hashed_while_spooled() {
        use puzzle_testkit::{layer_tar, Entry};
        let big = puzzle_testkit::pseudo_random(3, 200_000);
        let tar = layer_tar(&[
            Entry::file("b", &big),
            Entry::file("a", b"hello"),
            Entry::file("e", b""),
            Entry::hardlink("h", "a"),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let sp = spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
        let digests: Vec<(&[u8], FileDigest)> = sp
            .entries
            .iter()
            .filter_map(|(p, e)| match e {
                Pending::File { digest, .. } => Some((p.as_slice(), *digest)),
                _ => None,
            })
            .collect();
        assert_eq!(
            digests,
            vec![
                (&b"a"[..], FileDigest::of(b"hello")),
                (&b"b"[..], FileDigest::of(&big)),
                (&b"e"[..], FileDigest::of(b"")),
            ]
        );
    }

    fn spool_entries(entries: &[puzzle_testkit::Entry]) -> Spooled {
        let tar = puzzle_testkit::layer_tar(entries);
        let tmp = tempfile::tempdir().unwrap();
        spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap()
    }

    /// (path, "file <digest>" | "link <path>" | "lower <path>") per entry.
    fn shape(sp: &Spooled) -> Vec<(String, String)> {
        sp.entries
            .iter()
            .map(|(p, e)| {
                let what = match e {
                    Pending::File { digest, .. } => format!("file {digest}"),
                    Pending::Node { .. } => "node".to_string(),
                    Pending::Link(LinkTo::Path(t)) => {
                        format!("link {}", String::from_utf8_lossy(t))
                    }
                    Pending::Link(LinkTo::Lower(t)) => {
                        format!("lower {}", String::from_utf8_lossy(t))
                    }
                    Pending::Link(LinkTo::Entry(_)) => "unsettled".to_string(),
                };
                (String::from_utf8_lossy(p).into_owned(), what)
            })
            .collect()
    }

    fn s(a: &str, b: String) -> (String, String) {
        (a.to_string(), b)
    }

    #[test]
    fn links_follow_tar_order() {
        use puzzle_testkit::Entry;
        let x = format!("file {}", FileDigest::of(b"X"));
        let y = format!("file {}", FileDigest::of(b"Y"));
        // `b` links to the first `a`; the second `a` replaces only the name.
        let sp = spool_entries(&[
            Entry::file("a", b"X"),
            Entry::hardlink("b", "a"),
            Entry::file("a", b"Y"),
        ]);
        assert_eq!(shape(&sp), vec![s("a", y.clone()), s("b", x.clone())]);
        assert_eq!(sp.counts.files, 2);
        // The superseded data goes to the smallest remaining name.
        let sp = spool_entries(&[
            Entry::file("m", b"X"),
            Entry::hardlink("z", "m"),
            Entry::hardlink("c", "z"),
            Entry::file("m", b"Y"),
        ]);
        assert_eq!(
            shape(&sp),
            vec![s("c", x.clone()), s("m", y), s("z", "link c".into())]
        );
        // A superseded data entry nobody links to is dropped.
        let sp = spool_entries(&[Entry::file("a", b"X"), Entry::file("a", b"Y")]);
        assert_eq!(sp.counts.files, 1);
        // Links to paths not (yet) defined in the layer are lower links,
        // even when the layer defines the path later.
        let sp = spool_entries(&[
            Entry::hardlink("b", "a"),
            Entry::file("a", b"X"),
            Entry::hardlink("c", "b"),
            Entry::hardlink("d", "a"),
        ]);
        assert_eq!(
            shape(&sp),
            vec![
                s("a", x),
                s("b", "lower a".into()),
                s("c", "lower a".into()),
                s("d", "link a".into()),
            ]
        );
        // A later non-directory at an ancestor removes what was under it;
        // data linked from elsewhere survives under the link.
        let sp = spool_entries(&[
            Entry::dir("d"),
            Entry::file("d/x", b"X"),
            Entry::hardlink("e", "d/x"),
            Entry::dir("d/sub"),
            Entry::file("d/sub/y", b"Y"),
            Entry::file("d", b"Y"),
            Entry::dir("k"),
            Entry::file("k/x", b"X"),
            Entry::dir("k"),
        ]);
        assert_eq!(
            shape(&sp),
            vec![
                s("d", format!("file {}", FileDigest::of(b"Y"))),
                s("e", format!("file {}", FileDigest::of(b"X"))),
                s("k", "node".into()),
                s("k/x", format!("file {}", FileDigest::of(b"X"))),
            ]
        );
        // A hard link to a directory of the layer is refused.
        let tar = puzzle_testkit::layer_tar(&[Entry::dir("d"), Entry::hardlink("l", "d")]);
        let tmp = tempfile::tempdir().unwrap();
        let err = spool(&mut &tar[..], tmp.path(), &mut |_| {}).err().unwrap();
        assert!(err.to_string().contains("directory"), "{err}");
    }

    /// A tar whose second member is a PAX header of `pax_len` bytes.
    fn tar_with_big_pax(pax_len: u64) -> impl Read {
        let mut first = tar::Header::new_ustar();
        first.set_path("ok").unwrap();
        first.set_size(2);
        first.set_mode(0o644);
        first.set_uid(0);
        first.set_gid(0);
        first.set_mtime(0);
        first.set_entry_type(EntryType::Regular);
        first.set_cksum();
        let mut head = first.as_bytes().to_vec();
        head.extend_from_slice(b"ok");
        head.resize(1024, 0);
        let mut pax = tar::Header::new_ustar();
        pax.set_path("PaxHeaders/x").unwrap();
        pax.set_size(pax_len);
        pax.set_entry_type(EntryType::XHeader);
        pax.set_cksum();
        head.extend_from_slice(pax.as_bytes());
        let record = format!("{pax_len} comment=");
        head.extend_from_slice(record.as_bytes());
        io::Cursor::new(head)
            .chain(io::repeat(b'a').take(pax_len - record.len() as u64 - 1))
            .chain(&b"\n"[..])
            .chain(io::repeat(0).take(4096))
    }

    #[test]
    fn huge_extension_records_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let err = spool(&mut tar_with_big_pax(64 << 20), tmp.path(), &mut |_| {})
            .err()
            .expect("a 64 MiB PAX record is refused");
        let msg = format!("{err}: {err:?}");
        assert!(msg.contains("the entry after /ok"), "{msg}");
        assert!(msg.contains("8 MiB of tar headers"), "{msg}");
        // Just under the budget is read (and then fails as a tar with no entry
        // after the record, not on the budget).
        let err = spool(&mut tar_with_big_pax(1 << 20), tmp.path(), &mut |_| {});
        if let Err(e) = err {
            let msg = format!("{e}: {:?}", std::error::Error::source(&e));
            assert!(!msg.contains("8 MiB"), "{msg}");
        }
    }

    #[test]
    fn budget_is_lifted_for_file_contents() {
        use puzzle_testkit::Entry;
        let big = vec![7u8; (HEADER_BUDGET + (1 << 20)) as usize];
        let sp = spool_entries(&[Entry::file("big", &big), Entry::symlink("s", "big")]);
        assert_eq!(sp.counts.file_bytes, big.len() as u64);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.x"), None);
        // Out of range: an error, never an overflow.
        assert_eq!(parse_pax_time("-9223372036854775808.5"), None);
        assert_eq!(parse_pax_time("-9223372036854775808"), Some((i64::MIN, 0)));
        assert_eq!(parse_pax_time("9223372036854775808"), None);
        assert_eq!(
            parse_pax_time("-9223372036854775807.5"),
            Some((i64::MIN, 500_000_000))
        );
    }
}
