//! Storing new chunks: dedup against the index, consecutive new chunks
//! grouped into frames ([`crate::frame`]), zstd on worker threads, frames
//! appended to packs in submission order (so packs are deterministic).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use puzzle_chunker::ChunkId;

use crate::error::{Error, Result};
use crate::frame::{Group, Grouper};
use crate::index::ChunkIndex;
use crate::layout::Store;
use crate::pack::{PackInfo, PackWriter, DEFAULT_PACK_TARGET};

/// Byte counts of what a writer saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub reused_chunks: u64,
    pub reused_bytes: u64,
}

/// What a finished writer made durable.
#[derive(Clone, Debug, Default)]
pub struct Written {
    /// Finished packs, in blobs/ but not yet in the index.
    pub packs: Vec<PackInfo>,
    /// Bytes of compressed frames written.
    pub stored_bytes: u64,
}

struct Job {
    seq: u64,
    id: ChunkId,
    data: Vec<u8>,
}

/// Consecutive new chunks to compress as one frame; `seq` numbers groups.
struct GroupJob {
    seq: u64,
    group: Group,
}

struct Frame {
    seq: u64,
    chunks: Vec<(ChunkId, u32)>,
    frame: Result<Vec<u8>>,
}

/// Accepts chunks in order; stores those not yet in the store.
pub struct ChunkWriter<'a> {
    index: &'a ChunkIndex,
    pending: HashSet<ChunkId>,
    jobs: Option<Sender<Job>>,
    /// The grouper thread, then the compressors.
    compressors: Vec<JoinHandle<()>>,
    packer: Option<JoinHandle<Result<Written>>>,
    seq: u64,
    stats: WriteStats,
    /// Set when the writer is dropped without `finish`: nothing is kept.
    abort: Arc<AtomicBool>,
    /// Once set, `put` and `has` fail with [`Error::Interrupted`].
    cancel: Option<Arc<AtomicBool>>,
}

impl<'a> ChunkWriter<'a> {
    /// Starts the grouper, `threads` compressors (at least one) and the
    /// pack writer.
    pub fn new(store: &Store, index: &'a ChunkIndex, threads: usize) -> ChunkWriter<'a> {
        let threads = threads.max(1);
        let level = store.config().compression.level;
        let target = store.config().compression.frame_target;
        let (job_tx, job_rx) = bounded::<Job>(threads * 4);
        let (group_tx, group_rx) = bounded::<GroupJob>(threads * 2);
        let (frame_tx, frame_rx) = bounded::<Frame>(threads * 2);
        let mut compressors = vec![std::thread::spawn(move || {
            group_loop(job_rx, group_tx, target)
        })];
        compressors.extend((0..threads).map(|_| {
            let rx = group_rx.clone();
            let tx = frame_tx.clone();
            std::thread::spawn(move || compress_loop(rx, tx, level))
        }));
        drop(frame_tx);
        let store = store.clone();
        let abort = Arc::new(AtomicBool::new(false));
        let abort2 = abort.clone();
        let packer = std::thread::spawn(move || pack_loop(&store, frame_rx, &abort2));
        ChunkWriter {
            index,
            pending: HashSet::new(),
            jobs: Some(job_tx),
            compressors,
            packer: Some(packer),
            seq: 0,
            stats: WriteStats::default(),
            abort,
            cancel: None,
        }
    }

    /// Makes `put` and `has` fail with [`Error::Interrupted`] once `flag`
    /// is set, so that chunking stops at the next chunk (a signal handler
    /// sets it). Dropping the writer then keeps nothing it wrote.
    pub fn cancel_on(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }

    /// Stores `data` (whose BLAKE3 id is `id`) unless the store or this
    /// writer already has it. Returns whether it was new.
    pub fn put(&mut self, id: ChunkId, data: Vec<u8>) -> Result<bool> {
        self.check_cancel()?;
        let len = data.len() as u64;
        if self.pending.contains(&id) || self.index.has(&id)? {
            self.stats.reused_chunks += 1;
            self.stats.reused_bytes += len;
            return Ok(false);
        }
        self.pending.insert(id);
        self.stats.new_chunks += 1;
        self.stats.new_bytes += len;
        let job = Job {
            seq: self.seq,
            id,
            data,
        };
        self.seq += 1;
        let sent = self.jobs.as_ref().map(|tx| tx.send(job).is_ok());
        if sent != Some(true) {
            // The pack writer stopped early; finish() reports why.
            return self.finish_err();
        }
        Ok(true)
    }

    /// Whether the store or this writer already has chunk `id`.
    pub fn has(&self, id: &ChunkId) -> Result<bool> {
        self.check_cancel()?;
        Ok(self.pending.contains(id) || self.index.has(id)?)
    }

    /// Counts a chunk of `len` bytes that a layer uses and the store already
    /// has, found without `put` (a layer whose chunk stream was converted
    /// before).
    pub fn note_reused(&mut self, len: u64) {
        self.stats.reused_chunks += 1;
        self.stats.reused_bytes += len;
    }

    fn finish_err(&mut self) -> Result<bool> {
        self.jobs = None;
        for c in self.compressors.drain(..) {
            let _ = c.join();
        }
        match self.packer.take().map(|p| p.join()) {
            Some(Ok(Err(e))) => Err(e),
            _ => Err(Error::Corrupt {
                what: "chunk writer".into(),
                why: "pack writer stopped".into(),
            }),
        }
    }

    pub fn stats(&self) -> WriteStats {
        self.stats
    }

    /// Waits for every chunk to be written.
    pub fn finish(mut self) -> Result<Written> {
        self.jobs = None;
        for c in self.compressors.drain(..) {
            c.join().expect("compressor thread panicked");
        }
        match self.packer.take() {
            Some(p) => p.join().expect("pack writer thread panicked"),
            None => Ok(Written::default()),
        }
    }
}

impl Drop for ChunkWriter<'_> {
    fn drop(&mut self) {
        // Dropped without finish(): a failed build. Its packs would never be
        // indexed, so keep none of them.
        self.abort.store(true, Ordering::SeqCst);
        self.jobs = None;
        for c in self.compressors.drain(..) {
            let _ = c.join();
        }
        if let Some(p) = self.packer.take() {
            let _ = p.join();
        }
    }
}

