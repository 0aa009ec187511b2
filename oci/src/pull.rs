//! Pulling a puzzle image from a registry into a store: the library call
//! behind `puzzle pull` (docs/FORMAT.md, "Pull").
//!
//! The remote image is a manifest, a metadata blob and packs, read through
//! a [`BlobRead`] (a registry's [`RegistryBlobs`], or [`MemBlobs`] in
//! tests). Only the chunks the store lacks are fetched: grouped by the remote
//! frame that holds them, frames read by range (a pack's neighbouring frames
//! in one request), each frame decompressed, every chunk checked against its
//! BLAKE3 id and stored through the store's own [`ChunkWriter`] (local frame
//! target and level). A pack none of whose chunks the store holds (every
//! pack, for an empty store) is instead fetched whole, checked and adopted
//! as it is (`adopt.rs`), so its chunks keep the remote's places. Then the image is written as a local twin: the same
//! tree with the chunk table pointing at the store's copies, and a manifest
//! as the store writes them; `index.json` names the twin, with the remote
//! manifest's digest and reference in its annotations.
//!
//! [`MemBlobs`]: puzzle_store::blobs::MemBlobs

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use puzzle_chunker::ChunkId;
use puzzle_store::blobs::BlobRead;
use puzzle_store::image::{write_image, MAX_METADATA};
use puzzle_store::index::ChunkIndex;
use puzzle_store::layout::{FORMAT_VERSION, MAX_JSON};
use puzzle_store::manifest::*;
use puzzle_store::meta::{self, MetaBlob};
use puzzle_store::pack::{check_loc, chunk_in_frame, decompress_frame, ChunkLoc};
use puzzle_store::prefetch;
use puzzle_store::writer::ChunkWriter;
use puzzle_store::{BlobDigest, Store};
use serde::Serialize;

use crate::error::{Error, Result};

pub use crate::source::registry::ranges::{
    coalesce, gap, open_remote, request_cap, RegistryBlobs, RemoteImage, Transfer, GAP, REQUEST_CAP,
};

/// Frame bytes asked for in one `read_ranges` call (one pack's frames, a
/// window at a time): bounds the memory a pull holds for fetched frames.
pub const WINDOW: u64 = 16 << 20;

/// How a pull runs.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Compression threads.
    pub threads: usize,
    /// Set from elsewhere (a signal handler) to stop the pull: it then
    /// stores nothing and returns [`Error::Cancelled`].
    pub cancel: Arc<AtomicBool>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a pull is fetching, blob by blob, for progress display. Every
/// method defaults to nothing.
pub trait PullProgress: Sync {
    /// Fetching from blob `digest` (`what`: "metadata", "config" or
    /// "pack") starts: `total` bytes to fetch from it.
    fn blob_start(&self, _digest: &BlobDigest, _what: &str, _total: u64) {}
    /// `done` of those bytes fetched.
    fn blob_progress(&self, _digest: &BlobDigest, _done: u64) {}
    /// Done with blob `digest`.
    fn blob_done(&self, _digest: &BlobDigest) {}
}

/// Shows nothing.
pub struct Quiet;

impl PullProgress for Quiet {}

