//! Criterion micro-benchmarks of the chunker, on inputs made from fixed seeds.
//!
//! - `chunk/{slice,stream}/{random,text}`: FastCDC cut points with the default
//!   `ChunkParams` (16/64/256 KiB) over 64 MiB, through [`chunk_slice`] and
//!   through [`StreamChunker`] reading a `&[u8]` (which also copies each chunk
//!   out of its buffer). `random` is `pseudo_random(1, ..)`, incompressible;
//!   `text` is `text_like(2, ..)`, compressible text with repeats.
//! - `chunk_id/{16,64,256}KiB`: [`ChunkId::of`] (BLAKE3-256) of one buffer of
//!   chunk size.
//!
//! Run (short, the machine is shared; see benches/README.md):
//!
//! ```text
//! cargo bench --locked -p puzzle-chunker --bench chunking -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! To compare a change, save a baseline first (`-- --save-baseline main`),
//! then run with `-- --baseline main`. Recorded figures: benches/MICRO.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use puzzle_chunker::{chunk_slice, ChunkId, ChunkParams, StreamChunker};
use puzzle_testkit::{pseudo_random, text_like};
use std::hint::black_box;

const LEN: usize = 64 << 20;

fn chunking(c: &mut Criterion) {
    let params = ChunkParams::default();
    let inputs = [
        ("random", pseudo_random(1, LEN)),
        ("text", text_like(2, LEN)),
    ];
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(LEN as u64));
    // One pass is tens of milliseconds: ten samples fit a short run.
    g.sample_size(10);
    for (name, data) in &inputs {
        g.bench_with_input(BenchmarkId::new("slice", name), data, |b, data| {
            b.iter(|| chunk_slice(black_box(data), params).count())
        });
        g.bench_with_input(BenchmarkId::new("stream", name), data, |b, data| {
            b.iter(|| {
                StreamChunker::new(black_box(&data[..]), params)
                    .fold(0, |n, c| n + c.expect("a slice reads").data.len())
            })
        });
    }
    g.finish();
}

fn chunk_ids(c: &mut Criterion) {
    let data = pseudo_random(3, 256 << 10);
    let mut g = c.benchmark_group("chunk_id");
    for kib in [16, 64, 256] {
        let buf = &data[..kib << 10];
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{kib}KiB")),
            buf,
            |b, buf| b.iter(|| ChunkId::of(black_box(buf))),
        );
    }
    g.finish();
}

criterion_group!(benches, chunking, chunk_ids);
criterion_main!(benches);
