//! `puzzle build`: the build pipeline's orchestration.
//!
//! Per layer (skipped when its diff_id was converted before and all its chunks
//! are still stored): spool the tar and verify the layer's digests, then chunk
//! and store new chunks (compression runs on worker threads). Then flatten,
//! and commit in order: packs (durable) -> index -> metadata, config,
//! manifest -> tag.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use puzzle_chunker::ChunkParams;
use puzzle_oci::layer;
use puzzle_oci::source::{self, Platform, SourceRef};
use puzzle_store::index::ChunkIndex;
use puzzle_store::layout::DEFAULT_ZSTD_LEVEL;
use puzzle_store::meta::{SourceInfo, SourceLayer};
use puzzle_store::tree::{Layer, Tree};
use puzzle_store::writer::ChunkWriter;
use puzzle_store::{image, Store, StoreConfig};
use serde::Serialize;

use crate::exit;
use crate::output::{self, Envelope, Progress};

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF], or an OCI layout directory.
    source: String,
    /// Name to store the image under (replaces an image of the same name).
    #[arg(long, short, value_parser = parse_tag)]
    tag: String,
    /// Platform to pick from a multi-platform image, as os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    /// Minimum chunk size in bytes (a new store only; a store keeps its parameters).
    #[arg(long, default_value_t = ChunkParams::default().min(), value_name = "BYTES")]
    chunk_min: u32,
    /// Average chunk size in bytes.
    #[arg(long, default_value_t = ChunkParams::default().avg(), value_name = "BYTES")]
    chunk_avg: u32,
    /// Maximum chunk size in bytes.
    #[arg(long, default_value_t = ChunkParams::default().max(), value_name = "BYTES")]
    chunk_max: u32,
    /// zstd level for chunk frames (a new store only).
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd_level: i32,
    /// Compression threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_tag(s: &str) -> Result<String, String> {
    puzzle_store::layout::check_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// The build summary (`--json` type "build").
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub image: String,
    pub source: String,
    pub manifest: String,
    pub metadata: String,
    pub layers: usize,
    /// Layers found already converted in the store (not read again).
    pub layers_reused: usize,
    /// Compressed layer bytes read from the source.
    pub bytes_read: u64,
    /// Uncompressed layer (tar) bytes read from the source, for the layers
    /// converted by this build (the build throughput's numerator).
    pub bytes_uncompressed: u64,
    /// Uncompressed file-content bytes chunked.
    pub bytes_chunked: u64,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    pub reused_chunks: u64,
    pub reused_chunk_bytes: u64,
    /// Compressed bytes written to packs.
    pub stored_bytes: u64,
    pub packs_written: usize,
    pub files: u64,
    pub seconds: f64,
    /// Peak resident memory of this process (VmHWM), 0 where unknown.
    pub peak_rss_bytes: u64,
}