/// What a pull did (`puzzle pull --json`, type "pull").
#[derive(Clone, Debug, Default, Serialize)]
pub struct PullSummary {
    pub image: String,
    /// Where the image came from (`HOST/REPO:TAG`).
    pub reference: String,
    /// The manifest's digest in the registry (kept in `index.json`).
    pub remote_manifest: String,
    /// The local twin's manifest, which `index.json` names.
    pub manifest: String,
    pub metadata: String,
    /// Whether the twin is the remote manifest byte for byte (the store
    /// holds the remote packs themselves).
    pub identical: bool,
    /// Distinct chunks the image uses.
    pub chunks: u64,
    /// Of those, found in the store.
    pub chunks_local: u64,
    /// Of those, fetched.
    pub chunks_fetched: u64,
    /// Raw bytes of the chunks fetched.
    pub chunk_bytes_fetched: u64,
    /// Remote frames read (each holds at least one chunk the store lacked).
    pub frames_fetched: u64,
    /// Their compressed bytes.
    pub frame_bytes_fetched: u64,
    /// Packs fetched whole and stored as they are (the store held none of
    /// their chunks); their frames are not counted in `frames_fetched`.
    pub packs_adopted: usize,
    /// Their bytes.
    pub pack_bytes_adopted: u64,
    /// Packs the remote image names.
    pub blobs: usize,
    /// Of those, packs nothing was fetched from.
    pub blobs_skipped: usize,
    /// Bytes read from the remote: manifest, metadata, config (unless
    /// stored already) and frames. The CLI counts what came over the wire
    /// instead (coalescing gaps and retries included).
    pub bytes_transferred: u64,
    /// HTTP requests for blob ranges (set by the caller; 0 otherwise).
    pub requests: u64,
    /// Compressed bytes written to new local packs (adopted packs aside).
    pub stored_bytes: u64,
    pub packs_written: usize,
    pub seconds: f64,
}

/// The one-line refusal of a manifest that is not a puzzle image.
fn not_puzzle(origin: &str, why: &str) -> Error {
    Error::Invalid(format!(
        "{origin} is not a puzzle image ({why}); `puzzle build {origin}` converts a plain image"
    ))
}

/// Parses `bytes` as a puzzle manifest this store can take: a puzzle image
/// of this format whose chunks were cut with the store's chunker
/// (otherwise no chunk id would match). The compression may differ.
pub fn check_manifest(store: &Store, bytes: &[u8], origin: &str) -> Result<Manifest> {
    let manifest = parse_puzzle(bytes, origin)?;
    let theirs = manifest
        .annotations
        .get(ANNOTATION_CHUNKER)
        .map_or("none", String::as_str);
    let ours = store.config().chunker_label();
    if theirs != ours {
        return Err(Error::Invalid(format!(
            "{origin} was chunked with {theirs}, store {} with {ours}: no chunk would dedup; \
             pull it into a store created with its settings (--store of a new directory)",
            store.root().display()
        )));
    }
    Ok(manifest)
}

/// Parses `bytes` as a puzzle image manifest of this format.
fn parse_puzzle(bytes: &[u8], origin: &str) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|_| not_puzzle(origin, "its manifest is not an OCI image manifest"))?;
    let version = manifest.annotations.get(ANNOTATION_FORMAT);
    if manifest.media_type != MEDIA_TYPE_MANIFEST
        || version.is_none()
        || manifest.metadata().is_none()
    {
        return Err(not_puzzle(
            origin,
            "no dev.puzzle.format.version annotation or metadata layer",
        ));
    }
    if version.map(String::as_str) != Some(&FORMAT_VERSION.to_string()) {
        return Err(Error::Unsupported(format!(
            "{origin} is a puzzle format {} image; this puzzle reads format {FORMAT_VERSION}",
            version.map_or("?", String::as_str)
        )));
    }
    // Packs, then at most one prefetch list, last (older images have none).
    let mut rest = &manifest.layers[1..];
    if let Some((last, packs)) = rest.split_last() {
        if last.media_type == MEDIA_TYPE_PREFETCH {
            rest = packs;
        }
    }
    if let Some(d) = rest.iter().find(|d| d.media_type != MEDIA_TYPE_PACK) {
        return Err(not_puzzle(
            origin,
            &format!("layer {} has media type {}", d.digest, d.media_type),
        ));
    }
    Ok(manifest)
}

