//! The live spool: a layer's spool chunked by another thread while the
//! reading side still writes it, for tars whose entries come in chunking
//! order.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use puzzle_chunker::{ChunkId, ChunkParams};
use puzzle_store::writer::ChunkWriter;

use super::finish::chunk_stream;
use super::SpoolMeter;
use crate::error::Result;

/// A layer's spool while [`spool_live`](super::spool_live) still writes it, for chunking it as
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

    pub(super) fn meter(&self) -> Option<Arc<SpoolMeter>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .meter
            .clone()
    }

    /// Waits while the reading side, having written `written` bytes, is more
    /// than [`LIVE_LAG`] ahead of the chunking side (which is chunking).
    pub(super) fn wait_room(&self, written: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.end.is_none() && !st.done && written.saturating_sub(st.read) > LIVE_LAG {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// How far the chunking side has read, and from where on it reads
    /// nothing ever again (0 once it stopped; where the spool was when it
    /// was abandoned; `u64::MAX` while it may read anything written).
    pub(super) fn reader_at(&self) -> (u64, u64) {
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

    pub(super) fn start(&self, file: std::fs::File) {
        self.update(|st| st.file = Some(std::sync::Arc::new(file)));
    }

    /// Once the stream is abandoned it grows no more for the chunking side:
    /// what it chunks is the prefix published before, whatever the timing.
    pub(super) fn grew(&self, len: u64) {
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
    /// the [`Spooled`](super::Spooled) layer and chunks it the usual way. What was stored by
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{spool, spool_live, Spooled};
    use puzzle_chunker::StreamChunker;
    use puzzle_store::known::StoredChunks;
    use puzzle_store::writer::WriteStats;

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
}
