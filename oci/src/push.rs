//! Pushing a stored image to a registry: the library call behind
//! `puzzle push NAME docker://REF`.
//!
//! The registry gets the local manifest byte for byte (same digest), so
//! its blobs are the store's: the original config, the metadata blob and
//! the packs. Each blob is asked for first (`HEAD`) and skipped when the
//! repository has it at the right size; else, when the store's record
//! ([`puzzle_store::remotes`]) names another repository of the same
//! registry holding it, mounted from there; else (or when the registry
//! declines the mount) uploaded. The manifest goes last, so the tag never
//! names an image whose blobs are not all there, and the digest the
//! registry reports must be ours.
//!
//! The store is only read (the caller pins the image so gc keeps its
//! blobs); what the registry was found to hold is appended to the record.
//! An interrupted push leaves uploaded blobs in the registry, and a re-run
//! finds them there and skips them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Instant;

use puzzle_store::image::Image;
use puzzle_store::layout::MAX_JSON;
use puzzle_store::manifest::{Descriptor, MEDIA_TYPE_MANIFEST};
use puzzle_store::{remotes, BlobDigest, Store};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::source::registry::upload::{Mounted, Payload};
use crate::source::registry::{Client, Reference, RegistryRef};

/// How a blob got into the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobOutcome {
    /// The repository had it already.
    Present,
    /// Linked from another repository of the registry.
    Mounted,
    /// Its bytes were sent.
    Uploaded,
}

/// What a push is doing, for progress display; blobs are numbered from 1
/// (`of` of them: the config, the metadata blob, the packs).
pub trait PushProgress: Sync {
    /// Blob `n` is being uploaded: `done` of its `size` bytes sent.
    fn sending(&self, _n: usize, _of: usize, _digest: &str, _done: u64, _size: u64) {}
    /// Blob `n` is in the repository.
    fn blob_done(&self, _n: usize, _digest: &str, _how: BlobOutcome) {}
}

/// Shows nothing.
pub struct Quiet;

impl PushProgress for Quiet {}

/// How a push runs.
#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    /// Set from elsewhere (a signal handler) to stop the push before its
    /// next blob (an upload in progress fails): the manifest is not put.
    pub cancel: Arc<AtomicBool>,
    /// Credentials, TLS and retries.
    pub client: crate::source::ClientOptions,
}

/// What a push did (`puzzle push --json`, type "push").
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushSummary {
    pub image: String,
    /// `docker://HOST/REPO:TAG` (or `@DIGEST`) pushed to.
    pub destination: String,
    /// The manifest's digest, the local one and the registry's.
    pub manifest: String,
    pub manifest_bytes: u64,
    /// Blobs the manifest names: the config, the metadata blob, the packs.
    pub blobs: usize,
    pub blobs_uploaded: usize,
    /// Found in the repository already (not sent).
    pub blobs_present: usize,
    /// Mounted from another repository of the registry (not sent).
    pub blobs_mounted: usize,
    /// Bytes of the blobs sent (the manifest aside).
    pub bytes_uploaded: u64,
    /// Bytes of the blobs not sent, present or mounted.
    pub bytes_skipped: u64,
    pub seconds: f64,
}

/// Checks a push destination: what follows `docker://`.
pub fn check_destination(reference: &str) -> Result<()> {
    RegistryRef::parse(reference).map(drop)
}

