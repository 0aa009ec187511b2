//! sizeopts: what would a store's chunks take on disk under other
//! compression options, and at what CPU cost?
//!
//! It reads every chunk of the given images back from a built store (their
//! packs in manifest order, frames in pack order: the order a fresh build
//! writes them, so for one image alone this is exactly its build), then
//! compresses them again under each option ("row") and prints a Markdown
//! table: bytes as a fraction of the images' gzip layer bytes, compression
//! and decompression speed per core (this thread's CPU time, so the load of
//! a shared machine matters less), and read amplification for grouped frames.
//!
//! ```text
//! cargo build --release --locked -p puzzle -p puzzle-sizeopts
//! target/release/puzzle --store /tmp/sz-py build oci:corpora/out/full:python3 --tag python3
//! target/release/sizeopts --store /tmp/sz-py python3
//! target/release/sizeopts --store /tmp/sz-py python3 --rows 3,3+d112,1+d112,3+g256
//! ```
//!
//! A row is `LEVEL[+OPTION...]`:
//!
//! - `dK`: a dictionary of at most K KiB trained (`zstd::dict`) on a sample of
//!   the chunks (every n-th chunk, about 100x the dictionary size); its
//!   training time is reported and its size counted in the totals.
//! - `gK`: frames that group consecutive chunks up to K KiB of raw bytes (a
//!   chunk is never split; a larger chunk is a frame alone). Reading one
//!   chunk decompresses its frame up to the chunk's end: `amp` is the
//!   decompressed bytes per chunk byte when every chunk is read once, alone,
//!   in any order.
//! - `wN`, `hN`, `cN`, `sN`, `mN`, `tN`, `stN`: zstd's windowLog, hashLog,
//!   chainLog, searchLog, minMatch, targetLength and strategy (1 fast ..
//!   9 btultra2); `ldm`: long-distance matching.
//!
//! Columns: `frames` are compressed bytes; `blobs` adds what the store holds
//! beside frames (pack indexes at this build's bytes per chunk entry plus
//! trailers; metadata blobs, configs and manifests as built) and the
//! dictionary; `x gz` divides
//! `blobs` by the gzip layer bytes (each distinct layer once). Speeds are MB/s
//! (10^6 bytes) of raw chunk bytes per CPU-second of one thread: `comp`
//! includes dictionary training, `dec` is zstd alone over every frame once,
//! `dec+b3` adds BLAKE3 of every chunk (what a verified read costs).

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use puzzle_chunker::ChunkId;
use puzzle_store::frame::FrameReader;
use puzzle_store::pack;
use puzzle_store::{image, Store};
use zstd::stream::raw::CParameter;
use zstd::zstd_safe::Strategy;

#[derive(Parser, Debug)]
#[command(about = "Re-compress a built store's chunks under other options and print a table")]
struct Args {
    /// The store holding the images.
    #[arg(long)]
    store: PathBuf,
    /// Images to take the chunks of, in build order [default: every image].
    tags: Vec<String>,
    /// Comma-separated rows (see the crate docs); the default is a survey.
    #[arg(long)]
    rows: Option<String>,
    /// Decompression passes per row (the fastest counts).
    #[arg(long, default_value_t = 3)]
    reps: u32,
}

const DEFAULT_ROWS: &str = "1,2,3,4,5,6,7,8,9,12,19,\
3+d32,3+d64,3+d112,1+d64,1+d112,5+d112,\
3+g128,3+g256,3+g512,3+g1024,1+g256,1+g1024,5+g256,3+g256+d112,\
3+h17+c17,3+st4,3+ldm+g1024+w20";

#[derive(Clone, Debug)]
struct Row {
    spec: String,
    level: i32,
    dict_kib: Option<usize>,
    group_kib: Option<usize>,
    params: Vec<CParameter>,
}

