//! `puzzle verify` and `puzzle gc`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use puzzle_store::gc::{GcOptions, DEFAULT_REPACK_BELOW};
use puzzle_store::index::ChunkIndex;
use puzzle_store::{gc, verify, Store};
use serde::Serialize;

use crate::exit;
use crate::output::{self, Envelope, Progress};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Also decompress every chunk of every pack an image uses and check its BLAKE3 id.
    #[arg(long)]
    full: bool,
    /// First rebuild the index from the packs in the store (layer records are dropped).
    #[arg(long)]
    rebuild_index: bool,
    /// Print one JSON line per problem and a summary line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ProblemLine<'a> {
    object: &'a str,
    images: &'a [String],
    problem: &'a str,
}

#[derive(Serialize)]
struct VerifySummary {
    images: usize,
    packs: usize,
    chunk_refs: u64,
    chunks_hashed: u64,
    index_entries: u64,
    problems: usize,
    index_rebuilt: bool,
    seconds: f64,
}

pub fn verify(root: &Path, args: &VerifyArgs, progress: &Progress) -> Result<u8> {
    let started = Instant::now();
    let store = Store::open(root)?;
    if !store.is_writable() {
        return verify_read_only(&store, args, progress, started);
    }
    // The index can be opened by one process only: take the writer lock.
    let _lock = crate::lock_store(&store, None, false, true)?;
    if args.rebuild_index {
        let spinner = progress.spinner("rebuilding the index from packs");
        let r = verify::rebuild_index(&store).context("rebuilding the index")?;
        drop(spinner);
        say_rebuilt(&r);
    }
    let index = open_index(&store, progress)?;
    report(&store, &index, args, progress, started)
}

/// Opens the index (the caller holds the writer lock), rebuilding it from
/// the packs first when it is missing, empty or unreadable, and saying so.
pub fn open_index(store: &Store, progress: &Progress) -> Result<ChunkIndex> {
    let mut spinner = None;
    let (index, rebuilt) = verify::open_index(store, &mut |why| {
        eprintln!("puzzle: {why}: rebuilding it from the packs");
        spinner = Some(progress.spinner("rebuilding the index from packs"));
    })
    .context("opening the index")?;
    drop(spinner);
    if let Some(r) = rebuilt {
        say_rebuilt(&r);
    }
    Ok(index)
}

fn say_rebuilt(r: &verify::RebuildReport) {
    eprintln!(
        "rebuilt the index: {} chunks from {} packs",
        r.chunks, r.packs
    );
    for d in &r.bad_packs {
        eprintln!("puzzle: warning: {d} looks like a pack but is damaged; not indexed");
    }
}

/// `verify` on a store this process cannot write: no lock (a writer
/// elsewhere may be running), the index checked in a private copy.
fn verify_read_only(
    store: &Store,
    args: &VerifyArgs,
    progress: &Progress,
    started: Instant,
) -> Result<u8> {
    if args.rebuild_index {
        bail!(
            "store {} is read-only here: --rebuild-index needs to write the index; run it where the store is writable",
            store.root().display()
        );
    }
    eprintln!(
        "puzzle: warning: store {} is read-only here: checking a copy of its index, without the writer lock",
        store.root().display()
    );
    let scratch = tempfile::tempdir().context("making a scratch directory for the index copy")?;
    let index = ChunkIndex::open_copy(store, scratch.path())?;
    report(store, &index, args, progress, started)
}

fn report(
    store: &Store,
    index: &ChunkIndex,
    args: &VerifyArgs,
    progress: &Progress,
    started: Instant,
) -> Result<u8> {
    let spinner = progress.spinner("verifying");
    let report = verify::verify(store, Some(index), args.full)?;
    drop(spinner);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for p in &report.problems {
        if args.json {
            let line = Envelope::new(
                "problem",
                ProblemLine {
                    object: &p.object,
                    images: &p.images,
                    problem: &p.what,
                },
            );
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        } else {
            let who = if p.images.is_empty() {
                String::new()
            } else {
                format!(" (needed by {})", p.images.join(", "))
            };
            writeln!(out, "{}: {}{who}", p.object, p.what)?;
        }
    }
    let summary = VerifySummary {
        images: report.images,
        packs: report.packs,
        chunk_refs: report.chunk_refs,
        chunks_hashed: report.chunks_hashed,
        index_entries: report.index_entries,
        problems: report.problems.len(),
        index_rebuilt: args.rebuild_index,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        serde_json::to_writer(&mut out, &Envelope::new("verify", &summary))?;
        writeln!(out)?;
    }
    out.flush()?;
    let hashed = if args.full {
        format!(", {} chunks hashed", report.chunks_hashed)
    } else {
        String::new()
    };
    eprintln!(
        "verified {} image(s), {} pack(s), {} chunk references, {} index entries{hashed}: {} problem(s) in {:.2}s",
        report.images,
        report.packs,
        report.chunk_refs,
        report.index_entries,
        report.problems.len(),
        summary.seconds
    );
    if report.problems.iter().any(|p| p.object == "index") {
        eprintln!("puzzle: hint: `puzzle verify --rebuild-index` rebuilds the index from packs");
    }
    Ok(if report.problems.is_empty() {
        exit::OK
    } else {
        exit::PROBLEMS
    })
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Say what would be freed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Rewrite packs whose live bytes are below this fraction of their size (0 never repacks).
    #[arg(long, default_value_t = DEFAULT_REPACK_BELOW, value_name = "FRACTION")]
    repack_below: f64,
    /// Print the summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct GcSummary {
    dry_run: bool,
    images: usize,
    pinned: usize,
    blobs_removed: usize,
    bytes_removed: u64,
    packs_removed: usize,
    packs_repacked: usize,
    packs_written: usize,
    bytes_written: u64,
    chunks_moved: u64,
    chunks_removed: u64,
    dead_chunks_kept: u64,
    dead_bytes_kept: u64,
    tmp_files_removed: u64,
    tmp_bytes_removed: u64,
    /// Files of `lazy/` removed (frames of packs the store now holds whole),
    /// their bytes, and the bytes of frames that stay.
    lazy_files_removed: u64,
    lazy_bytes_removed: u64,
    lazy_bytes_kept: u64,
    images_rewritten: usize,
    layer_records_removed: usize,
    duplicate_chunks_removed: u64,
    freed_bytes: i64,
    seconds: f64,
}

