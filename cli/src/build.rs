//! `puzzle build`: the build pipeline's orchestration.
//!
//! Per layer (skipped when its diff_id was converted before and all its
//! chunks are still stored): read the tar (decompress, verify the layer's
//! digests, spool its file contents), chunk it and store new chunks
//! (compression runs on worker threads). A tar already in chunking order is
//! chunked while it is read; any other once it is spooled, unless an earlier
//! layer had the same contents (its extents are reused). Then flatten, and
//! commit in order: packs (durable) -> index -> metadata, config, manifest
//! -> tag.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use crossbeam_channel::bounded;
use indicatif::ProgressBar;
use puzzle_chunker::ChunkParams;
use puzzle_oci::layer::{self, LiveSpool, SpoolMeter};
use puzzle_oci::source::{
    self, ImageSource, LayerInfo, LayerReader, LayerStats, Platform, SourceRef,
};
use puzzle_store::index::ChunkIndex;
use puzzle_store::known::{KnownFiles, StoredChunks};
use puzzle_store::layout::DEFAULT_ZSTD_LEVEL;
use puzzle_store::meta::{SourceInfo, SourceLayer};
use puzzle_store::tree::{Extent, Layer, Tree};
use puzzle_store::writer::ChunkWriter;
use puzzle_store::{image, Store, StoreConfig};
use serde::Serialize;

use crate::output::{self, Envelope, Progress};
use crate::{exit, UsageError};

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
    #[command(flatten)]
    settings: StoreSettings,
    /// Compression threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

/// The settings a new store is created with (`build` into a new store,
/// `init`). An existing store keeps its own: given explicitly, they must
/// match them.
#[derive(Args, Debug)]
pub struct StoreSettings {
    /// Minimum chunk size in bytes, for a new store [default: 16384].
    #[arg(long, value_name = "BYTES")]
    chunk_min: Option<u32>,
    /// Average chunk size in bytes, for a new store [default: 65536].
    #[arg(long, value_name = "BYTES")]
    chunk_avg: Option<u32>,
    /// Maximum chunk size in bytes, for a new store [default: 262144].
    #[arg(long, value_name = "BYTES")]
    chunk_max: Option<u32>,
    /// zstd level for chunk frames, for a new store [default: 3].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd_level: Option<i32>,
}

impl StoreSettings {
    /// Opens the store at `root`, creating it with these settings (the
    /// defaults for those not given) if the directory is new or empty. An
    /// existing store keeps its own: a setting given that differs is refused.
    pub fn open_or_create(&self, root: &Path) -> Result<Store> {
        let existing = match Store::open(root) {
            Err(puzzle_store::Error::NotAStore(_)) => None,
            r => Some(r?),
        };
        let base = existing.as_ref().map_or_else(
            || StoreConfig::new(ChunkParams::default(), DEFAULT_ZSTD_LEVEL),
            |s| s.config().clone(),
        );
        let (p, level) = (base.params(), base.compression.level);
        let params = ChunkParams::new(
            self.chunk_min.unwrap_or(p.min()),
            self.chunk_avg.unwrap_or(p.avg()),
            self.chunk_max.unwrap_or(p.max()),
        )
        .map_err(|e| UsageError(format!("invalid chunk sizes: {e}")))?;
        let level = self.zstd_level.unwrap_or(level);
        let Some(store) = existing else {
            return Ok(Store::open_or_create(
                root,
                &StoreConfig::new(params, level),
            )?);
        };
        let differ: Vec<String> = [
            (
                "--chunk-min",
                self.chunk_min.map(i64::from),
                i64::from(p.min()),
            ),
            (
                "--chunk-avg",
                self.chunk_avg.map(i64::from),
                i64::from(p.avg()),
            ),
            (
                "--chunk-max",
                self.chunk_max.map(i64::from),
                i64::from(p.max()),
            ),
            (
                "--zstd-level",
                self.zstd_level.map(i64::from),
                i64::from(base.compression.level),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, given, has)| {
            given
                .filter(|g| *g != has)
                .map(|g| format!("{flag} {g} (the store has {has})"))
        })
        .collect();
        if !differ.is_empty() {
            bail!(
                "store {} was created with other settings: {}; leave these options out to use the store's own",
                root.display(),
                differ.join(", ")
            );
        }
        Ok(store)
    }
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
    /// File-content bytes written to the temporary spool (files whose
    /// contents the store already holds are not spooled, or their space is
    /// given back once they are found stored).
    pub bytes_spooled: u64,
    /// The most spooled bytes on disk at once: the build's temporary disk
    /// besides its new packs.
    pub tmp_peak_bytes: u64,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    pub reused_chunks: u64,
    pub reused_chunk_bytes: u64,
    /// Compressed bytes written to packs.
    pub stored_bytes: u64,
    pub packs_written: usize,
    pub files: u64,
    /// Wall time, less the wait for another writer's store lock.
    pub seconds: f64,
    /// Peak resident memory of this process (VmHWM), 0 where unknown.
    pub peak_rss_bytes: u64,
}