fn parse_row(spec: &str) -> Result<Row> {
    let mut parts = spec.split('+');
    let level: i32 = parts
        .next()
        .unwrap_or("")
        .parse()
        .with_context(|| format!("row {spec:?}: a zstd level first"))?;
    let mut row = Row {
        spec: spec.to_string(),
        level,
        dict_kib: None,
        group_kib: None,
        params: Vec::new(),
    };
    for p in parts {
        let num = |prefix: &str| -> Result<u32> {
            p[prefix.len()..]
                .parse()
                .with_context(|| format!("row {spec:?}: bad {p:?}"))
        };
        match p {
            "ldm" => row
                .params
                .push(CParameter::EnableLongDistanceMatching(true)),
            _ if p.starts_with("st") => {
                row.params.push(CParameter::Strategy(strategy(num("st")?)?))
            }
            _ if p.starts_with('d') => row.dict_kib = Some(num("d")? as usize),
            _ if p.starts_with('g') => row.group_kib = Some(num("g")? as usize),
            _ if p.starts_with('w') => row.params.push(CParameter::WindowLog(num("w")?)),
            _ if p.starts_with('h') => row.params.push(CParameter::HashLog(num("h")?)),
            _ if p.starts_with('c') => row.params.push(CParameter::ChainLog(num("c")?)),
            _ if p.starts_with('s') => row.params.push(CParameter::SearchLog(num("s")?)),
            _ if p.starts_with('m') => row.params.push(CParameter::MinMatch(num("m")?)),
            _ if p.starts_with('t') => row.params.push(CParameter::TargetLength(num("t")?)),
            _ => bail!("row {spec:?}: unknown option {p:?}"),
        }
    }
    Ok(row)
}

fn strategy(n: u32) -> Result<Strategy> {
    Ok(match n {
        1 => Strategy::ZSTD_fast,
        2 => Strategy::ZSTD_dfast,
        3 => Strategy::ZSTD_greedy,
        4 => Strategy::ZSTD_lazy,
        5 => Strategy::ZSTD_lazy2,
        6 => Strategy::ZSTD_btlazy2,
        7 => Strategy::ZSTD_btopt,
        8 => Strategy::ZSTD_btultra,
        9 => Strategy::ZSTD_btultra2,
        _ => bail!("strategy {n} is not 1..9"),
    })
}

/// CPU seconds used by this thread so far.
fn cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// The chunks of the images, in the order a fresh build writes them.
struct Input {
    chunks: Vec<(ChunkId, Vec<u8>)>,
    /// Frame bytes as stored, and whole pack blobs.
    stored_frames: u64,
    pack_bytes: u64,
    /// Bytes of the images' other blobs: metadata, configs, manifests.
    other_blobs: u64,
    /// The metadata blobs' bytes, decompressed (`other_blobs` counts them as
    /// stored, compressed).
    metadata: Vec<Vec<u8>>,
    gzip_bytes: u64,
    packs: usize,
}

fn load(store: &Store, tags: &[String]) -> Result<Input> {
    let mut seen_packs = HashSet::new();
    let mut seen_blobs = HashSet::new();
    let mut seen_layers = HashSet::new();
    let mut seen_chunks = HashSet::new();
    let mut input = Input {
        chunks: Vec::new(),
        stored_frames: 0,
        pack_bytes: 0,
        other_blobs: 0,
        metadata: Vec::new(),
        gzip_bytes: 0,
        packs: 0,
    };
    for tag in tags {
        let r = store.resolve(tag)?;
        let img = image::open(store, tag).with_context(|| format!("opening {tag}"))?;
        let md = img.manifest.metadata().expect("checked");
        if seen_blobs.insert(md.digest) {
            input.other_blobs += md.size;
            input.metadata.push(img.meta.bytes().to_vec());
        }
        for d in [&r.manifest, &img.manifest.config] {
            if seen_blobs.insert(d.digest) {
                input.other_blobs += d.size;
            }
        }
        for l in img.meta.source()?.layers {
            if seen_layers.insert(l.digest.clone()) {
                input.gzip_bytes += l.size;
            }
        }
        for p in img.manifest.packs() {
            if !seen_packs.insert(p.digest) {
                continue;
            }
            input.packs += 1;
            let path = store.blob_path(&p.digest);
            let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let entries = pack::read_pack_index(&f, p.size)?;
            input.pack_bytes += p.size;
            let mut frames = FrameReader::new(store, 32 << 20);
            for e in entries {
                if e.at == 0 {
                    input.stored_frames += u64::from(e.clen);
                }
                if !seen_chunks.insert(e.id) {
                    continue;
                }
                let data = frames.chunk(&e.id, &e.loc(p.digest))?;
                input.chunks.push((e.id, data.to_vec()));
            }
        }
    }
    Ok(input)
}