pub fn gc(root: &Path, args: &GcArgs, progress: &Progress) -> Result<u8> {
    let started = Instant::now();
    if !(0.0..=1.0).contains(&args.repack_below) {
        return Err(crate::UsageError(format!(
            "--repack-below {} is out of range: give a fraction from 0 to 1",
            args.repack_below
        ))
        .into());
    }
    let store = Store::open(root)?;
    // A dry run on a store this process cannot write plans on a private copy
    // of the index, without the lock (as verify does); `tmp/` is not counted.
    let read_only = args.dry_run && !store.is_writable();
    let scratch = if read_only {
        eprintln!(
            "puzzle: warning: store {} is read-only here: planning on a copy of its index, \
             without the writer lock (temp files not counted)",
            store.root().display()
        );
        Some(tempfile::tempdir().context("making a scratch directory for the index copy")?)
    } else {
        None
    };
    // Temp files left by a crashed writer are removed with the lock (a dry
    // run only measures them): they count in what gc frees.
    let lock = match read_only {
        true => None,
        false => Some(crate::lock_store(&store, None, args.dry_run, true)?),
    };
    let tmp = lock.as_ref().map(|l| l.tmp()).unwrap_or_default();
    let index = match &scratch {
        Some(dir) => ChunkIndex::open_copy(&store, dir.path())?,
        None => open_index(&store, progress)?,
    };
    let spinner = progress.spinner("collecting garbage");
    let opts = GcOptions {
        dry_run: args.dry_run,
        // 1.0 means "any dead chunk": compare with a bound just above 1.
        repack_below: if args.repack_below >= 1.0 {
            1.0 + f64::EPSILON
        } else {
            args.repack_below
        },
    };
    let r = gc::gc(&store, &index, &opts).context("gc")?;
    // Frames lazy mounts kept of packs now stored whole are copies.
    let lazy = match read_only {
        true => puzzle_oci::lazy::prune(&store, true),
        false => puzzle_oci::lazy::prune(&store, args.dry_run),
    }
    .with_context(|| format!("pruning {}", store.root().join("lazy").display()))?;
    drop(spinner);
    let s = GcSummary {
        dry_run: args.dry_run,
        images: r.images,
        pinned: r.pinned,
        blobs_removed: r.blobs_removed,
        bytes_removed: r.bytes_removed,
        packs_removed: r.packs_removed,
        packs_repacked: r.packs_repacked,
        packs_written: r.packs_written,
        bytes_written: r.bytes_written,
        chunks_moved: r.chunks_moved,
        chunks_removed: r.chunks_removed,
        dead_chunks_kept: r.dead_chunks_kept,
        dead_bytes_kept: r.dead_bytes_kept,
        tmp_files_removed: tmp.files,
        tmp_bytes_removed: tmp.bytes,
        images_rewritten: r.images_rewritten,
        layer_records_removed: r.layer_records_removed,
        duplicate_chunks_removed: r.duplicate_chunks_removed,
        lazy_files_removed: lazy.files_removed,
        lazy_bytes_removed: lazy.bytes_removed,
        lazy_bytes_kept: lazy.bytes_kept,
        freed_bytes: r.freed() + tmp.bytes as i64 + lazy.bytes_removed as i64,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        output::print_json(&Envelope::new("gc", &s))?;
    }
    let (verb, freed) = if args.dry_run {
        ("would free", "to remove")
    } else {
        ("freed", "removed")
    };
    eprintln!(
        "gc {verb} {} ({} blob(s) {freed}, {} of them packs; {} of temp files {freed}; \
         chunks no image needs: {} {freed}, {} ({}) kept in packs at or above --repack-below {}; \
         duplicate copies of chunks: {} {freed}; frames lazy mounts kept: {} {freed}, {} kept); \
         {} sparse pack(s) repacked into {} ({} chunks moved, {} image(s) rewritten); \
         {} image(s), {} pinned, in {:.2}s",
        output::bytes(s.freed_bytes.max(0) as u64),
        r.blobs_removed,
        r.packs_removed,
        output::bytes(tmp.bytes),
        r.chunks_removed,
        r.dead_chunks_kept,
        output::bytes(r.dead_bytes_kept),
        args.repack_below,
        r.duplicate_chunks_removed,
        output::bytes(lazy.bytes_removed),
        output::bytes(lazy.bytes_kept),
        r.packs_repacked,
        r.packs_written,
        r.chunks_moved,
        r.images_rewritten,
        r.images,
        r.pinned,
        s.seconds
    );
    Ok(exit::OK)
}