/// Builds; the first SIGINT or SIGTERM stops the build before it stores
/// anything (exit [`exit::INTERRUPTED`]), a second one ends the process at once.
pub fn run(root: &Path, args: &BuildArgs, progress: &Progress) -> Result<u8> {
    let interrupted = crate::interrupt_flag()?;
    let mut room = Room::default();
    match convert(root, args, progress, &interrupted, &mut room) {
        // Everything this build wrote is gone by now: its unfinished packs
        // with the writer, its spools and temp files with their handles.
        Err(_) if interrupted.load(Ordering::SeqCst) => {
            let msg = "interrupted, nothing stored";
            if args.json {
                output::print_json(&output::error_record(msg, exit::INTERRUPTED))?;
            }
            eprintln!("{msg}");
            Ok(exit::INTERRUPTED)
        }
        Err(e) if out_of_space(&e) => Err(anyhow::anyhow!(
            "building {} from {}: {}",
            args.tag,
            args.source,
            room.advice(root)
        )),
        r => r,
    }
}

/// What a build knew about the space it needed, for the message when the
/// disk fills up.
#[derive(Debug, Default)]
struct Room {
    /// Bytes free on the store's filesystem once the lock was taken.
    free: Option<u64>,
    /// Compressed size of the layers the build converts: its new packs come
    /// to about that much (benches/SIZE.md: about 0.94x of gzip layers).
    packs: Option<u64>,
}

impl Room {
    /// One line: how much more space the build needed (an estimate) and
    /// what to do. Everything it wrote is gone again by now.
    fn advice(&self, root: &Path) -> String {
        let what_to_do =
            "free space (`puzzle rm` images no longer needed, then `puzzle gc`) and build again";
        let store = root.display();
        match (self.free, self.packs) {
            (Some(free), Some(packs)) if packs > free => format!(
                "no space left on device in {store}: about {} more is needed \
                 (new packs take about {}, the compressed size of the layers to convert, and {} was free); {what_to_do}",
                output::bytes(packs - free),
                output::bytes(packs),
                output::bytes(free),
            ),
            (Some(free), Some(packs)) => format!(
                "no space left on device in {store}: more than the {} free is needed \
                 (about {} of new packs, and files the store does not hold yet are spooled uncompressed in tmp/ while their layer is converted); {what_to_do}",
                output::bytes(free),
                output::bytes(packs),
            ),
            _ => format!("no space left on device in {store}; {what_to_do}"),
        }
    }
}

/// Whether `e` comes from a full disk (or quota).
fn out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<puzzle_store::Error>()
            .is_some_and(puzzle_store::Error::is_out_of_space)
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(puzzle_store::layout::is_out_of_space_io)
    })
}