/// One row's figures.
struct Measured {
    frames: u64,
    extra: u64,
    train_s: f64,
    comp_s: f64,
    dec_s: f64,
    hash_s: f64,
    amp: f64,
    frame_count: usize,
}

/// Consecutive chunk index ranges, each compressed as one frame.
fn units(chunks: &[(ChunkId, Vec<u8>)], group: Option<usize>) -> Vec<std::ops::Range<usize>> {
    let Some(kib) = group else {
        return (0..chunks.len()).map(|i| i..i + 1).collect();
    };
    let cap = kib << 10;
    let mut out = Vec::new();
    let (mut start, mut len) = (0, 0usize);
    for (i, (_, c)) in chunks.iter().enumerate() {
        if i > start && len + c.len() > cap {
            out.push(start..i);
            (start, len) = (i, 0);
        }
        len += c.len();
    }
    if start < chunks.len() {
        out.push(start..chunks.len());
    }
    out
}

/// Every n-th chunk, about `target` bytes in all (deterministic).
fn sample(chunks: &[(ChunkId, Vec<u8>)], target: usize) -> Vec<&[u8]> {
    let total: usize = chunks.iter().map(|(_, c)| c.len()).sum();
    let every = (total / target.max(1)).max(1);
    chunks
        .iter()
        .step_by(every)
        .map(|(_, c)| c.as_slice())
        .collect()
}