/// The settings of a store made to receive the image of `bytes`: its
/// chunker and compression annotations (a new store pulls with the
/// remote's settings, so the pulled frames can be the remote's).
pub fn config_of(bytes: &[u8], origin: &str) -> Result<puzzle_store::StoreConfig> {
    let manifest = parse_puzzle(bytes, origin)?;
    let get = |k: &str| manifest.annotations.get(k).map_or("", String::as_str);
    puzzle_store::create::parse_labels(get(ANNOTATION_CHUNKER), get(ANNOTATION_COMPRESSION))
        .ok_or_else(|| {
            not_puzzle(
                origin,
                "no chunker and compression annotations this puzzle reads",
            )
        })
}

/// Reads blob `d` (`size` bytes, at most `limit`) whole from `remote` and
/// checks its digest.
pub(crate) fn fetch_blob(
    remote: &dyn BlobRead,
    d: &Descriptor,
    limit: u64,
    what: &str,
    progress: &dyn PullProgress,
) -> Result<Vec<u8>> {
    if d.size > limit {
        return Err(Error::TooLarge {
            what: format!("{what} {}", d.digest),
            size: d.size,
            limit,
        });
    }
    progress.blob_start(&d.digest, what, d.size);
    let mut buf = vec![0u8; d.size as usize];
    remote.read_at(&d.digest, 0, &mut buf)?;
    let actual = BlobDigest::of(&buf);
    if actual != d.digest {
        return Err(Error::DigestMismatch {
            what: format!("{what} blob"),
            expected: d.digest.to_string(),
            actual: actual.to_string(),
        });
    }
    progress.blob_progress(&d.digest, d.size);
    progress.blob_done(&d.digest);
    Ok(buf)
}

/// A remote frame holding chunks the store lacks.
struct FrameWant {
    /// The frame (the first wanted chunk's location).
    loc: ChunkLoc,
    /// The chunks to take from it.
    chunks: Vec<(ChunkId, ChunkLoc)>,
}

/// The image to pull.
pub struct Remote<'a> {
    /// Where its blobs are read.
    pub blobs: &'a dyn BlobRead,
    /// Its manifest's bytes (their digest is the remote manifest digest).
    pub manifest: &'a [u8],
    /// Where it comes from (`HOST/REPO:TAG`), for messages and `index.json`.
    pub origin: &'a str,
}

