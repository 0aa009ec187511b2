//! Throughput, run by hand: `cargo test --release -p puzzle-chunker -- --ignored --nocapture`.
//!
//! Not a criterion bench, just numbers to compare runs on one machine: best of
//! five passes over 256 MiB of ChaCha8 bytes (seed 42) with default params.

use crate::common::random_bytes;
use fastcdc::v2020;
use puzzle_chunker::{chunk_slice, ChunkId, ChunkParams, StreamChunker};
use std::hint::black_box;
use std::time::Instant;

const LEN: usize = 256 << 20;

fn best_of_5(name: &str, mut f: impl FnMut() -> usize) {
    let mut best = f64::INFINITY;
    let mut chunks = 0;
    for _ in 0..5 {
        let t = Instant::now();
        chunks = black_box(f());
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name:<28} {:>7.0} MB/s  ({chunks} chunks, best {:.1} ms)",
        LEN as f64 / best / 1e6,
        best * 1e3
    );
}

#[test]
#[ignore = "benchmark; run in release"]
fn throughput() {
    let data = random_bytes(42, LEN);
    let p = ChunkParams::default();
    best_of_5("chunk_slice", || chunk_slice(&data, p).count());
    best_of_5("StreamChunker (&[u8])", || {
        StreamChunker::new(&data[..], p).fold(0, |n, c| {
            black_box(c.unwrap().data);
            n + 1
        })
    });
    best_of_5("fastcdc StreamCDC (&[u8])", || {
        v2020::StreamCDC::new(&data[..], 16384, 65536, 262144).fold(0, |n, c| {
            black_box(c.unwrap().data);
            n + 1
        })
    });
    best_of_5("chunk_slice + ChunkId::of", || {
        chunk_slice(&data, p).fold(0, |n, (o, l)| {
            black_box(ChunkId::of(&data[o..o + l]));
            n + 1
        })
    });
}
