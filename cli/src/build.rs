//! `puzzle build`: arguments, the store and its lock, progress bars and the
//! summary around the library's build ([`puzzle_oci::build`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use puzzle_chunker::ChunkParams;
use puzzle_oci::build::{self, BuildOptions, BuildProgress, Summary};
use puzzle_oci::source::{self, Platform, SourceRef};
use puzzle_store::layout::DEFAULT_ZSTD_LEVEL;
use puzzle_store::{Store, StoreConfig};

use crate::output::{self, Envelope, Progress};
use crate::registry_args::RegistryArgs;
use crate::{exit, UsageError};

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF],
    /// docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST] (a registry: HTTPS, but plain
    /// HTTP for localhost/127.0.0.1 or with --tls-verify=false; credentials
    /// as --creds says), or an OCI layout directory.
    source: String,
    /// Name to store the image under (replaces an image of the same name).
    #[arg(long, short, value_parser = parse_tag)]
    tag: String,
    /// Platform to pick from a multi-platform image, as os/arch[/variant].
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
    #[command(flatten)]
    settings: StoreSettings,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Store FILE, a trace written by `puzzle mount --trace`, with the image
    /// as its prefetch list (what a lazy mount fetches first). Paths the
    /// image lacks are skipped with a warning.
    #[arg(long, value_name = "FILE")]
    prefetch: Option<PathBuf>,
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
    /// Raw bytes of consecutive chunks one zstd frame collects, for a new
    /// store [default: 1048576]. Smaller frames make a pull from a store
    /// with other packs fetch less around the chunks it lacks, and the
    /// store larger (benches/RESULTS.md, "Frame target").
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(4096..=i64::from(puzzle_store::pack::MAX_FRAME_RAW)))]
    frame_target: Option<u32>,
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
            let mut config = StoreConfig::new(params, level);
            if let Some(target) = self.frame_target {
                config.compression.frame_target = target;
            }
            return Ok(Store::open_or_create(root, &config)?);
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
            (
                "--frame-target",
                self.frame_target.map(i64::from),
                i64::from(base.compression.frame_target),
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

/// An image name `--tag` accepts (also `pull --tag`).
pub(crate) fn parse_tag(s: &str) -> Result<String, String> {
    puzzle_store::layout::check_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
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
        c.downcast_ref::<puzzle_oci::Error>()
            .is_some_and(puzzle_oci::Error::is_out_of_space)
            || c.downcast_ref::<puzzle_store::Error>()
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

    let prefetch = args
        .prefetch
        .as_deref()
        .map(crate::prefetch::read)
        .transpose()?;
    let src = source::open_with(&src_ref, &platform, &args.registry.options())
        .with_context(|| what.clone())?;
    let store = args.settings.open_or_create(root)?;
    // Until the layers to convert are known: all of them.
    room.packs = Some(src.image().layers.iter().map(|li| li.size).sum());
    // A build never takes the store's reserve: that is for `rm` and `gc`.
    let lock = crate::lock_store(&store, Some(interrupted), false, false)?;
    room.free = store.free_bytes();
    let index = crate::lifecycle::open_index(&store, progress)?;
    let opts = BuildOptions {
        threads: args
            .threads
            .unwrap_or_else(|| BuildOptions::default().threads),
        cancel: interrupted.clone(),
    };
    let bars = Bars {
        progress,
        open: Mutex::new(HashMap::new()),
        planned: Mutex::new(None),
    };
    let built = build::build(&store, &index, src.as_ref(), &args.tag, &opts, &bars);
    bars.clear();
    if let Some(bytes) = *bars.planned.lock().unwrap_or_else(|e| e.into_inner()) {
        room.packs = Some(bytes);
    }
    let mut summary = built.with_context(|| what.clone())?;
    if let Some(trace) = &prefetch {
        let set = crate::prefetch::attach(&store, &args.tag, trace)?;
        summary.manifest = set.manifest.digest.to_string();
    }
    summary.source = args.source.clone();
    // Waiting for another writer is not building.
    summary.seconds = started
        .elapsed()
        .saturating_sub(lock.waited())
        .as_secs_f64();
    summary.peak_rss_bytes = peak_rss();
    report(&summary, args.json)?;
    Ok(exit::OK)
}

/// The build's progress as bars: one per layer being read (compressed bytes
/// of a known total) and one per layer being chunked (a counter while it is
/// read, a bar once spooled).
struct Bars<'a> {
    progress: &'a Progress,
    /// (layer, chunking?) -> its bar.
    open: Mutex<HashMap<(usize, bool), ProgressBar>>,
    /// The compressed bytes the build reads, once known.
    planned: Mutex<Option<u64>>,
}

impl Bars<'_> {
    fn update(&self, key: (usize, bool), make: impl FnOnce() -> ProgressBar, pos: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.entry(key).or_insert_with(make).set_position(pos);
    }

    fn done(&self, key: (usize, bool)) {
        let bar = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }

    fn clear(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        for bar in open.into_values() {
            bar.finish_and_clear();
        }
    }
}

impl BuildProgress for Bars<'_> {
    fn planned(&self, bytes_to_read: u64) {
        *self.planned.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes_to_read);
    }

    fn reading(&self, layer: usize, of: usize, done: u64, total: u64) {
        let make = || {
            self.progress
                .bar(&format!("layer {layer}/{of}: reading"), total)
        };
        self.update((layer, false), make, done);
    }

    fn read_done(&self, layer: usize) {
        self.done((layer, false));
    }

    fn chunking(&self, layer: usize, of: usize, done: u64, total: Option<u64>) {
        let label = format!("layer {layer}/{of}: chunked");
        let make = || match total {
            Some(total) => self.progress.bar(&label, total),
            None => self.progress.counter(&label),
        };
        self.update((layer, true), make, done);
    }

    fn chunk_done(&self, layer: usize) {
        self.done((layer, true));
    }

    fn notice(&self, line: &str) {
        eprintln!("puzzle: {line}");
    }
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
