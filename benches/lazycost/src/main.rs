//! lazycost: how many bytes would a recorded workload fetch from a lazy
//! mount if reads fetched less than whole zstd frames?
//!
//! It maps every range of a trace (`puzzle mount --trace`) through the
//! image's metadata to the chunks that hold those bytes and the frames that
//! hold those chunks (as `puzzle_store::prefetch::frames` and the mount's
//! read path do), and prints what three read granularities would fetch:
//!
//! - (a) `frames`: every frame holding a chunk read, whole. This is what a
//!   lazy mount fetches today, leaving out its read-ahead of further frames.
//! - (b) `prefixes`: each such frame from its start to the end of the last
//!   chunk read in it (zstd decodes a frame only from its start). The pack
//!   index does not say where a chunk ends in the compressed frame, so this
//!   is an **estimate**: `clen * raw_end / frame_rlen`, rounded down, per
//!   frame.
//! - (c) `chunks`: each chunk read, alone, as if it were its own frame.
//!   Also an **estimate**: `clen * chunk_rlen / frame_rlen` of its frame.
//!
//! A chunk is read whole even when the workload reads a few bytes of it:
//! the mount checks each chunk's BLAKE3 before serving any of its bytes.
//! Each frame and chunk counts once, however many ranges touch it. It also
//! prints the raw bytes the trace reads, the raw size of the files it reads
//! from, the stored metadata blob (which a lazy mount fetches whole, before
//! any read) and the image's gzip layer bytes, the figure the percentages
//! are of.
//!
//! ```text
//! puzzle --store S mount d MNT --daemon --trace w.trace
//! chroot MNT python3 -c 'import django'; puzzle --store S umount MNT
//! target/debug/lazycost --store S d w.trace
//! ```
//!
//! A trace names files and byte ranges, not chunks, so one trace applies to
//! every store holding the same image, whatever its frame target.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use puzzle_store::pack::ChunkLoc;
use puzzle_store::prefetch::{chunks_read, find_file, parse};
use puzzle_store::{image, BlobDigest, Store};

#[derive(Parser, Debug)]
#[command(about = "Bytes a traced workload would fetch lazily by whole frames, prefixes or chunks")]
struct Args {
    /// The store holding the image.
    #[arg(long)]
    store: PathBuf,
    /// The image the trace was recorded on (or one built from the same source).
    image: String,
    /// A trace written by `puzzle mount --trace`.
    trace: PathBuf,
}

/// A frame: its pack and offset in it.
type FrameKey = (BlobDigest, u64);

/// What one frame contributes: its lengths and how far into it reads reach.
#[derive(Debug, Default)]
struct FrameUse {
    clen: u64,
    rlen: u64,
    /// End of the last chunk read, in raw bytes from the frame's start.
    raw_end: u64,
    /// Raw bytes of the distinct chunks read in it.
    chunk_raw: u64,
    chunks: u64,
}

/// The frames and chunks a workload touches (each counted once).
#[derive(Debug, Default)]
struct Tally {
    frames: HashMap<FrameKey, FrameUse>,
    chunks: HashSet<u32>,
}

/// The figures of the three granularities.
#[derive(Debug, PartialEq, Eq)]
struct Totals {
    frames: u64,
    frame_bytes: u64,
    prefix_bytes: u64,
    /// Raw bytes of the frame prefixes (what (b) decompresses).
    prefix_raw: u64,
    chunks: u64,
    chunk_bytes: u64,
    chunk_raw: u64,
}

/// `clen * raw / rlen`, rounded down: the compressed bytes of `raw` of a
/// frame's `rlen` raw bytes, if they compressed evenly. All three are
/// frame lengths (at most `u32::MAX`), so the product fits a `u64`.
fn share(clen: u64, raw: u64, rlen: u64) -> u64 {
    if rlen == 0 {
        return 0;
    }
    clen * raw / rlen
}

impl Tally {
    /// Notes that chunk number `chunk` of the image's chunk table, at `loc`,
    /// is read.
    fn chunk(&mut self, chunk: u32, loc: &ChunkLoc) {
        let f = self.frames.entry((loc.pack, loc.offset)).or_default();
        f.clen = u64::from(loc.clen);
        f.rlen = u64::from(loc.frame_rlen);
        if !self.chunks.insert(chunk) {
            return;
        }
        f.raw_end = f.raw_end.max(u64::from(loc.at) + u64::from(loc.rlen));
        f.chunk_raw += u64::from(loc.rlen);
        f.chunks += 1;
    }

