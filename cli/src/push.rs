//! `puzzle push`: the image pinned, a bar per blob sent, and the summary
//! around the library's push ([`puzzle_oci::push`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use puzzle_oci::push::{self, BlobOutcome, PushOptions, PushProgress, PushSummary};
use puzzle_store::{image, Store};

use crate::output::{self, Envelope, Progress};
use crate::{exit, UsageError};

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Image name, as given to `build --tag`.
    name: String,
    /// Where to: docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST] (HTTPS, but plain
    /// HTTP for localhost/127.0.0.1; credentials as the flags below say).
    destination: String,
    /// First store FILE, a trace written by `puzzle mount --trace`, with the
    /// image as its prefetch list: the image gets a new manifest (NAME is
    /// retagged to it), and that is what is pushed.
    #[arg(long, value_name = "FILE")]
    prefetch: Option<std::path::PathBuf>,
    /// Print the summary as one JSON line on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: crate::registry_args::RegistryArgs,
}

/// Pushes; the first SIGINT or SIGTERM stops the push before its manifest
/// (exit [`exit::INTERRUPTED`]); a second one ends the process at once.
pub fn run(root: &Path, args: &PushArgs, progress: &Progress) -> Result<u8> {
    let Some(dest) = args.destination.strip_prefix("docker://") else {
        return Err(UsageError(format!(
            "cannot push to {}: give a registry destination, docker://[HOST[:PORT]/]REPO[:TAG]",
            args.destination
        ))
        .into());
    };
    push::check_destination(dest).map_err(|e| UsageError(e.to_string()))?;
    let interrupted = crate::interrupt_flag()?;
    let store = Store::open(root)?;
    if let Some(path) = &args.prefetch {
        let trace = crate::prefetch::read(path)?;
        let lock = crate::lock_store(&store, Some(&interrupted), false, false)?;
        let set = crate::prefetch::attach(&store, &args.name, &trace)?;
        drop(lock);
        eprintln!(
            "stored the prefetch list ({} ranges) with {}: its manifest is now {}",
            set.entries, args.name, set.manifest.digest
        );
    }
    // Pinned for the whole push: a concurrent gc keeps every blob it sends.
    let (img, pin) = image::open_pinned(&store, &args.name)
        .with_context(|| format!("opening image {}", args.name))?;
    crate::warn_unpinned(&store, &args.name, &pin);
    let opts = PushOptions {
        cancel: interrupted.clone(),
        client: args.registry.options(),
    };
    let bars = Bars {
        progress,
        open: Mutex::new(HashMap::new()),
    };
    let pushed = push::push(&store, &img, dest, &opts, &bars);
    bars.clear();
    drop(pin);
    match pushed {
        Err(_) if interrupted.load(Ordering::SeqCst) => {
            let msg = "interrupted; the manifest was not pushed (blobs sent stay in the \
                       registry: pushing again skips them)";
            if args.json {
                output::print_json(&output::error_record(msg, exit::INTERRUPTED))?;
            }
            eprintln!("{msg}");
            Ok(exit::INTERRUPTED)
        }
        // The library's errors name the registry and repository, or the store.
        Err(e) => Err(anyhow::Error::new(e).context(format!("pushing {}", args.name))),
        Ok(s) => {
            report(&s, args.json)?;
            Ok(exit::OK)
        }
    }
}

/// A bar per blob being uploaded (bytes and rate).
struct Bars<'a> {
    progress: &'a Progress,
    open: Mutex<HashMap<usize, ProgressBar>>,
}

impl Bars<'_> {
    fn clear(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        for bar in open.into_values() {
            bar.finish_and_clear();
        }
    }
}

impl PushProgress for Bars<'_> {
    fn sending(&self, n: usize, of: usize, digest: &str, done: u64, size: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let short = digest.strip_prefix("sha256:").unwrap_or(digest);
        let label = format!("blob {n}/{of} {}", &short[..short.len().min(8)]);
        open.entry(n)
            .or_insert_with(|| self.progress.bar(&label, size))
            .set_position(done);
    }

    fn blob_done(&self, n: usize, _digest: &str, _how: BlobOutcome) {
        let bar = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&n);
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
}

fn report(s: &PushSummary, json: bool) -> Result<()> {
    if json {
        return output::print_json(&Envelope::new("push", s));
    }
    // The digest is the data: stdout, for scripts.
    println!("{}", s.manifest);
    let sent = if s.blobs_uploaded == 0 {
        String::new()
    } else {
        let rate = s.bytes_uploaded as f64 / s.seconds.max(1e-9) / 1e6;
        format!(" ({}, {rate:.0} MB/s)", output::bytes(s.bytes_uploaded))
    };
    eprintln!(
        "pushed {} to {} in {:.2}s",
        s.image, s.destination, s.seconds
    );
    eprintln!(
        "  blobs: {} uploaded{sent}, {} already there, {} mounted from other repositories ({} not sent)",
        s.blobs_uploaded,
        s.blobs_present,
        s.blobs_mounted,
        output::bytes(s.bytes_skipped),
    );
    Ok(())
}