/// Pulls the image `from` describes into `store` and tags it `tag`
/// (replacing an image of that name). The
/// caller holds the store's writer lock and has its index open. Nothing is
/// kept unless the whole image is: on an error or a cancel, new packs are
/// deleted with their temp files.
pub fn pull(
    store: &Store,
    index: &ChunkIndex,
    from: &Remote<'_>,
    tag: &str,
    opts: &PullOptions,
    progress: &dyn PullProgress,
) -> Result<PullSummary> {
    let started = Instant::now();
    let (remote, manifest_bytes, origin) = (from.blobs, from.manifest, from.origin);
    puzzle_store::layout::check_name(tag)?;
    let manifest = check_manifest(store, manifest_bytes, origin)?;
    let remote_digest = BlobDigest::of(manifest_bytes);
    let mut s = PullSummary {
        image: tag.to_string(),
        reference: origin.to_string(),
        remote_manifest: remote_digest.to_string(),
        bytes_transferred: manifest_bytes.len() as u64,
        ..PullSummary::default()
    };

    // Metadata: checked against its digest, then record by record.
    let md = manifest.metadata().expect("checked");
    let stored = fetch_blob(remote, md, MAX_METADATA, "metadata", progress)?;
    s.bytes_transferred += md.size;
    let raw = if md.media_type == MEDIA_TYPE_METADATA_ZSTD {
        meta::decompress(&stored, MAX_METADATA)?
    } else {
        stored
    };
    let meta = MetaBlob::open(raw)?;
    meta.check()?;
    let pack_sizes: HashMap<BlobDigest, u64> =
        manifest.packs().map(|p| (p.digest, p.size)).collect();
    let order: Vec<BlobDigest> = manifest.packs().map(|p| p.digest).collect();
    if let Some(p) = meta.packs()?.iter().find(|p| !pack_sizes.contains_key(p)) {
        return Err(Error::Invalid(format!(
            "{origin}: its metadata names pack {p}, which its manifest does not list"
        )));
    }
    s.blobs = order.len();

    // Frames a lazy mount kept are read from there (docs/FORMAT.md, "Lazy
    // mounts"), checked like the others.
    let kept = crate::lazy::kept_of(store, pack_sizes.keys());
    let (frame_table, kept_first);
    let remote: &dyn BlobRead = match &kept {
        Some(k) => {
            frame_table = crate::lazy::FrameTable::of(&meta)?;
            kept_first = crate::lazy::KeptFirst {
                kept: k,
                frames: &frame_table,
                remote,
            };
            &kept_first
        }
        None => remote,
    };

    // The config, unless the store has it.
    let config_bytes = if store.has_blob(&manifest.config.digest) {
        None
    } else {
        let c = fetch_blob(remote, &manifest.config, MAX_JSON, "config", progress)?;
        s.bytes_transferred += c.len() as u64;
        Some(c)
    };

    // The prefetch list, checked as text: it names paths, so it stays valid
    // for the metadata relocated to this store's packs.
    let prefetch = match manifest.prefetch() {
        Some(d) => {
            let b = fetch_blob(remote, d, prefetch::MAX_TRACE, "prefetch list", progress)?;
            s.bytes_transferred += b.len() as u64;
            prefetch::parse(&b).map_err(|e| {
                Error::Invalid(format!(
                    "{origin}: its prefetch list {}: {}",
                    d.digest,
                    puzzle_store::error::line(&e)
                ))
            })?;
            Some((d.clone(), b))
        }
        None => None,
    };

    // Index entries for packs that are gone or damaged would make the twin
    // point at nothing: drop them first, as a build does.
    puzzle_store::verify::check_packs(store, index)?;

    // What is missing, by remote frame; the packs holding a chunk the
    // store has (the others are adopted whole).
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let mut partly_local: HashSet<BlobDigest> = HashSet::new();
    let mut want: BTreeMap<BlobDigest, BTreeMap<u64, FrameWant>> = BTreeMap::new();
    for i in 0..meta.chunk_count() {
        let rec = meta.chunk(i as u32)?;
        if !seen.insert(rec.id) {
            continue;
        }
        s.chunks += 1;
        if index.has(&rec.id)? {
            s.chunks_local += 1;
            partly_local.insert(rec.loc.pack);
            continue;
        }
        let frame = want
            .entry(rec.loc.pack)
            .or_default()
            .entry(rec.loc.offset)
            .or_insert(FrameWant {
                loc: rec.loc,
                chunks: Vec::new(),
            });
        if (frame.loc.clen, frame.loc.frame_rlen) != (rec.loc.clen, rec.loc.frame_rlen) {
            return Err(Error::Invalid(format!(
                "{origin}: its metadata gives two lengths for the frame at {} of pack {}",
                rec.loc.offset, rec.loc.pack
            )));
        }
        frame.chunks.push((rec.id, rec.loc));
    }

    // Fetch, check and store, pack by pack in manifest order, frames in
    // pack order: the order the remote build stored them in.
    let mut writer = ChunkWriter::new(store, index, opts.threads.max(1));
    writer.cancel_on(opts.cancel.clone());
    let mut adopted = crate::adopt::Adopted::new(store, origin);
    for pack in &order {
        let Some(frames) = want.remove(pack) else {
            s.blobs_skipped += 1;
            continue;
        };
        if !partly_local.contains(pack) {
            let wanted: Vec<ChunkId> = frames
                .values()
                .flat_map(|f| f.chunks.iter().map(|c| c.0))
                .collect();
            let n = wanted.len() as u64;
            let raw: u64 = frames
                .values()
                .flat_map(|f| f.chunks.iter().map(|c| u64::from(c.1.rlen)))
                .sum();
            let size = pack_sizes[pack];
            adopted.fetch(remote, pack, size, wanted, &opts.cancel, progress)?;
            s.chunks_fetched += n;
            s.chunk_bytes_fetched += raw;
            s.packs_adopted += 1;
            s.pack_bytes_adopted += size;
            continue;
        }
        let frames: Vec<FrameWant> = frames.into_values().collect();
        let total: u64 = frames.iter().map(|f| u64::from(f.loc.clen)).sum();
        progress.blob_start(pack, "pack", total);
        let mut done = 0u64;
        let mut rest = &frames[..];
        while !rest.is_empty() {
            if opts.cancel.load(Ordering::SeqCst) {
                return Err(Error::Cancelled);
            }
            // A window of frames: at least one, at most WINDOW bytes.
            let mut n = 0;
            let mut bytes = 0u64;
            while n < rest.len() && (n == 0 || bytes + u64::from(rest[n].loc.clen) <= WINDOW) {
                bytes += u64::from(rest[n].loc.clen);
                n += 1;
            }
            let (window, after) = rest.split_at(n);
            rest = after;
            for f in window {
                check_loc(&f.chunks[0].0, &f.loc)?;
            }
            let mut bufs: Vec<Vec<u8>> = window
                .iter()
                .map(|f| vec![0u8; f.loc.clen as usize])
                .collect();
            let mut ranges: Vec<(u64, &mut [u8])> = window
                .iter()
                .zip(bufs.iter_mut())
                .map(|(f, b)| (f.loc.offset, b.as_mut_slice()))
                .collect();
            remote.read_ranges(pack, &mut ranges)?;
            for (f, buf) in window.iter().zip(&bufs) {
                let raw = decompress_frame(buf, f.loc.frame_rlen, &f.chunks[0].0, pack)?;
                for (id, loc) in &f.chunks {
                    let data = chunk_in_frame(&raw, id, loc).map_err(Error::from)?;
                    s.chunk_bytes_fetched += data.len() as u64;
                    writer.put(*id, data.to_vec()).map_err(|e| match e {
                        puzzle_store::Error::Interrupted => Error::Cancelled,
                        e => e.into(),
                    })?;
                    s.chunks_fetched += 1;
                }
                s.frames_fetched += 1;
            }
            done += bytes;
            s.frame_bytes_fetched += bytes;
            progress.blob_progress(pack, done);
        }
        progress.blob_done(pack);
    }
    s.bytes_transferred += s.frame_bytes_fetched + s.pack_bytes_adopted;
    // The last point to stop at: from here the image is committed.
    if opts.cancel.load(Ordering::SeqCst) {
        return Err(Error::Cancelled);
    }

    // Commit as a build does: packs (durable) -> index -> metadata, config,
    // manifest -> tag.
    let written = writer.finish()?;
    adopted.index(index)?;
    for p in &written.packs {
        index.add_pack(p)?;
    }
    index.flush()?;
    s.stored_bytes = written.stored_bytes;
    s.packs_written = written.packs.len();
    let local = meta.relocate(|rec| {
        index
            .get(&rec.id)?
            .ok_or(puzzle_store::Error::ChunkNotFound(rec.id))
    })?;
    let prefetch = match prefetch {
        Some((d, bytes)) => {
            store.write_blob(&bytes)?;
            Some(d)
        }
        None => None,
    };
    let (desc, md_desc, _) = write_image(
        store,
        &local,
        manifest.config.clone(),
        config_bytes.as_deref(),
        prefetch,
    )?;
    let mut tagged = desc.clone();
    tagged.annotations.insert(
        ANNOTATION_ORIGIN_MANIFEST.to_string(),
        remote_digest.to_string(),
    );
    tagged
        .annotations
        .insert(ANNOTATION_ORIGIN_REF.to_string(), origin.to_string());
    store.set_tag(tag, &tagged)?;
    s.manifest = desc.digest.to_string();
    s.metadata = md_desc.digest.to_string();
    s.identical = desc.digest == remote_digest;
    s.seconds = started.elapsed().as_secs_f64();
    Ok(s)
}
