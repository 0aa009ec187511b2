//! [`LazyBlobs`]: the packs of a lazily mounted image as one [`BlobRead`].
//!
//! A read of a pack the store holds is a local read. A read of a remote
//! frame is served from the frames kept under `lazy/` when they are there
//! and check out, and otherwise fetched: one fetch per frame however many
//! readers want it at once, on a thread of its own, with the readers
//! waiting at most the deadline (then EIO for them; the fetch goes on and
//! keeps what it gets). A fetched frame is checked chunk by chunk against
//! the BLAKE3 ids the metadata gives before it is kept or served; one that
//! fails is neither, and the next read fetches it again.
//!
//! [`BlobRead::want`] starts the fetch of frames a read is about to need,
//! together: neighbouring frames of a pack go in one Range request
//! ([`crate::pull::gap`], [`crate::pull::request_cap`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use puzzle_chunker::ChunkId;
use puzzle_store::blobs::{BlobRead, LocalBlobs};
use puzzle_store::meta::MetaBlob;
use puzzle_store::pack::{chunk_in_frame, decompress_frame, ChunkLoc};
use puzzle_store::BlobDigest;
use serde::Serialize;

use super::kept::{FrameKey, Kept};

/// Fetches running at once (each one Range request at a time).
const IN_FLIGHT: usize = 8;

/// A remote frame: its compressed and raw lengths and the chunks in it.
pub struct FrameInfo {
    pub clen: u32,
    pub rlen: u32,
    pub chunks: Vec<(ChunkId, ChunkLoc)>,
}

/// The frames of a remote image, from its metadata.
#[derive(Default)]
pub struct FrameTable(pub HashMap<FrameKey, FrameInfo>);

impl FrameTable {
    pub fn of<B: AsRef<[u8]>>(meta: &MetaBlob<B>) -> puzzle_store::Result<FrameTable> {
        let mut t: HashMap<FrameKey, FrameInfo> = HashMap::new();
        let mut seen = HashSet::new();
        for i in 0..meta.chunk_count() {
            let rec = meta.chunk(i as u32)?;
            if !seen.insert(rec.id) {
                continue;
            }
            let f = t
                .entry((rec.loc.pack, rec.loc.offset))
                .or_insert_with(|| FrameInfo {
                    clen: rec.loc.clen,
                    rlen: rec.loc.frame_rlen,
                    chunks: Vec::new(),
                });
            f.chunks.push((rec.id, rec.loc));
        }
        Ok(FrameTable(t))
    }

    /// Reads the frame at `key` from `kept` into `buf` if it is there and
    /// checks out; a kept copy that fails the check is punched out.
    pub fn read_kept(&self, kept: &Kept, key: &FrameKey, buf: &mut [u8]) -> bool {
        match kept.read(&key.0, key.1, buf) {
            Ok(true) if self.check(key, buf).is_ok() => true,
            Ok(true) => {
                kept.forget(&key.0, key.1, buf.len() as u64);
                false
            }
            _ => false,
        }
    }

    /// Checks a frame's bytes: it decompresses to its length and every chunk
    /// in it hashes to its id.
    pub fn check(&self, key: &FrameKey, bytes: &[u8]) -> puzzle_store::Result<()> {
        let info = &self.0[key];
        let first = &info.chunks[0];
        let raw = decompress_frame(bytes, info.rlen, &first.0, &key.0)?;
        for (id, loc) in &info.chunks {
            chunk_in_frame(&raw, id, loc)?;
        }
        Ok(())
    }
}

/// What a lazy mount did so far (`puzzle mounts`).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LazyStats {
    /// Frames fetched from the registry (checked and kept).
    pub frames_fetched: u64,
    /// Their compressed bytes.
    pub bytes_fetched: u64,
    /// Fetches started (each one or more Range requests).
    pub fetches: u64,
    /// Frame reads served from frames kept in the store.
    pub kept_hits: u64,
    /// Frame reads served from the store's own packs.
    pub local_hits: u64,
    /// Reads that had to wait for the registry.
    pub misses: u64,
    /// Reads that failed (deadline passed, registry error, bad bytes).
    pub failures: u64,
    /// Fetched frames refused because a chunk did not match its id.
    pub bad_frames: u64,
}

