//! `puzzle pull`: the registry's manifest, the store and its lock, a
//! progress bar per blob and the summary around the library's pull
//! ([`puzzle_oci::pull`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use puzzle_oci::pull::{self, PullOptions, PullProgress, PullSummary, Remote};
use puzzle_store::{BlobDigest, Store};

use crate::output::{self, Envelope, Progress};
use crate::{exit, UsageError};

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The image: docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST], a puzzle image
    /// (as `puzzle push` writes it). HTTPS, but plain HTTP for
    /// localhost/127.0.0.1; credentials as the flags below say.
    source: String,
    /// Name to store the image under (replaces an image of the same name).
    #[arg(long, short, value_parser = crate::build::parse_tag)]
    tag: String,
    /// Compression threads [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: crate::registry_args::RegistryArgs,
}

/// Pulls; the first SIGINT or SIGTERM stops it before it stores anything
/// (exit [`exit::INTERRUPTED`]).
pub fn run(root: &Path, args: &PullArgs, progress: &Progress) -> Result<u8> {
    let interrupted = crate::interrupt_flag()?;
    match fetch(root, args, progress, &interrupted) {
        Err(_) if interrupted.load(Ordering::SeqCst) => {
            let msg = "interrupted, nothing stored";
            if args.json {
                output::print_json(&output::error_record(msg, exit::INTERRUPTED))?;
            }
            eprintln!("{msg}");
            Ok(exit::INTERRUPTED)
        }
        r => r,
    }
}

fn fetch(
    root: &Path,
    args: &PullArgs,
    progress: &Progress,
    interrupted: &Arc<AtomicBool>,
) -> Result<u8> {
    let started = Instant::now();
    let Some(reference) = args.source.strip_prefix("docker://") else {
        return Err(UsageError(format!(
            "{}: pull takes a registry image, docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]",
            args.source
        ))
        .into());
    };
    let what = format!("pulling {} from {}", args.tag, args.source);
    let remote =
        pull::open_remote(reference, &args.registry.options()).with_context(|| what.clone())?;
    // A new store takes the image's settings; an existing one must have its
    // chunker (checked by the pull).
    let store = match Store::open(root) {
        Err(puzzle_store::Error::NotAStore(_)) => {
            let config = pull::config_of(&remote.manifest, &remote.reference)
                .with_context(|| what.clone())?;
            Store::open_or_create(root, &config)?
        }
        r => r?,
    };
    let lock = crate::lock_store(&store, Some(interrupted), false, false)?;
    let index = crate::lifecycle::open_index(&store, progress)?;
    let opts = PullOptions {
        threads: args
            .threads
            .unwrap_or_else(|| PullOptions::default().threads),
        cancel: interrupted.clone(),
    };
    let bars = Bars {
        progress,
        open: Mutex::new(HashMap::new()),
    };
    let from = Remote {
        blobs: &remote.blobs,
        manifest: &remote.manifest,
        origin: &remote.reference,
    };
    let pulled = pull::pull(&store, &index, &from, &args.tag, &opts, &bars);
    bars.clear();
    let mut summary = pulled.with_context(|| what.clone())?;
    // What came over the wire: the manifest, then every range response.
    let t = remote.blobs.transfer();
    summary.bytes_transferred = remote.manifest.len() as u64 + t.bytes;
    summary.requests = t.requests;
    summary.seconds = started
        .elapsed()
        .saturating_sub(lock.waited())
        .as_secs_f64();
    report(&summary, args.json)?;
    Ok(exit::OK)
}

/// One bar per blob being fetched: bytes of the known total, with rate.
struct Bars<'a> {
    progress: &'a Progress,
    open: Mutex<HashMap<BlobDigest, ProgressBar>>,
}

impl Bars<'_> {
    fn clear(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        for bar in open.into_values() {
            bar.finish_and_clear();
        }
    }
}

impl PullProgress for Bars<'_> {
    fn blob_start(&self, digest: &BlobDigest, what: &str, total: u64) {
        let label = format!("{what} {}", &digest.hex()[..8]);
        let bar = self.progress.bar(&label, total);
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*digest, bar);
    }

    fn blob_progress(&self, digest: &BlobDigest, done: u64) {
        if let Some(bar) = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            bar.set_position(done);
        }
    }

    fn blob_done(&self, digest: &BlobDigest) {
        let bar = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
}

fn report(s: &PullSummary, json: bool) -> Result<()> {
    if json {
        return output::print_json(&Envelope::new("pull", s));
    }
    eprintln!(
        "pulled {} from {} in {:.2}s\n  remote manifest {}\n  local manifest  {}{}",
        s.image,
        s.reference,
        s.seconds,
        s.remote_manifest,
        s.manifest,
        if s.identical { " (identical)" } else { "" }
    );
    eprintln!(
        "  chunks: {} in the store, {} fetched ({}) from {} frame(s) of {} of {} pack(s); \
         {} pack(s) adopted whole ({}); {} transferred in {} request(s); \
         stored {} in {} new pack(s)",
        s.chunks_local,
        s.chunks_fetched,
        output::bytes(s.chunk_bytes_fetched),
        s.frames_fetched,
        s.blobs - s.blobs_skipped - s.packs_adopted,
        s.blobs,
        s.packs_adopted,
        output::bytes(s.pack_bytes_adopted),
        output::bytes(s.bytes_transferred),
        s.requests,
        output::bytes(s.stored_bytes),
        s.packs_written
    );
    Ok(())
}
