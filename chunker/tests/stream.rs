//! `StreamChunker` against readers that fail.

use crate::common::{random_bytes, small_params, ShortReads};
use puzzle_chunker::{chunk_slice, Chunk, StreamChunker};
use std::io::{self, Read};

/// Returns `ErrorKind::Other` on the reads numbered in `fail_at`, else reads
/// through.
struct Failing<R> {
    inner: R,
    calls: usize,
    fail_at: Vec<usize>,
}

impl<R: Read> Read for Failing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.fail_at.contains(&self.calls) {
            return Err(io::Error::other(format!("injected failure {}", self.calls)));
        }
        self.inner.read(buf)
    }
}

#[test]
fn read_errors_are_returned_and_resumable() {
    let params = small_params();
    let data = random_bytes(11, 3 << 20);
    let reader = Failing {
        inner: ShortReads::new(&data, 5, 20_000),
        calls: 0,
        fail_at: vec![1, 2, 40, 41, 150],
    };
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut errors = Vec::new();
    for item in StreamChunker::new(reader, params) {
        match item {
            Ok(chunk) => chunks.push(chunk),
            Err(e) => errors.push(e.to_string()),
        }
    }
    // `Interrupted` from ShortReads never surfaces; each injected error does, once.
    assert_eq!(
        errors,
        [1, 2, 40, 41, 150].map(|n| format!("injected failure {n}"))
    );
    let cuts: Vec<_> = chunks
        .iter()
        .map(|c| (c.offset as usize, c.data.len()))
        .collect();
    assert_eq!(cuts, chunk_slice(&data, params).collect::<Vec<_>>());
    assert!(chunks
        .iter()
        .map(|c| &c.data[..])
        .eq(cuts.iter().map(|&(o, l)| &data[o..o + l])));
}

#[test]
fn end_of_input_is_none_and_stays_none() {
    let data = random_bytes(1, 10_000);
    let mut it = StreamChunker::new(&data[..], small_params());
    let n = it.by_ref().map(Result::unwrap).count();
    assert!(n > 1);
    assert!(it.next().is_none());
    assert!(it.next().is_none());
}

#[test]
fn chunk_debug_shows_length_not_bytes() {
    let chunk = Chunk {
        offset: 5,
        data: vec![1; 1000],
    };
    assert_eq!(format!("{chunk:?}"), "Chunk { offset: 5, len: 1000 }");
}

/// The largest sizes `ChunkParams` allows (max 16 MiB): the stream chunker
/// cuts what the slice chunker cuts, whole 16 MiB chunks where no cut point
/// is found (zeros), through short reads.
#[test]
fn the_largest_chunk_sizes_work_end_to_end() {
    let params = puzzle_chunker::ChunkParams::new(1 << 20, 4 << 20, 16 << 20).unwrap();
    let mut data = random_bytes(16, 24 << 20);
    data.extend(std::iter::repeat_n(0u8, 40 << 20));
    let cuts: Vec<(usize, usize)> = chunk_slice(&data, params).collect();
    assert!(cuts.iter().all(|&(_, l)| l <= 16 << 20));
    let whole = cuts.iter().filter(|&&(_, l)| l == 16 << 20).count();
    assert!(whole >= 2, "{cuts:?}");
    let streamed: Vec<(usize, usize)> =
        StreamChunker::new(ShortReads::new(&data, 3, 5 << 20), params)
            .map(|c| {
                let c = c.unwrap();
                assert!(c.data[..] == data[c.offset as usize..][..c.data.len()]);
                (c.offset as usize, c.data.len())
            })
            .collect();
    assert_eq!(streamed, cuts);
    assert_eq!(cuts.last().map(|&(o, l)| o + l), Some(data.len()));
}