#[derive(Default)]
struct Counters {
    frames_fetched: AtomicU64,
    bytes_fetched: AtomicU64,
    fetches: AtomicU64,
    kept_hits: AtomicU64,
    local_hits: AtomicU64,
    misses: AtomicU64,
    failures: AtomicU64,
    bad_frames: AtomicU64,
}

type Outcome = Result<Arc<Vec<u8>>, String>;

/// One frame being fetched: its outcome once known.
struct Slot {
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
    /// When the fetch was started.
    started: Instant,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            done: Mutex::new(None),
            cv: Condvar::new(),
            started: Instant::now(),
        }
    }

    fn is_done(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn set(&self, r: Outcome) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.cv.notify_all();
    }

    /// The outcome, or None once `deadline` passed or `closed` is set
    /// (looked at every 100 ms).
    fn wait(&self, deadline: Instant, closed: &AtomicBool) -> Option<Outcome> {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = &*g {
                return Some(r.clone());
            }
            let now = Instant::now();
            if now >= deadline || closed.load(Ordering::Relaxed) {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

struct Shared {
    local: LocalBlobs,
    /// Packs the store holds (read locally).
    local_packs: HashSet<BlobDigest>,
    remote: Arc<dyn BlobRead>,
    /// Where the remote is, for messages (`HOST/REPO`).
    origin: String,
    frames: FrameTable,
    pack_sizes: HashMap<BlobDigest, u64>,
    kept: Option<Kept>,
    inflight: Mutex<HashMap<FrameKey, Arc<Slot>>>,
    running: (Mutex<usize>, Condvar),
    deadline: Duration,
    counters: Counters,
    /// Readers waiting for the registry now (background work yields to them).
    waiting: AtomicUsize,
    /// Set when the mount ends: nobody waits for the registry any more.
    closed: AtomicBool,
    /// Each remote pack's frame offsets, in order.
    order: HashMap<BlobDigest, Vec<u64>>,
    /// The last miss: pack, frame index, read-ahead window (frames).
    last_miss: Mutex<Option<(BlobDigest, usize, usize)>>,
}

/// `keys` cut into fetch batches, in order: consecutive frames of one pack,
/// at most `cap` bytes by `len` (at least one frame each).
pub fn batches(keys: &[FrameKey], cap: u64, len: impl Fn(&FrameKey) -> u64) -> Vec<&[FrameKey]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < keys.len() {
        let mut j = i;
        let mut bytes = 0;
        while j < keys.len() && keys[j].0 == keys[i].0 && (j == i || bytes + len(&keys[j]) <= cap) {
            bytes += len(&keys[j]);
            j += 1;
        }
        out.push(&keys[i..j]);
        i = j;
    }
    out
}

/// Most frames one sequential miss fetches ahead of itself.
const MAX_AHEAD: usize = 32;

/// How many frames to fetch after a miss at index `i` of `pack`, given the
/// miss before it: reads that go through a pack in order (a whole-image
/// read) get a window that doubles while they stay in order, up to
/// [`MAX_AHEAD`]; any other miss fetches its frame alone.
fn ahead_window(last: Option<(BlobDigest, usize, usize)>, pack: &BlobDigest, i: usize) -> usize {
    match last {
        Some((p, j, w)) if p == *pack && j < i && i <= j + w + 1 => (w * 2).clamp(1, MAX_AHEAD),
        _ => 0,
    }
}

/// The packs of a lazily mounted image. Cheap to clone (shared).
#[derive(Clone)]
pub struct LazyBlobs(Arc<Shared>);

/// How [`LazyBlobs`] reads.
pub struct LazyParts {
    /// The store's blobs.
    pub local: LocalBlobs,
    pub local_packs: HashSet<BlobDigest>,
    pub remote: Arc<dyn BlobRead>,
    pub origin: String,
    pub frames: FrameTable,
    pub pack_sizes: HashMap<BlobDigest, u64>,
    /// Where fetched frames are kept (None: a read-only store; frames then
    /// live only in the mount's memory cache).
    pub kept: Option<Kept>,
    /// How long a read waits for the registry.
    pub deadline: Duration,
}

impl LazyBlobs {
    pub fn new(p: LazyParts) -> LazyBlobs {
        let mut order: HashMap<BlobDigest, Vec<u64>> = HashMap::new();
        for key in p.frames.0.keys() {
            order.entry(key.0).or_default().push(key.1);
        }
        for v in order.values_mut() {
            v.sort_unstable();
        }
        LazyBlobs(Arc::new(Shared {
            order,
            last_miss: Mutex::new(None),
            closed: AtomicBool::new(false),
            local: p.local,
            local_packs: p.local_packs,
            remote: p.remote,
            origin: p.origin,
            frames: p.frames,
            pack_sizes: p.pack_sizes,
            kept: p.kept,
            inflight: Mutex::new(HashMap::new()),
            running: (Mutex::new(0), Condvar::new()),
            deadline: p.deadline,
            counters: Counters::default(),
            waiting: AtomicUsize::new(0),
        }))
    }

    pub fn stats(&self) -> LazyStats {
        let c = &self.0.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LazyStats {
            frames_fetched: l(&c.frames_fetched),
            bytes_fetched: l(&c.bytes_fetched),
            fetches: l(&c.fetches),
            kept_hits: l(&c.kept_hits),
            local_hits: l(&c.local_hits),
            misses: l(&c.misses),
            failures: l(&c.failures),
            bad_frames: l(&c.bad_frames),
        }
    }

    /// Stops every wait for the registry, now and later (the mount ends:
    /// a FUSE thread waiting for a frame must not hold up its exit). Reads
    /// of data not local fail from now on.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::Relaxed);
    }

    /// Readers waiting for the registry right now.
    pub fn waiting(&self) -> usize {
        self.0.waiting.load(Ordering::Relaxed)
    }

    /// The remote frames the image still needs (they hold chunks the store
    /// lacks), and how many of them, and of their bytes, are kept.
    pub fn local_share(&self, needed: &[FrameKey]) -> (u64, u64, u64, u64) {
        let s = &self.0;
        let (mut n, mut bytes, mut kept_n, mut kept_bytes) = (0, 0, 0, 0);
        for key in needed {
            let len = u64::from(s.frames.0[key].clen);
            n += 1;
            bytes += len;
            if self.is_local(key) {
                kept_n += 1;
                kept_bytes += len;
            }
        }
        (n, bytes, kept_n, kept_bytes)
    }

    /// `keys` cut into fetch batches (see [`batches`]).
    pub fn batches<'k>(&self, keys: &'k [FrameKey]) -> Vec<&'k [FrameKey]> {
        batches(keys, crate::pull::request_cap(), |k| self.frame_len(k))
    }

    /// The compressed length of the frame at `key` (0 if unknown).
    pub fn frame_len(&self, key: &FrameKey) -> u64 {
        self.0.frames.0.get(key).map_or(0, |f| u64::from(f.clen))
    }

    /// Whether the frame at `key` is local (a store pack or kept).
    pub fn is_local(&self, key: &FrameKey) -> bool {
        let s = &self.0;
        s.local_packs.contains(&key.0)
            || s.frames.0.get(key).is_some_and(|f| {
                s.kept
                    .as_ref()
                    .is_some_and(|k| k.has(&key.0, key.1, u64::from(f.clen)))
            })
    }

    fn err(&self, pack: &BlobDigest, kind: io::ErrorKind, why: String) -> puzzle_store::Error {
        puzzle_store::Error::Io {
            path: PathBuf::from(format!("{}@{pack}", self.0.origin)),
            source: io::Error::new(kind, why),
        }
    }

    /// Starts fetching the frames of `pack` at `offsets` that are not being
    /// fetched yet (one fetch for all of them) and returns the slot of
    /// every offset.
    fn start(&self, pack: &BlobDigest, offsets: &[u64]) -> Vec<Arc<Slot>> {
        let mut slots = Vec::with_capacity(offsets.len());
        let mut new = Vec::new();
        {
            let mut inflight = self.0.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for &off in offsets {
                // A slot whose fetch has ended is being forgotten: replaced.
                let slot = match inflight.get(&(*pack, off)) {
                    Some(slot) if !slot.is_done() => slot.clone(),
                    _ => {
                        new.push(off);
                        let slot = Arc::new(Slot::new());
                        inflight.insert((*pack, off), slot.clone());
                        slot
                    }
                };
                slots.push(slot);
            }
        }
        if !new.is_empty() {
            let me = self.clone();
            let pack = *pack;
            let fresh: Vec<(u64, Arc<Slot>)> = new
                .iter()
                .map(|off| {
                    let i = offsets.iter().position(|o| o == off).expect("asked");
                    (*off, slots[i].clone())
                })
                .collect();
            self.0.counters.fetches.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || me.fetch(pack, fresh));
        }
        slots
    }

    /// The body of a fetch: reads the frames, checks, keeps and hands each
    /// to its waiters, then forgets the slots.
    fn fetch(&self, pack: BlobDigest, frames: Vec<(u64, Arc<Slot>)>) {
        let s = &self.0;
        {
            let mut n = s.running.0.lock().unwrap_or_else(|p| p.into_inner());
            while *n >= IN_FLIGHT {
                n = s.running.1.wait(n).unwrap_or_else(|p| p.into_inner());
            }
            *n += 1;
        }
        // Frames kept since they were asked for (another fetch ended
        // between a reader's look and its ask) are not fetched again; the
        // rest are read into the buffers their look-up was given.
        let mut fetching = Vec::with_capacity(frames.len());
        let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(frames.len());
        for (off, slot) in frames {
            let key = (pack, off);
            let mut buf = vec![0u8; s.frames.0[&key].clen as usize];
            if self.read_kept(&key, &mut buf) {
                slot.set(Ok(Arc::new(buf)));
                self.forget(&key, &slot);
            } else {
                fetching.push((off, slot));
                bufs.push(buf);
            }
        }
        let frames = fetching;
        let mut ranges: Vec<(u64, &mut [u8])> = frames
            .iter()
            .zip(bufs.iter_mut())
            .map(|((off, _), b)| (*off, b.as_mut_slice()))
            .collect();
        let got = s.remote.read_ranges(&pack, &mut ranges);
        drop(ranges);
        for ((off, slot), buf) in frames.iter().zip(bufs) {
            let key = (pack, *off);
            let outcome = match &got {
                Err(e) => Err(puzzle_store::error::line(e)),
                Ok(()) => match s.frames.check(&key, &buf) {
                    Err(e) => {
                        s.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                        Err(format!(
                            "the registry sent bad bytes: {}",
                            puzzle_store::error::line(&e)
                        ))
                    }
                    Ok(()) => {
                        s.counters.frames_fetched.fetch_add(1, Ordering::Relaxed);
                        s.counters
                            .bytes_fetched
                            .fetch_add(buf.len() as u64, Ordering::Relaxed);
                        if let (Some(k), Some(size)) = (&s.kept, s.pack_sizes.get(&pack)) {
                            // Not kept is not fatal: it is fetched again.
                            let _ = k.write(&pack, *size, *off, &buf);
                        }
                        Ok(Arc::new(buf))
                    }
                },
            };
            slot.set(outcome);
            self.forget(&key, slot);
        }
        let mut n = s.running.0.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        s.running.1.notify_one();
    }

    /// Drops `slot` (its outcome set) from the fetches in flight.
    fn forget(&self, key: &FrameKey, slot: &Arc<Slot>) {
        let mut inflight = self.0.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(key).is_some_and(|x| Arc::ptr_eq(x, slot)) {
            inflight.remove(key);
        }
    }

    /// The kept copy of a frame, checked; a copy that fails is punched out.
    fn read_kept(&self, key: &FrameKey, buf: &mut [u8]) -> bool {
        let s = &self.0;
        let hit = s
            .kept
            .as_ref()
            .is_some_and(|k| s.frames.read_kept(k, key, buf));
        if hit {
            s.counters.kept_hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Fetches the frames at `offsets` of `pack` that are neither local nor
    /// being fetched, together, in the background, and waits for none of
    /// them. Used to fetch ahead (a prefetch list, `--fill`).
    pub fn fetch_ahead(&self, pack: &BlobDigest, offsets: &[u64]) -> Vec<u64> {
        let missing: Vec<u64> = offsets
            .iter()
            .copied()
            .filter(|&off| {
                let key = (*pack, off);
                self.0.frames.0.contains_key(&key) && !self.is_local(&key)
            })
            .collect();
        if !missing.is_empty() {
            self.start(pack, &missing);
        }
        missing
    }

    /// Waits until the frame at `key` is fetched (if it is being fetched)
    /// or the deadline passes; true if it is local now.
    pub fn wait_for(&self, key: &FrameKey) -> bool {
        let slot = self
            .0
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        if let Some(slot) = slot {
            return matches!(
                slot.wait(Instant::now() + self.0.deadline, &self.0.closed),
                Some(Ok(_))
            );
        }
        self.is_local(key)
    }
}

impl BlobRead for LazyBlobs {
    fn size(&self, digest: &BlobDigest) -> puzzle_store::Result<u64> {
        let s = &self.0;
        if s.local_packs.contains(digest) {
            return s.local.size(digest);
        }
        match s.pack_sizes.get(digest) {
            Some(n) => Ok(*n),
            None => s.remote.size(digest),
        }
    }

    fn read_at(
        &self,
        digest: &BlobDigest,
        offset: u64,
        buf: &mut [u8],
    ) -> puzzle_store::Result<()> {
        let s = &self.0;
        if s.local_packs.contains(digest) {
            s.counters.local_hits.fetch_add(1, Ordering::Relaxed);
            return s.local.read_at(digest, offset, buf);
        }
        let key = (*digest, offset);
        match s.frames.0.get(&key) {
            Some(f) if f.clen as usize == buf.len() => {}
            // Not a frame of the image (a whole pack, for a pull): what is
            // kept, and the rest from the remote.
            _ => {
                return match &s.kept {
                    Some(k) => super::reader::read_span(
                        k,
                        &s.frames,
                        s.remote.as_ref(),
                        digest,
                        offset,
                        buf,
                    ),
                    None => s.remote.read_at(digest, offset, buf),
                }
            }
        }
        if self.read_kept(&key, buf) {
            return Ok(());
        }
        s.counters.misses.fetch_add(1, Ordering::Relaxed);
        let mut ahead = Vec::new();
        if let Some(i) = s
            .order
            .get(digest)
            .and_then(|o| o.binary_search(&offset).ok())
        {
            let mut last = s.last_miss.lock().unwrap_or_else(|p| p.into_inner());
            let w = ahead_window(*last, digest, i);
            *last = Some((*digest, i, w));
            drop(last);
            let order = &s.order[digest];
            let mut bytes = u64::from(s.frames.0[&key].clen);
            let cap = crate::pull::request_cap();
            for &next in order.iter().skip(i + 1).take(w) {
                let k = (*digest, next);
                bytes += self.frame_len(&k);
                if bytes > cap {
                    break;
                }
                if !self.is_local(&k) {
                    ahead.push(next);
                }
            }
        }
        // This frame alone, so the read waits for it only; the frames
        // ahead in one request of their own.
        let asked = Instant::now();
        let deadline = asked + s.deadline;
        let mut slot = self.start(digest, &[offset]).remove(0);
        if !ahead.is_empty() {
            self.start(digest, &ahead);
        }
        s.waiting.fetch_add(1, Ordering::Relaxed);
        let got = loop {
            let got = slot.wait(deadline, &s.closed);
            // A fetch that began before this read and failed (say, its
            // tries ran out while the registry was away) is no answer to
            // it: one fetch of its own, within the same deadline.
            if matches!(got, Some(Err(_))) && slot.started < asked && Instant::now() < deadline {
                slot = self.start(digest, &[offset]).remove(0);
                continue;
            }
            break got;
        };
        s.waiting.fetch_sub(1, Ordering::Relaxed);
        match got {
            Some(Ok(bytes)) => {
                buf.copy_from_slice(&bytes);
                Ok(())
            }
            Some(Err(why)) => {
                s.counters.failures.fetch_add(1, Ordering::Relaxed);
                Err(self.err(digest, io::ErrorKind::Other, why))
            }
            None => {
                s.counters.failures.fetch_add(1, Ordering::Relaxed);
                Err(self.err(
                    digest,
                    io::ErrorKind::TimedOut,
                    format!(
                        "no answer from the registry within {} s (--timeout) for the frame at {offset}",
                        s.deadline.as_secs()
                    ),
                ))
            }
        }
    }

    fn want(&self, digest: &BlobDigest, ranges: &[(u64, u64)]) {
        if self.0.local_packs.contains(digest) {
            return;
        }
        let offsets: Vec<u64> = ranges.iter().map(|r| r.0).collect();
        self.fetch_ahead(digest, &offsets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_to_one_pack_and_the_cap_in_list_order() {
        let (a, b) = (BlobDigest::of(b"a"), BlobDigest::of(b"b"));
        let keys = [(a, 0), (a, 10), (a, 20), (b, 0), (a, 30), (a, 40)];
        let got = batches(&keys, 25, |_| 10);
        let want: Vec<&[FrameKey]> = vec![&keys[0..2], &keys[2..3], &keys[3..4], &keys[4..6]];
        assert_eq!(got, want);
        // A frame over the cap is a batch of its own.
        assert_eq!(batches(&keys[..2], 5, |_| 10).len(), 2);
        assert!(batches(&[], 5, |_| 10).is_empty());
    }

    #[test]
    fn reads_in_pack_order_widen_the_window_and_others_reset_it() {
        let (a, b) = (BlobDigest::of(b"a"), BlobDigest::of(b"b"));
        assert_eq!(
            ahead_window(None, &a, 5),
            0,
            "a first miss fetches its frame"
        );
        assert_eq!(
            ahead_window(Some((a, 4, 0)), &a, 5),
            1,
            "the next frame: in order"
        );
        assert_eq!(
            ahead_window(Some((a, 5, 1)), &a, 7),
            2,
            "past the one fetched ahead"
        );
        assert_eq!(ahead_window(Some((a, 7, 2)), &a, 10), 4);
        assert_eq!(
            ahead_window(Some((a, 7, 2)), &a, 11),
            0,
            "a gap: out of order"
        );
        assert_eq!(
            ahead_window(Some((a, 7, 2)), &a, 7),
            0,
            "the same frame again"
        );
        assert_eq!(ahead_window(Some((a, 7, 2)), &a, 6), 0, "backwards");
        assert_eq!(ahead_window(Some((b, 7, 2)), &a, 8), 0, "another pack");
        assert_eq!(ahead_window(Some((a, 0, 32)), &a, 20), MAX_AHEAD, "capped");
    }
}
