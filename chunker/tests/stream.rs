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
