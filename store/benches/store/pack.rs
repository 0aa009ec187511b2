//! Writing packs and reading frames back, in a temp store on the target's disk.
//!
//! The input is 256 chunks of 64 KiB of `text_like(20, ..)`, grouped as the
//! writer groups them (format 2): 16 chunks per 1 MiB frame, compressed at
//! the default level before timing.
//!
//! - `pack/append/256x64KiB`: [`PackWriter::new`] and 16 frame appends
//!   (buffered writes to a temp file and SHA-256 of the bytes); the writer is
//!   dropped unfinished, which deletes its temp file.
//! - `pack/append_finish/256x64KiB`: the same, then [`PackWriter::finish`]:
//!   header, fsync, rename into `blobs/` and fsync of the directory. Every
//!   iteration writes the same pack, renamed over the previous copy.
//! - `pack/read_chunk/64KiB`: [`StoredFrame::read`] and [`StoredFrame::chunk`] of one
//!   chunk of that pack (pread of its frame from the page cache, decompress
//!   the whole 1 MiB frame, BLAKE3 check of the chunk), chunks in a seeded random order: the
//!   cost of a random read with no frame cache.
//!
//! Throughput is in compressed bytes written for the writes and raw bytes
//! returned for the reads.

use criterion::{criterion_group, Criterion, Throughput};
use puzzle_chunker::{ChunkId, ChunkParams};
use puzzle_store::frame::Frame as StoredFrame;
use puzzle_store::layout::DEFAULT_ZSTD_LEVEL;
use puzzle_store::pack::{ChunkLoc, PackWriter};
use puzzle_store::{Store, StoreConfig};
use puzzle_testkit::text_like;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

const CHUNK: usize = 64 << 10;
const CHUNKS: usize = 256;
const PER_FRAME: usize = 16;

struct Frame {
    chunks: Vec<(ChunkId, u32)>,
    bytes: Vec<u8>,
}

fn frames() -> Vec<Frame> {
    let data = text_like(20, CHUNK * CHUNKS);
    let mut cx = zstd::bulk::Compressor::new(DEFAULT_ZSTD_LEVEL).expect("zstd context");
    data.chunks(CHUNK * PER_FRAME)
        .map(|f| Frame {
            chunks: f
                .chunks(CHUNK)
                .map(|c| (ChunkId::of(c), c.len() as u32))
                .collect(),
            bytes: cx.compress(f).expect("compress"),
        })
        .collect()
}

fn append_all(store: &Store, frames: &[Frame]) -> PackWriter {
    let mut w = PackWriter::new(store).expect("pack writer");
    for f in frames {
        w.append_frame(black_box(&f.bytes), &f.chunks)
            .expect("append");
    }
    w
}

fn packs(c: &mut Criterion) {
    // CARGO_TARGET_TMPDIR is target/tmp: a real disk, unlike a tmpfs /tmp.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let config = StoreConfig::new(ChunkParams::default(), DEFAULT_ZSTD_LEVEL);
    let store = Store::open_or_create(dir.path(), &config).expect("store");
    let frames = frames();
    let framed: u64 = frames.iter().map(|f| f.bytes.len() as u64).sum();

    let mut g = c.benchmark_group("pack");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(framed));
    g.bench_function("append/256x64KiB", |b| {
        b.iter(|| append_all(&store, &frames))
    });
    g.bench_function("append_finish/256x64KiB", |b| {
        b.iter(|| append_all(&store, &frames).finish(&store).expect("finish"))
    });

    let info = append_all(&store, &frames).finish(&store).expect("finish");
    let blobs = store.blob_reader();
    let mut reads: Vec<(ChunkId, ChunkLoc)> = info
        .entries
        .iter()
        .map(|e| (e.id, e.loc(info.digest)))
        .collect();
    reads.shuffle(&mut ChaCha8Rng::seed_from_u64(21));
    let mut i = 0;
    g.sample_size(100);
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.bench_function("read_chunk/64KiB", |b| {
        b.iter(|| {
            i = (i + 1) % reads.len();
            let (id, loc) = &reads[i];
            let frame = StoredFrame::read(&blobs, id, loc).expect("read frame");
            frame.chunk(id, loc).expect("read chunk").len()
        })
    });
    g.finish();
}

criterion_group!(benches, packs);