fn convert(
    root: &Path,
    args: &BuildArgs,
    progress: &Progress,
    interrupted: &Arc<AtomicBool>,
    room: &mut Room,
) -> Result<u8> {
    let started = Instant::now();
    let usage = |e: &dyn std::fmt::Display| UsageError(e.to_string());
    let platform: Platform = args.platform.parse().map_err(|e| usage(&e))?;
    let src_ref: SourceRef = args.source.parse().map_err(|e| usage(&e))?;
    let what = format!("building {} from {}", args.tag, args.source);

    let src = source::open(&src_ref, &platform).with_context(|| what.clone())?;
    let img = src.image();
    let store = args.settings.open_or_create(root)?;
    let params = store.config().params();
    // Until the layers to convert are known: all of them.
    room.packs = Some(img.layers.iter().map(|li| li.size).sum());
    // A build never takes the store's reserve: that is for `rm` and `gc`.
    let lock = crate::lock_store(&store, Some(interrupted), false, false)?;
    room.free = store.free_bytes();
    let index = crate::lifecycle::open_index(&store, progress)?;
    let packs = puzzle_store::verify::check_packs(&store, &index).context("checking packs")?;
    for (d, why) in &packs.damaged {
        eprintln!("puzzle: pack {d} is damaged ({why}): the chunks it held are stored again");
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let mut writer = ChunkWriter::new(&store, &index, threads);
    writer.cancel_on(interrupted.clone());
    let mut summary = Summary {
        image: args.tag.clone(),
        source: args.source.clone(),
        layers: img.layers.len(),
        ..Summary::default()
    };

    // What each layer needs: the first layer of each diff_id not converted
    // before is read; the others come from the index or an earlier layer.
    let mut steps: Vec<Step> = Vec::with_capacity(img.layers.len());
    let mut to_read: Vec<&LayerInfo> = Vec::new();
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, li) in img.layers.iter().enumerate() {
        let ctx = || format!("{what}: layer {} ({})", li.index + 1, li.digest);
        if let Some(&j) = first_of.get(li.diff_id.as_str()) {
            steps.push(Step::Again(j));
            continue;
        }
        first_of.insert(&li.diff_id, i);
        match index.usable_layer(&li.diff_id).with_context(ctx)? {
            Some(layer) => steps.push(Step::Cached(layer)),
            None => {
                steps.push(Step::Read(to_read.len()));
                to_read.push(li);
            }
        }
    }

    room.packs = Some(to_read.iter().map(|li| li.size).sum());

    // Layers are read (decompressed, verified, spooled) on a reader thread, a
    // few ahead of the one being chunked, so both cores stay busy. They are
    // chunked and flattened in order on this thread, so a bad entry stops the
    // build before later layers are chunked, and packs stay deterministic.
    let mut tree = Tree::new();
    // Layer of each step, by image layer index.
    let mut layers: Vec<Option<Layer>> = Vec::with_capacity(img.layers.len());
    // (diff_id, stream key, record, image layer index) of each layer read.
    let mut new_records: Vec<(String, [u8; 32], Vec<u8>, usize)> = Vec::new();
    let stop = AtomicBool::new(false);
    let slots: Vec<_> = to_read.iter().map(|_| bounded::<SpoolResult>(1)).collect();
    // Each layer's spool as it grows, sent as the reader starts the layer.
    let lives: Vec<_> = to_read
        .iter()
        .map(|_| bounded::<Arc<LiveSpool>>(1))
        .collect();
    let next = AtomicUsize::new(0);
    let meter = Arc::new(SpoolMeter::default());
    let tmp_dir = store.tmp_dir();
    let mut stored = StoredChunks::new(&store, &index);
    let result = std::thread::scope(|scope| -> Result<()> {
        // A reader takes a token before it starts a layer; one is handed back
        // as each layer is chunked, which bounds the layers spooled ahead.
        let (token_tx, token_rx) = bounded::<()>(READ_AHEAD + 1);
        for _ in 0..=READ_AHEAD {
            token_tx.send(()).expect("room for every token");
        }
        for _ in 0..READERS.min(to_read.len()) {
            let (token_rx, src, next, stop) = (token_rx.clone(), &src, &next, &stop);
            let meter = meter.clone();
            let (slots, lives) = (&slots, &lives);
            let (to_read, tmp_dir, index) = (&to_read, &tmp_dir, &index);
            let layer_count = img.layers.len();
            let interrupted = &**interrupted;
            scope.spawn(move || {
                while token_rx.recv().is_ok() {
                    let k = next.fetch_add(1, Ordering::SeqCst);
                    if k >= to_read.len()
                        || stop.load(Ordering::SeqCst)
                        || interrupted.load(Ordering::SeqCst)
                    {
                        return;
                    }
                    let live = Arc::new(LiveSpool::metered(meter.clone()));
                    let _ = lives[k].0.send(live.clone());
                    // After the chunking side gave up (see below), a layer
                    // started meanwhile is not read: nobody would chunk it.
                    if stop.load(Ordering::SeqCst) {
                        live.end(false);
                        return;
                    }
                    // A panic is reported through the slot, so the chunking
                    // thread never waits for a layer that will not come.
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let li = to_read[k];
                        // The blob's size is in the manifest: a bar with a
                        // total, advanced by the compressed bytes consumed.
                        let label = format!("layer {}/{layer_count}: reading", li.index + 1);
                        let bar = progress.bar(&label, li.size);
                        let res = read_layer(
                            src.as_ref(),
                            li,
                            tmp_dir,
                            [stop, interrupted],
                            &bar,
                            &live,
                            index,
                        );
                        bar.finish_and_clear();
                        res
                    }))
                    .unwrap_or_else(|_| {
                        Err(puzzle_oci::Error::Invalid(
                            "reading the layer panicked (a bug)".into(),
                        ))
                    });
                    // However reading ended, nothing more comes to the spool.
                    live.end(false);
                    let _ = slots[k].0.send(res);
                }
            });
        }
        drop(token_rx);
        let chunked = (|| -> Result<()> {
            for (i, step) in steps.into_iter().enumerate() {
                if interrupted.load(Ordering::SeqCst) {
                    bail!("interrupted");
                }
                let li = &img.layers[i];
                let ctx = || format!("{what}: layer {} ({})", li.index + 1, li.digest);
                // A layer read now comes with its stream key.
                let (layer, key) = match step {
                    Step::Again(j) => {
                        let layer = layers[j].as_ref().expect("an earlier layer");
                        tree.apply(layer).with_context(ctx)?;
                        summary.layers_reused += 1;
                        layers.push(None);
                        continue;
                    }
                    Step::Cached(layer) => {
                        summary.layers_reused += 1;
                        (layer, None)
                    }
                    Step::Read(k) => {
                        // Chunk the layer while it is read when its tar comes
                        // in chunking order; otherwise once it is spooled.
                        let live = lives[k]
                            .1
                            .recv()
                            .expect("a reader sends every layer it takes");
                        let label = format!("layer {}/{}: chunked", li.index + 1, img.layers.len());
                        let bar = progress.counter(&label);
                        let streamed = live
                            .chunk(params, &mut writer, &mut |n| bar.set_position(n))
                            .with_context(ctx)?;
                        bar.finish_and_clear();
                        let (spooled, stats, known) = slots[k]
                            .1
                            .recv()
                            .expect("a reader sends every layer it takes")
                            .with_context(ctx)?;
                        summary.bytes_read += stats.compressed_bytes;
                        summary.bytes_uncompressed += stats.uncompressed_bytes;
                        summary.files += spooled.counts.files;
                        summary.bytes_chunked += spooled.counts.file_bytes;
                        summary.bytes_spooled += spooled.counts.spooled_bytes;
                        let key = spooled.stream_key(params);
                        let layer = match streamed.filter(|c| spooled.is_stream(c)) {
                            Some(chunks) => spooled.with_stream(&chunks).with_context(ctx)?,
                            None => match same_stream(&index, &key, &spooled, known)
                                .with_context(ctx)?
                            {
                                Some(extents) => {
                                    for len in chunk_lens(&extents) {
                                        writer.note_reused(len);
                                    }
                                    spooled.reuse(extents).with_context(ctx)?
                                }
                                None => {
                                    let bar = progress.bar(&label, spooled.counts.file_bytes);
                                    let layer = spooled
                                        .chunk(params, &mut writer, &mut stored, &mut |n| {
                                            bar.set_position(n)
                                        })
                                        .with_context(ctx)?;
                                    bar.finish_and_clear();
                                    layer
                                }
                            },
                        };
                        let _ = token_tx.send(());
                        (layer, Some(key))
                    }
                };
                match key {
                    // The index record is encoded while the layer is applied.
                    Some(key) => std::thread::scope(|s| -> Result<()> {
                        let record = s.spawn(|| layer.to_record());
                        tree.apply(&layer).with_context(ctx)?;
                        let record = record
                            .join()
                            .unwrap_or_else(|e| std::panic::resume_unwind(e));
                        new_records.push((li.diff_id.clone(), key, record, i));
                        Ok(())
                    })?,
                    None => tree.apply(&layer).with_context(ctx)?,
                }
                layers.push(Some(layer));
            }
            Ok(())
        })();
        // After an error, a reader still at work stops at its next read (the
        // scope waits for it), also one waiting for its layer to be chunked.
        stop.store(true, Ordering::SeqCst);
        for (_, rx) in &lives {
            if let Ok(live) = rx.try_recv() {
                live.end(false);
            }
        }
        chunked
    });
    result?;
    // The last point to stop at: from here the image is committed.
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    let ws = writer.stats();
    let written = writer.finish().with_context(|| what.clone())?;
    if !written.packs.is_empty() {
        for p in &written.packs {
            index.add_pack(p)?;
        }
        index.flush()?;
    }
    for (diff_id, key, record, i) in &new_records {
        index.put_layer(diff_id, record)?;
        index.put_stream(key, diff_id)?;
        let layer = layers[*i].as_ref().expect("a layer read is kept");
        index.put_samples(diff_id, layer)?;
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
    // Waiting for another writer is not building.
    summary.seconds = started
        .elapsed()
        .saturating_sub(lock.waited())
        .as_secs_f64();
    summary.peak_rss_bytes = peak_rss();
    summary.tmp_peak_bytes = meter.peak();
    report(&summary, args.json)?;
    // Everything is durable and the process ends after this: leave the
    // flattened tree and the layers to the exit instead of freeing their
    // allocations one by one (a few ms of every build). The index is closed
    // as usual, before the store lock is released: another writer waiting
    // for the lock opens it next.
    std::mem::forget((tree, layers));
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

/// How many layers are read at once. One: a layer's reading already keeps
/// two cores busy (decoder thread and reader thread), and the next layer to
/// chunk should be read first, not share the cores with a later one (with
/// two readers, a python3 build chunked nothing until both layers were read).
const READERS: usize = 1;

/// How many layers may wait spooled beyond the one being chunked.
const READ_AHEAD: usize = 2;

/// How one layer of the image is obtained.
enum Step {
    /// Converted before: its record from the index.
    Cached(Layer),
    /// The same diff_id as the earlier image layer at this index.
    Again(usize),
    /// Read from the source: the index into the layers to read.
    Read(usize),
}

/// A layer read: its spool, its reading figures, and the converted layers
/// its spool found files of ([`KnownFiles::into_layers`]).
type SpoolResult = puzzle_oci::Result<(layer::Spooled, LayerStats, Vec<(String, Layer)>)>;

/// Reads one layer: decompress, verify its digests, spool its contents.
/// Stops early with an error once either of `stop` is set.
fn read_layer(
    src: &dyn ImageSource,
    li: &LayerInfo,
    tmp_dir: &Path,
    stop: [&AtomicBool; 2],
    bar: &ProgressBar,
    live: &LiveSpool,
    index: &ChunkIndex,
) -> SpoolResult {
    let mut known = KnownFiles::new(index);
    let mut reader = src.open_layer(li)?;
    let spooled = {
        let mut r = Stoppable {
            inner: &mut reader,
            stop,
            bar,
            shown: 0,
        };
        layer::spool_live(&mut r, tmp_dir, &mut |_| {}, live, Some(&mut known))?
    };
    let stats = reader.finish()?;
    Ok((spooled, stats, known.into_layers()))
}

/// A layer reader that fails once either of `stop` is set and moves `bar` to the
/// compressed bytes consumed so far.
struct Stoppable<'a> {
    inner: &'a mut LayerReader,
    stop: [&'a AtomicBool; 2],
    bar: &'a ProgressBar,
    /// The position last given to `bar` (it moves a block at a time, while
    /// the tar parser reads in small pieces).
    shown: u64,
}

impl Read for Stoppable<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.iter().any(|s| s.load(Ordering::Relaxed)) {
            return Err(std::io::Error::other("build stopped"));
        }
        let n = self.inner.read(buf)?;
        let done = self.inner.compressed_read();
        if done != self.shown {
            self.shown = done;
            self.bar.set_position(done);
        }
        Ok(n)
    }
}