    fn totals(&self) -> Totals {
        let mut t = Totals {
            frames: self.frames.len() as u64,
            frame_bytes: 0,
            prefix_bytes: 0,
            prefix_raw: 0,
            chunks: 0,
            chunk_bytes: 0,
            chunk_raw: 0,
        };
        for f in self.frames.values() {
            t.frame_bytes += f.clen;
            t.prefix_bytes += share(f.clen, f.raw_end, f.rlen);
            t.prefix_raw += f.raw_end;
            t.chunks += f.chunks;
            t.chunk_bytes += share(f.clen, f.chunk_raw, f.rlen);
            t.chunk_raw += f.chunk_raw;
        }
        t
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole.max(1) as f64
}

fn main() -> Result<()> {
    let args = Args::parse();
    let store = Store::open(&args.store)?;
    let img =
        image::open(&store, &args.image).with_context(|| format!("opening {}", args.image))?;
    let meta = &img.meta;
    let text =
        std::fs::read(&args.trace).with_context(|| format!("reading {}", args.trace.display()))?;
    let entries = parse(&text).with_context(|| format!("reading {}", args.trace.display()))?;

    let mut tally = Tally::default();
    let mut files = HashMap::new();
    let (mut missing, mut read_raw) = (0u64, 0u64);
    for e in &entries {
        let file = match files.get(&e.path) {
            Some(f) => *f,
            None => {
                let f = find_file(meta, &e.path)?;
                files.insert(e.path.clone(), f);
                f
            }
        };
        let Some(file) = file else {
            missing += 1;
            continue;
        };
        let end = e.offset.saturating_add(e.len).min(file.size);
        read_raw += end.saturating_sub(e.offset);
        chunks_read(meta, &file, e.offset, e.len, |chunk| {
            tally.chunk(chunk, &meta.chunk(chunk)?.loc);
            Ok(())
        })?;
    }
    let opened: Vec<_> = files.values().flatten().collect();
    let file_raw: u64 = opened.iter().map(|f| f.size).sum();
    let gzip: u64 = meta.source()?.layers.iter().map(|l| l.size).sum();
    let md = img
        .manifest
        .metadata()
        .context("the image has no metadata blob")?;
    let t = tally.totals();

    println!(
        "image {}: gzip layers {gzip} bytes; metadata blob {} bytes ({:.2} %)",
        args.image,
        md.size,
        pct(md.size, gzip)
    );
    println!(
        "trace: {} ranges, {read_raw} raw bytes read from {} files of {file_raw} raw bytes{}",
        entries.len(),
        opened.len(),
        if missing > 0 {
            format!(" ({missing} ranges of files the image lacks skipped)")
        } else {
            String::new()
        }
    );
    println!(
        "(a) whole frames: {} bytes ({:.2} %), {} frames",
        t.frame_bytes,
        pct(t.frame_bytes, gzip),
        t.frames
    );
    println!(
        "(b) frame prefixes (estimate): {} bytes ({:.2} %), {} frames, {} raw bytes",
        t.prefix_bytes,
        pct(t.prefix_bytes, gzip),
        t.frames,
        t.prefix_raw
    );
    println!(
        "(c) chunks (estimate): {} bytes ({:.2} %), {} chunks, {} raw bytes",
        t.chunk_bytes,
        pct(t.chunk_bytes, gzip),
        t.chunks,
        t.chunk_raw
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(pack: u8, offset: u64, clen: u32, frame_rlen: u32, at: u32, rlen: u32) -> ChunkLoc {
        ChunkLoc {
            pack: BlobDigest::from_bytes([pack; 32]),
            offset,
            clen,
            frame_rlen,
            at,
            rlen,
        }
    }

    #[test]
    fn a_frame_counts_once_its_prefix_to_the_last_chunk_read_and_each_chunk_once() {
        let mut t = Tally::default();
        // Frame 1 of pack 1: 1000 raw bytes in 400; chunks at 0..100,
        // 100..400 and 400..1000; the first and second are read, the
        // second twice (two files sharing it).
        t.chunk(7, &loc(1, 0, 400, 1000, 100, 300));
        t.chunk(3, &loc(1, 0, 400, 1000, 0, 100));
        t.chunk(7, &loc(1, 0, 400, 1000, 100, 300));
        // The same offset in another pack is another frame: 90 of 300 raw
        // bytes in 100, its last chunk read.
        t.chunk(9, &loc(2, 0, 100, 300, 210, 90));
        assert_eq!(
            t.totals(),
            Totals {
                frames: 2,
                frame_bytes: 500,
                // 400 * 400 / 1000 + 100 * 300 / 300
                prefix_bytes: 260,
                prefix_raw: 700,
                chunks: 3,
                // 400 * 400 / 1000 + 100 * 90 / 300
                chunk_bytes: 190,
                chunk_raw: 490,
            }
        );
    }

    #[test]
    fn shares_round_down_without_overflow() {
        assert_eq!(share(10, 1, 3), 3);
        assert_eq!(
            share(u64::from(u32::MAX), u64::from(u32::MAX), 1 << 20),
            17_592_186_036_224
        );
        assert_eq!(share(5, 0, 0), 0);
    }
}