/// Cuts the chunks `put` sends, in its order, into groups for the compressors.
fn group_loop(rx: Receiver<Job>, tx: Sender<GroupJob>, target: u32) {
    let mut grouper = Grouper::new(target);
    let mut seq = 0u64;
    let mut send = |group: Group| {
        let ok = tx.send(GroupJob { seq, group }).is_ok();
        seq += 1;
        ok
    };
    for (n, job) in rx.into_iter().enumerate() {
        debug_assert_eq!(job.seq, n as u64, "put sends jobs in order");
        if let Some(g) = grouper.push(job.id, &job.data) {
            if !send(g) {
                return;
            }
        }
    }
    if let Some(g) = grouper.finish() {
        send(g);
    }
}

fn compress_loop(rx: Receiver<GroupJob>, tx: Sender<Frame>, level: i32) {
    let mut cx = zstd::bulk::Compressor::new(level).ok();
    for job in rx {
        let frame = match cx.as_mut() {
            Some(cx) => crate::frame::compress(cx, &job.group),
            None => zstd::bulk::compress(&job.group.data, level),
        }
        .map_err(|source| Error::Io {
            path: "zstd".into(),
            source,
        });
        let out = Frame {
            seq: job.seq,
            chunks: job.group.chunks,
            frame,
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

fn pack_loop(store: &Store, rx: Receiver<Frame>, abort: &AtomicBool) -> Result<Written> {
    let mut packs = Vec::new();
    let mut current: Option<PackWriter> = None;
    let mut waiting: BTreeMap<u64, Frame> = BTreeMap::new();
    let mut next = 0u64;
    let mut written = 0u64;
    let mut failure: Option<Error> = None;
    for f in rx {
        if failure.is_some() {
            continue; // drain so senders never block
        }
        waiting.insert(f.seq, f);
        while let Some(f) = waiting.remove(&next) {
            next += 1;
            let step = (|| -> Result<()> {
                let frame = f.frame?;
                if current.is_none() {
                    current = Some(PackWriter::new(store)?);
                }
                let w = current.as_mut().expect("just set");
                w.append_frame(&frame, &f.chunks)?;
                written += frame.len() as u64;
                if w.frames_len() >= DEFAULT_PACK_TARGET {
                    packs.push(current.take().expect("open").finish(store)?);
                }
                Ok(())
            })();
            if let Err(e) = step {
                failure = Some(e);
                waiting.clear();
                break;
            }
        }
    }
    if abort.load(Ordering::SeqCst) {
        // Not indexed, referenced by nothing: remove what this writer made
        // durable. The open pack's temp file goes away when dropped.
        for p in &packs {
            let _ = std::fs::remove_file(store.blob_path(&p.digest));
        }
        return Err(failure.unwrap_or(Error::Corrupt {
            what: "chunk writer".into(),
            why: "aborted".into(),
        }));
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(w) = current.filter(|w| !w.is_empty()) {
        packs.push(w.finish(store)?);
    }
    Ok(Written {
        packs,
        stored_bytes: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;
    use rand::{RngCore, SeedableRng};

    /// Packs close once their frames reach the pack target: 40 MiB of
    /// incompressible 1 MiB chunks make a full pack and a pack of the
    /// rest, not one giant pack and not a pack per frame.
    #[test]
    fn packs_close_at_the_pack_target() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(
            dir.path(),
            &StoreConfig::new(puzzle_chunker::ChunkParams::default(), 1),
        )
        .unwrap();
        let index = ChunkIndex::open(&store).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
        let mut w = ChunkWriter::new(&store, &index, 2);
        for _ in 0..40 {
            let mut d = vec![0u8; 1 << 20];
            rng.fill_bytes(&mut d);
            assert!(w.put(ChunkId::of(&d), d).unwrap());
        }
        let written = w.finish().unwrap();
        let frames_len = |p: &PackInfo| {
            let e = p.entries.last().unwrap();
            e.offset + u64::from(e.clen)
        };
        let lens: Vec<(usize, u64)> = written
            .packs
            .iter()
            .map(|p| (p.entries.len(), frames_len(p)))
            .collect();
        assert_eq!(lens.len(), 2, "{lens:?}");
        let (full, rest) = (lens[0], lens[1]);
        assert!(full.1 >= DEFAULT_PACK_TARGET, "{lens:?}");
        // It closed at the first frame that reached the target.
        let largest = written.packs[0]
            .entries
            .iter()
            .map(|e| e.clen)
            .max()
            .unwrap();
        assert!(
            full.1 < DEFAULT_PACK_TARGET + u64::from(largest),
            "{lens:?}"
        );
        assert_eq!(full.0 + rest.0, 40);
        assert_eq!(written.stored_bytes, full.1 + rest.1);
    }
}