/// The slice chunker's size hint holds what is left at every step: no
/// more chunks than its upper bound, no fewer than its lower one.
#[test]
fn slice_size_hint_bounds_the_chunks_left() {
    let params = small_params();
    for len in [0, 1, 5000, 300_000] {
        let data = random_bytes(len as u64, len);
        let total = chunk_slice(&data, params).count();
        let mut it = chunk_slice(&data, params);
        for done in 0..=total {
            let (lo, hi) = it.size_hint();
            let left = total - done;
            assert!(
                lo <= left && Some(left) <= hi,
                "{lo} <= {left} <= {hi:?} ({len} bytes)"
            );
            it.next();
        }
    }
}

/// Debug shows where the chunker is: the stream offset of the next chunk,
/// the bytes read but not yet returned, and whether the reader is done.
#[test]
fn stream_chunker_debug_shows_its_position() {
    let data = random_bytes(2, 10_000);
    let mut it = StreamChunker::new(&data[..], small_params());
    assert_eq!(
        format!("{it:?}"),
        "StreamChunker { offset: 0, pending: 0, eof: false, .. }"
    );
    let first = it.next().unwrap().unwrap().data.len();
    assert!(first < data.len());
    // The first read took the whole input, the next one found its end.
    assert_eq!(
        format!("{it:?}"),
        format!(
            "StreamChunker {{ offset: {first}, pending: {}, eof: true, .. }}",
            data.len() - first
        )
    );
}

/// Records the length of every buffer it is asked to fill.
struct Sizes<'a> {
    inner: &'a [u8],
    asked: Vec<usize>,
}

impl Read for Sizes<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.asked.push(buf.len());
        self.inner.read(buf)
    }
}

/// Small chunk sizes still read into a buffer of 1 MiB (not `2 * max`), so
/// a pipe or file is read in few large reads.
#[test]
fn the_first_read_asks_for_one_mib() {
    let data = random_bytes(3, 3 << 20);
    let mut reader = Sizes {
        inner: &data,
        asked: Vec::new(),
    };
    let chunks = StreamChunker::new(&mut reader, small_params()).count();
    assert!(chunks > 1);
    assert_eq!(reader.asked[0], 1 << 20);
}

/// Gives `first` bytes, then fails once, then the rest; counts its reads.
struct FailsAfter<'a> {
    data: &'a [u8],
    first: usize,
    reads: &'a std::cell::Cell<usize>,
}

impl Read for FailsAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads.set(self.reads.get() + 1);
        match self.reads.get() {
            1 => {
                let (mut head, tail) = self.data.split_at(self.first);
                self.data = tail;
                head.read(buf)
            }
            2 => Err(io::Error::other("stalled")),
            // Reading a slice moves it past what was read.
            _ => self.data.read(buf),
        }
    }
}

/// A chunk is returned as soon as its cut point has been read, without
/// reading on until `max` bytes are pending: a slow or failing source
/// still delivers the chunks it has given whole.
#[test]
fn a_chunk_comes_out_once_its_end_is_read() {
    let params = small_params();
    let data = random_bytes(4, 20_000);
    let first = 3000;
    assert!(first < params.max() as usize);
    let cuts: Vec<(usize, usize)> = chunk_slice(&data, params).collect();
    let whole = cuts.iter().filter(|&&(o, l)| o + l < first).count();
    assert!(whole >= 1, "{cuts:?}");
    let reads = std::cell::Cell::new(0);
    let mut it = StreamChunker::new(
        FailsAfter {
            data: &data,
            first,
            reads: &reads,
        },
        params,
    );
    assert_eq!(it.next().unwrap().unwrap_err().to_string(), "stalled");
    for &(offset, len) in &cuts[..whole] {
        let chunk = it.next().unwrap().unwrap();
        assert_eq!((chunk.offset as usize, chunk.data.len()), (offset, len));
        assert_eq!(reads.get(), 2, "chunk at {offset} waited for a read");
    }
    let rest: Vec<(usize, usize)> = it
        .map(|c| c.map(|c| (c.offset as usize, c.data.len())).unwrap())
        .collect();
    assert_eq!(rest, cuts[whole..]);
}