/// The extents of a layer converted before whose contents make the same
/// chunk stream (same stream key), if its record is intact, every chunk it
/// uses is still stored and its files match `spooled`'s sizes and digests.
/// `known` are layers checked that way already (taken instead of their
/// records).
fn same_stream(
    index: &ChunkIndex,
    key: &[u8; 32],
    spooled: &layer::Spooled,
    known: Vec<(String, Layer)>,
) -> Result<Option<Vec<Vec<Extent>>>> {
    let Some(diff_id) = index.stream(key)? else {
        return Ok(None);
    };
    let earlier = match known.into_iter().find(|(d, _)| *d == diff_id) {
        Some((_, layer)) => layer,
        None => match index.usable_layer(&diff_id)? {
            Some(layer) => layer,
            None => return Ok(None),
        },
    };
    let same = earlier.files().count() == spooled.files().count()
        && earlier
            .files()
            .zip(spooled.files())
            .all(|((size, digest, _), (s, d))| size == s && *digest == d);
    Ok(same.then(|| earlier.files().map(|f| f.2.to_vec()).collect()))
}

/// Lengths of the chunks a run of extent lists uses, one per use in stream
/// order (a chunk's first extent starts at offset 0 in it).
fn chunk_lens(extents: &[Vec<Extent>]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for e in extents.iter().flatten() {
        match out.last_mut() {
            Some(len) if e.offset != 0 => *len += u64::from(e.len),
            _ => out.push(u64::from(e.len)),
        }
    }
    out
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