pub fn run(root: &Path, args: &BuildArgs, progress: &Progress) -> Result<u8> {
    let started = Instant::now();
    let params = ChunkParams::new(args.chunk_min, args.chunk_avg, args.chunk_max)
        .context("invalid chunk parameters")?;
    let platform: Platform = args.platform.parse().context("invalid --platform")?;
    let src_ref: SourceRef = args.source.parse().context("invalid image source")?;
    let what = format!("building {} from {}", args.tag, args.source);

    let src = source::open(&src_ref, &platform).with_context(|| what.clone())?;
    let img = src.image();
    let store = Store::open_or_create(root, &StoreConfig::new(params, args.zstd_level))
        .with_context(|| format!("opening store {}", root.display()))?;
    let params = store.config().params();
    let _lock = store.lock()?;
    let index = ChunkIndex::open(&store)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut writer = ChunkWriter::new(&store, &index, threads);
    let mut summary = Summary {
        image: args.tag.clone(),
        source: args.source.clone(),
        layers: img.layers.len(),
        ..Summary::default()
    };

    // Flattened as each layer arrives, so a bad entry stops the build before
    // later layers are read and compressed.
    let mut tree = Tree::new();
    let mut layers: Vec<Layer> = Vec::with_capacity(img.layers.len());
    let mut converted: HashMap<String, usize> = HashMap::new();
    let mut new_records: Vec<(String, Vec<u8>)> = Vec::new();
    for li in &img.layers {
        let ctx = || format!("{what}: layer {} ({})", li.index + 1, li.digest);
        if let Some(&i) = converted.get(&li.diff_id) {
            tree.apply(&layers[i]).with_context(ctx)?;
            summary.layers_reused += 1;
            continue;
        }
        if let Some(layer) = cached_layer(&index, &li.diff_id).with_context(ctx)? {
            tree.apply(&layer).with_context(ctx)?;
            converted.insert(li.diff_id.clone(), layers.len());
            layers.push(layer);
            summary.layers_reused += 1;
            continue;
        }
        let label = format!("layer {}/{}", li.index + 1, img.layers.len());
        let mut reader = src.open_layer(li).with_context(ctx)?;
        let bar = progress.counter(&format!("{label}: reading"));
        let spooled = layer::spool(&mut reader, &store.tmp_dir(), &mut |n| bar.set_position(n));
        let spooled = spooled.with_context(ctx)?;
        let stats = reader.finish().with_context(ctx)?;
        bar.finish_and_clear();
        summary.bytes_read += stats.compressed_bytes;
        summary.bytes_uncompressed += stats.uncompressed_bytes;
        summary.files += spooled.counts.files;
        summary.bytes_chunked += spooled.counts.file_bytes;
        let bar = progress.bar(&format!("{label}: chunking"), spooled.counts.file_bytes);
        let layer = spooled
            .chunk(params, &mut writer, &mut |n| bar.set_position(n))
            .with_context(ctx)?;
        bar.finish_and_clear();
        tree.apply(&layer).with_context(ctx)?;
        new_records.push((li.diff_id.clone(), layer.to_record()));
        converted.insert(li.diff_id.clone(), layers.len());
        layers.push(layer);
    }

    let ws = writer.stats();
    let written = writer.finish().with_context(|| what.clone())?;
    for p in &written.packs {
        index.add_pack(p)?;
    }
    index.flush()?;
    for (diff_id, record) in &new_records {
        index.put_layer(diff_id, record)?;
    }
    index.flush()?;

    let source_info = SourceInfo {
        manifest: img.manifest_digest.clone(),
        config: img.config_digest.clone(),
        layers: img
            .layers
            .iter()
            .map(|l| SourceLayer {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                diff_id: l.diff_id.clone(),
            })
            .collect(),
    };
    let committed = image::commit(
        &store,
        &index,
        &tree,
        &source_info,
        &img.config_bytes,
        &args.tag,
    )
    .with_context(|| what.clone())?;

    summary.manifest = committed.manifest.digest.to_string();
    summary.metadata = committed.metadata.digest.to_string();
    summary.new_chunks = ws.new_chunks;
    summary.new_chunk_bytes = ws.new_bytes;
    summary.reused_chunks = ws.reused_chunks;
    summary.reused_chunk_bytes = ws.reused_bytes;
    summary.stored_bytes = written.stored_bytes;
    summary.packs_written = written.packs.len();
    summary.seconds = started.elapsed().as_secs_f64();
    summary.peak_rss_bytes = peak_rss();
    report(&summary, args.json)?;
    Ok(exit::OK)
}

/// Peak resident set size of this process, from /proc/self/status.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}

/// A layer converted before, if its record is intact and every chunk it
/// uses is still stored.
fn cached_layer(index: &ChunkIndex, diff_id: &str) -> Result<Option<Layer>> {
    let Some(record) = index.layer(diff_id)? else {
        return Ok(None);
    };
    let Ok(layer) = Layer::from_record(&record) else {
        return Ok(None);
    };
    for id in layer.chunks() {
        if !index.has(id)? {
            return Ok(None);
        }
    }
    Ok(Some(layer))
}

fn report(s: &Summary, json: bool) -> Result<()> {
    if json {
        return output::print_json(&Envelope::new("build", s));
    }
    if s.image.is_empty() {
        bail!("empty summary");
    }
    let rate = s.bytes_chunked as f64 / s.seconds.max(1e-9) / 1e6;
    eprintln!("built {} ({}) in {:.2}s", s.image, &s.manifest, s.seconds);
    eprintln!(
        "  layers: {} ({} already converted), files: {}, read {} compressed, chunked {} ({rate:.0} MB/s)",
        s.layers,
        s.layers_reused,
        s.files,
        output::bytes(s.bytes_read),
        output::bytes(s.bytes_chunked),
    );
    eprintln!(
        "  chunks: {} new ({}), {} reused ({}); stored {} in {} new pack(s)",
        s.new_chunks,
        output::bytes(s.new_chunk_bytes),
        s.reused_chunks,
        output::bytes(s.reused_chunk_bytes),
        output::bytes(s.stored_bytes),
        s.packs_written
    );
    Ok(())
}