/// Pushes `image` (opened from `store`, pinned by the caller) to
/// `destination`, what follows `docker://`.
pub fn push(
    store: &Store,
    image: &Image,
    destination: &str,
    opts: &PushOptions,
    progress: &dyn PushProgress,
) -> Result<PushSummary> {
    let started = Instant::now();
    let r = RegistryRef::parse(destination)?;
    let bytes = store.read_blob(&image.manifest_digest, MAX_JSON)?;
    let digest = image.manifest_digest.to_string();
    if let Reference::Digest(d) = &r.reference {
        if *d != digest {
            return Err(Error::Invalid(format!(
                "{r}: the image's manifest is {digest}, so it cannot be pushed as {d}; \
                 push it by tag or as @{digest}"
            )));
        }
    }
    let client = Client::with_options(r.clone(), &opts.client)?.with_actions(&["pull", "push"]);
    let m = &image.manifest;
    let blobs: Vec<&Descriptor> = std::iter::once(&m.config).chain(&m.layers).collect();
    let mut s = PushSummary {
        image: image.name.clone(),
        destination: r.to_string(),
        manifest: digest,
        manifest_bytes: bytes.len() as u64,
        blobs: blobs.len(),
        ..PushSummary::default()
    };
    let of = blobs.len();
    for (i, desc) in blobs.into_iter().enumerate() {
        if opts.cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let how = push_blob(store, &client, desc, opts, &|done| {
            progress.sending(i + 1, of, &desc.digest.to_string(), done, desc.size)
        })
        .map_err(|e| {
            if opts.cancel.load(Ordering::SeqCst) {
                Error::Cancelled
            } else {
                e
            }
        })?;
        // Only a hint for later pushes: failing to write it costs uploads.
        let _ = remotes::record(store, &r.host, &r.repo, &[desc.digest]);
        match how {
            BlobOutcome::Present => s.blobs_present += 1,
            BlobOutcome::Mounted => s.blobs_mounted += 1,
            BlobOutcome::Uploaded => s.blobs_uploaded += 1,
        }
        if how == BlobOutcome::Uploaded {
            s.bytes_uploaded += desc.size;
        } else {
            s.bytes_skipped += desc.size;
        }
        progress.blob_done(i + 1, &desc.digest.to_string(), how);
    }
    if opts.cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }
    let answered = client.put_manifest(r.reference.as_str(), MEDIA_TYPE_MANIFEST, bytes)?;
    if let Some(d) = answered.filter(|d| *d != s.manifest) {
        return Err(Error::DigestMismatch {
            what: format!("{r}: the manifest the registry stored"),
            expected: s.manifest,
            actual: d,
        });
    }
    s.seconds = started.elapsed().as_secs_f64();
    Ok(s)
}

/// Gets one blob into the repository: found there, mounted, or uploaded.
fn push_blob(
    store: &Store,
    client: &Client,
    desc: &Descriptor,
    opts: &PushOptions,
    sent: &(dyn Fn(u64) + Sync),
) -> Result<BlobOutcome> {
    let digest = desc.digest.to_string();
    let path = store.blob_path(&desc.digest);
    let size = std::fs::metadata(&path)
        .map_err(|_| missing(store, &desc.digest))?
        .len();
    if size != desc.size {
        return Err(Error::SizeMismatch {
            what: format!("blob {digest} in store {}", store.root().display()),
            expected: desc.size,
            actual: size,
        });
    }
    if client.blob_size(&digest)? == Some(size) {
        return Ok(BlobOutcome::Present);
    }
    let holder = remotes::holders(store, &client.r.host, &desc.digest)
        .into_iter()
        .find(|repo| *repo != client.r.repo);
    let session = match holder {
        Some(from) => match client.mount(&digest, &from)? {
            Mounted::Yes => return Ok(BlobOutcome::Mounted),
            Mounted::UploadTo(session) => session,
        },
        None => client.start_upload(&digest)?,
    };
    // reqwest reads the body on its own thread, so the file reader only
    // counts; a scoped ticker reports the count to `sent`.
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = Arc::clone(&done);
    let payload = Payload::File {
        path,
        size,
        sent: Arc::new(move |n| seen.store(n, Ordering::Relaxed)),
        cancel: Arc::clone(&opts.cancel),
    };
    // Ends the ticker at once when dropped (a sleep would hold the upload
    // up to a tick past its end).
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let tick = std::time::Duration::from_millis(100);
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                sent(done.load(Ordering::Relaxed));
            }
        });
        let r = client.put_blob(&session, &digest, &payload);
        drop(stop);
        r
    })?;
    sent(size);
    Ok(BlobOutcome::Uploaded)
}

fn missing(store: &Store, d: &BlobDigest) -> Error {
    Error::BlobMissing {
        digest: d.to_string(),
        location: format!("store {} (run `puzzle verify`)", store.root().display()),
    }
}
