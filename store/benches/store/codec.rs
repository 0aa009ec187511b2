//! Hashing and compression of blobs and chunks.
//!
//! - `sha256/of/{1,32}MiB`: [`BlobDigest::of`], one call over the buffer.
//! - `sha256/stream_64KiB/32MiB`: the same digest fed in 64 KiB updates, as a
//!   reader that checks a layer's digest while streaming it does.
//! - `zstd/{compress,decompress,decode_frame}/{text,random}`: one 64 KiB
//!   chunk per iteration at the store's default level
//!   ([`DEFAULT_ZSTD_LEVEL`]), cycling through 64 different chunks.
//!   `compress` reuses one `zstd::bulk::Compressor`, as the writer's workers
//!   do; `decompress` is `zstd::bulk::decompress` alone; `decode_frame` is
//!   what reads of a one-chunk frame cost: `pack::decompress_frame`, then
//!   `pack::chunk_in_frame` (the BLAKE3 check).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use puzzle_chunker::ChunkId;
use puzzle_store::layout::DEFAULT_ZSTD_LEVEL;
use puzzle_store::pack::{chunk_in_frame, decompress_frame, ChunkLoc};
use puzzle_store::BlobDigest;
use puzzle_testkit::{pseudo_random, text_like};
use sha2::{Digest as _, Sha256};
use std::hint::black_box;

const CHUNK: usize = 64 << 10;
const CHUNKS: usize = 64;

fn sha256(c: &mut Criterion) {
    let data = pseudo_random(10, 32 << 20);
    let mut g = c.benchmark_group("sha256");
    g.sample_size(20);
    for mib in [1, 32] {
        let buf = &data[..mib << 20];
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("of", format!("{mib}MiB")),
            buf,
            |b, buf| b.iter(|| BlobDigest::of(black_box(buf))),
        );
    }
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("stream_64KiB/32MiB", |b| {
        b.iter(|| {
            let mut h = Sha256::new();
            for piece in black_box(&data).chunks(CHUNK) {
                h.update(piece);
            }
            h.finalize()
        })
    });
    g.finish();
}

/// Cycles through `items`, one per call.
fn cycle<'a, T>(items: &'a [T]) -> impl FnMut() -> &'a T + 'a {
    let mut i = 0;
    move || {
        i = (i + 1) % items.len();
        &items[i]
    }
}

fn zstd(c: &mut Criterion) {
    let level = DEFAULT_ZSTD_LEVEL;
    let inputs = [
        ("text", text_like(11, CHUNK * CHUNKS)),
        ("random", pseudo_random(12, CHUNK * CHUNKS)),
    ];
    let mut g = c.benchmark_group("zstd");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for (name, data) in &inputs {
        let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
        let mut cx = zstd::bulk::Compressor::new(level).expect("zstd context");
        let frames: Vec<(Vec<u8>, ChunkId)> = chunks
            .iter()
            .map(|c| (cx.compress(c).expect("compress"), ChunkId::of(c)))
            .collect();
        let framed: usize = frames.iter().map(|(f, _)| f.len()).sum();
        eprintln!(
            "zstd-{level} on {CHUNKS} {name} chunks of 64 KiB: ratio {:.2}",
            data.len() as f64 / framed as f64
        );

        let mut next = cycle(&chunks);
        g.bench_function(BenchmarkId::new("compress", name), |b| {
            b.iter(|| cx.compress(black_box(next())).expect("compress"))
        });
        let mut next = cycle(&frames);
        g.bench_function(BenchmarkId::new("decompress", name), |b| {
            b.iter(|| zstd::bulk::decompress(black_box(&next().0), CHUNK).expect("decompress"))
        });
        let pack = BlobDigest::of(b"bench pack");
        let mut next = cycle(&frames);
        g.bench_function(BenchmarkId::new("decode_frame", name), |b| {
            b.iter(|| {
                let (frame, id) = next();
                let loc = ChunkLoc {
                    pack,
                    offset: 0,
                    clen: frame.len() as u32,
                    frame_rlen: CHUNK as u32,
                    at: 0,
                    rlen: CHUNK as u32,
                };
                let raw = decompress_frame(black_box(frame), CHUNK as u32, id, &pack)
                    .expect("decompress");
                chunk_in_frame(&raw, id, &loc).expect("check").len()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sha256, zstd);