fn measure(row: &Row, chunks: &[(ChunkId, Vec<u8>)], reps: u32) -> Result<Measured> {
    let t0 = cpu();
    let dict = match row.dict_kib {
        Some(kib) => {
            let samples = sample(chunks, (kib << 10) * 100);
            zstd::dict::from_samples(&samples, kib << 10).context("training a dictionary")?
        }
        None => Vec::new(),
    };
    let train_s = cpu() - t0;

    let units = units(chunks, row.group_kib);
    // A prepared dictionary is digested once, not once per frame.
    let cdict = zstd::dict::EncoderDictionary::copy(&dict, row.level);
    let ddict = zstd::dict::DecoderDictionary::copy(&dict);
    let mut cx = if dict.is_empty() {
        zstd::bulk::Compressor::new(row.level)?
    } else {
        zstd::bulk::Compressor::with_prepared_dictionary(&cdict)?
    };
    for p in &row.params {
        cx.set_parameter(*p)?;
    }
    // Frames carry their content size (as the store's do); no checksum:
    // chunks are checked by BLAKE3.
    let mut frames = Vec::with_capacity(units.len());
    let mut buf = Vec::new();
    let t0 = cpu();
    for u in &units {
        let frame = if u.len() == 1 {
            cx.compress(&chunks[u.start].1)?
        } else {
            buf.clear();
            for (_, c) in &chunks[u.clone()] {
                buf.extend_from_slice(c);
            }
            cx.compress(&buf)?
        };
        frames.push(frame);
    }
    let comp_s = cpu() - t0 + train_s;

    let mut dx = if dict.is_empty() {
        zstd::bulk::Decompressor::new()?
    } else {
        zstd::bulk::Decompressor::with_prepared_dictionary(&ddict)?
    };
    let mut dec_s = f64::MAX;
    let mut hash_s = f64::MAX;
    let mut out = Vec::new();
    for _ in 0..reps.max(1) {
        let (mut d, mut h) = (0.0, 0.0);
        for (u, f) in units.iter().zip(&frames) {
            let raw: usize = chunks[u.clone()].iter().map(|(_, c)| c.len()).sum();
            out.clear();
            out.reserve(raw);
            let t0 = cpu();
            let n = dx.decompress_to_buffer(f, &mut out)?;
            let t1 = cpu();
            let mut at = 0;
            for (id, c) in &chunks[u.clone()] {
                if ChunkId::of(&out[at..at + c.len()]) != *id {
                    bail!("row {}: chunk {id} did not round-trip", row.spec);
                }
                at += c.len();
            }
            h += cpu() - t1;
            d += t1 - t0;
            if n != raw {
                bail!("row {}: frame of {raw} bytes gave {n}", row.spec);
            }
        }
        dec_s = dec_s.min(d);
        hash_s = hash_s.min(h);
    }

    // Reading chunk k of a frame alone decompresses the frame up to its end.
    let total: u64 = chunks.iter().map(|(_, c)| c.len() as u64).sum();
    let mut read = 0u64;
    for u in &units {
        let mut upto = 0u64;
        for (_, c) in &chunks[u.clone()] {
            upto += c.len() as u64;
            read += upto;
        }
    }
    Ok(Measured {
        frames: frames.iter().map(|f| f.len() as u64).sum(),
        extra: dict.len() as u64,
        train_s,
        comp_s,
        dec_s,
        hash_s,
        amp: read as f64 / total as f64,
        frame_count: frames.len(),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let store = Store::open(&args.store)?;
    let tags: Vec<String> = if args.tags.is_empty() {
        store.images()?.into_iter().map(|r| r.name).collect()
    } else {
        args.tags.clone()
    };
    let rows: Vec<Row> = args
        .rows
        .as_deref()
        .unwrap_or(DEFAULT_ROWS)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_row)
        .collect::<Result<_>>()?;
    let input = load(&store, &tags)?;
    let raw: u64 = input.chunks.iter().map(|(_, c)| c.len() as u64).sum();
    let n = input.chunks.len() as u64;
    let headers = |frames: u64| pack::ENTRY_LEN as u64 * n + 32 * frames.div_ceil(32 << 20).max(1);
    let gz = input.gzip_bytes as f64;
    let mb = |b: u64| b as f64 / 1e6;

    println!(
        "images: {} | chunks: {n}, {:.1} MB raw | gzip layers: {:.1} MB | stored frames: {:.1} MB in {} packs | metadata+config+manifest: {:.2} MB",
        tags.join(" "),
        mb(raw),
        mb(input.gzip_bytes),
        mb(input.stored_frames),
        input.packs,
        mb(input.other_blobs),
    );
    let as_built = input.pack_bytes + input.other_blobs;
    println!(
        "as built: blobs {:.2} MB = {:.4}x gzip",
        mb(as_built),
        as_built as f64 / gz
    );
    for (i, m) in input.metadata.iter().enumerate() {
        let z3 = zstd::bulk::compress(m, 3)?.len();
        let z19 = zstd::bulk::compress(m, 19)?.len();
        println!(
            "metadata blob {i}: {:.3} MB raw, {:.3} MB zstd-3, {:.3} MB zstd-19",
            mb(m.len() as u64),
            mb(z3 as u64),
            mb(z19 as u64)
        );
    }
    println!();
    println!("| row | frames | frame MB | dict KB | blobs MB | x gz | vs row 3 | train s | comp MB/s | dec MB/s | dec+b3 MB/s | amp |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut base: Option<u64> = None;
    for row in &rows {
        let m = measure(row, &input.chunks, args.reps)?;
        let blobs = m.frames + m.extra + headers(m.frames) + input.other_blobs;
        if row.spec == "3" {
            base = Some(blobs);
        }
        let vs = base.map_or("".to_string(), |b| {
            format!("{:+.1}%", (blobs as f64 / b as f64 - 1.0) * 100.0)
        });
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.2} | {:.4} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.2} |",
            row.spec,
            m.frame_count,
            mb(m.frames),
            m.extra as f64 / 1e3,
            mb(blobs),
            blobs as f64 / gz,
            vs,
            m.train_s,
            mb(raw) / m.comp_s,
            mb(raw) / m.dec_s,
            mb(raw) / (m.dec_s + m.hash_s),
            m.amp,
        );
    }
    Ok(())
}
