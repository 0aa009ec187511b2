//! Lazy images: a puzzle image in a registry, served before it is local
//! (`puzzle mount docker://REF DIR`; docs/FORMAT.md, "Lazy mounts").
//!
//! [`open`] fetches the manifest's metadata blob (the config too, unless
//! stored) and nothing else. Each chunk the store already holds for one of
//! its images is pointed at the store's copy: the image as served is the
//! remote tree with a chunk table mixing local and remote places. That
//! table, as a metadata blob and a manifest, is written to the store and
//! pinned while the mount lives, so gc keeps the local packs it uses.
//! Remote frames are read through [`LazyBlobs`]; fetched ones are kept
//! under `lazy/` ([`kept`]) for remounts, `pull` and other images of the
//! same packs.

pub mod blobs;
pub mod kept;
pub mod reader;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use puzzle_chunker::ChunkId;
use puzzle_store::blobs::BlobRead;
use puzzle_store::image::{
    read_manifest, read_metadata, write_image_sized, MappedImage, MAX_METADATA,
};
use puzzle_store::layout::MAX_JSON;
use puzzle_store::manifest::MEDIA_TYPE_METADATA_ZSTD;
use puzzle_store::meta::{self, MetaBlob};
use puzzle_store::mmap::Mapped;
use puzzle_store::pack::ChunkLoc;
use puzzle_store::{BlobDigest, Store};
use serde::Serialize;

pub use blobs::{FrameTable, LazyBlobs, LazyParts, LazyStats};
pub use kept::{FrameKey, Kept};
pub use reader::KeptFirst;

use crate::error::Result;
use crate::pull::{check_manifest, fetch_blob, Quiet};

/// How a lazy image is served.
#[derive(Clone, Debug)]
pub struct LazyOptions {
    /// How long a read waits for the registry before it fails (EIO).
    pub deadline: Duration,
    /// Most bytes the kept frames of all lazy mounts may hold (`lazy/`);
    /// None: unbounded.
    pub cache_max: Option<u64>,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            deadline: Duration::from_secs(30),
            cache_max: None,
        }
    }
}

/// What opening a lazy image found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LazyOpened {
    /// Where the image is (`HOST/REPO:TAG`).
    pub reference: String,
    pub remote_manifest: String,
    /// Distinct chunks of the image.
    pub chunks: u64,
    /// Of those, held by the store for one of its images.
    pub chunks_local: u64,
    /// Remote frames holding the other chunks, and their bytes.
    pub frames_needed: u64,
    pub frame_bytes_needed: u64,
    /// Of those, kept from an earlier lazy mount.
    pub frames_kept: u64,
    pub frame_bytes_kept: u64,
    /// Bytes fetched to open: the metadata blob and the config.
    pub bytes_fetched: u64,
    /// Whether fetched frames are kept in the store (not for a read-only one).
    pub keeping: bool,
    /// Frames the image's prefetch list names that are not local.
    pub prefetch_frames: u64,
}

/// An image opened lazily: what the mount serves.
pub struct LazyImage {
    /// The image as served (the mixed chunk table), pinned.
    pub image: MappedImage,
    pub blobs: LazyBlobs,
    /// The remote frames holding chunks the store lacks, in pack order.
    pub needed: Vec<FrameKey>,
    /// The frames the image's prefetch list names, in its order, without
    /// those local already (none if it has no list).
    pub prefetch: Vec<FrameKey>,
    pub opened: LazyOpened,
}

/// The chunks of `wanted` one metadata blob (by its index) places.
type Placed = (usize, Vec<(ChunkId, ChunkLoc)>);

/// Where each chunk of `wanted` that the store's images use is stored, for
/// chunks in packs the store holds; and pins on those images until the
/// caller's own pin is taken. Each metadata blob is read once, on a few
/// threads (reading and checking them is most of a mount's opening when
/// the store holds many images); the first image in the store's order that
/// has a chunk gives its place.
fn local_chunks(
    store: &Store,
    wanted: &HashSet<ChunkId>,
) -> Result<(HashMap<ChunkId, ChunkLoc>, Vec<puzzle_store::layout::Pin>)> {
    let mut pins = Vec::new();
    let mut metas = Vec::new();
    let mut seen = HashSet::new();
    for r in store.images()? {
        // An image removed or broken meanwhile lends nothing.
        let Ok((r, pin)) = store.pin_image(&r.name) else {
            continue;
        };
        let Ok(man) = read_manifest(store, &r.manifest.digest) else {
            continue;
        };
        let Some(md) = man.metadata() else { continue };
        if seen.insert(md.digest) {
            metas.push(md.clone());
        }
        pins.push(pin);
    }
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(metas.len().max(1));
    let read = || -> Result<Vec<Placed>> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(md) = metas.get(i) else {
                return Ok(out);
            };
            let Ok(meta) = read_metadata(store, md).and_then(MetaBlob::open) else {
                continue;
            };
            let mut found = Vec::new();
            for c in 0..meta.chunk_count() {
                let rec = meta.chunk(c as u32)?;
                if wanted.contains(&rec.id) {
                    found.push((rec.id, rec.loc));
                }
            }
            out.push((i, found));
        }
    };
    let mut per_image: Vec<Placed> = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(read)).collect();
        for w in workers {
            per_image.extend(w.join().expect("a metadata reader panicked")?);
        }
        Ok(())
    })?;
    per_image.sort_by_key(|(i, _)| *i);
    let mut map = HashMap::new();
    let mut present: HashMap<BlobDigest, bool> = HashMap::new();
    for (id, loc) in per_image.into_iter().flat_map(|(_, found)| found) {
        let here = *present
            .entry(loc.pack)
            .or_insert_with(|| store.has_blob(&loc.pack));
        if here {
            map.entry(id).or_insert(loc);
        }
    }
    Ok((map, pins))
}

/// What [`prune`] did with `lazy/`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Pruned {
    /// Kept files of packs the store now holds whole (a pull or `--fill`
    /// adopted them), removed.
    pub files_removed: u64,
    pub bytes_removed: u64,
    /// What stays: frames of packs the store does not hold.
    pub files_kept: u64,
    pub bytes_kept: u64,
}

/// Removes the kept frames of packs the store holds whole (unless
/// `dry_run`), for gc.
pub fn prune(store: &Store, dry_run: bool) -> std::io::Result<Pruned> {
    let dir = store.root().join("lazy");
    let mut r = Pruned::default();
    for (pack, bytes, _) in kept::list(&dir)? {
        if store.has_blob(&pack) {
            if !dry_run {
                std::fs::remove_file(kept::path(&dir, &pack))?;
            }
            r.files_removed += 1;
            r.bytes_removed += bytes;
        } else {
            r.files_kept += 1;
            r.bytes_kept += bytes;
        }
    }
    Ok(r)
}

/// The frames lazy mounts kept in `store`, if it holds any of `packs`.
pub fn kept_of<'a>(store: &Store, mut packs: impl Iterator<Item = &'a BlobDigest>) -> Option<Kept> {
    let dir = store.root().join("lazy");
    if !packs.any(|p| kept::path(&dir, p).exists()) {
        return None;
    }
    Kept::open(dir, None).ok()
}

/// Opens the puzzle image `manifest_bytes` (from `origin`, blobs read
/// through `remote`) for serving from `store`.
pub fn open(
    store: &Store,
    remote: Arc<dyn BlobRead>,
    manifest_bytes: &[u8],
    origin: &str,
    opts: &LazyOptions,
) -> Result<LazyImage> {
    let manifest = check_manifest(store, manifest_bytes, origin)?;
    let remote_digest = BlobDigest::of(manifest_bytes);
    let mut opened = LazyOpened {
        reference: origin.to_string(),
        remote_manifest: remote_digest.to_string(),
        ..LazyOpened::default()
    };
    let md = manifest.metadata().expect("checked");
    let stored = if store.has_blob(&md.digest) {
        store.read_blob(&md.digest, MAX_METADATA)?
    } else {
        opened.bytes_fetched += md.size;
        fetch_blob(remote.as_ref(), md, MAX_METADATA, "metadata", &Quiet)?
    };
    let raw = if md.media_type == MEDIA_TYPE_METADATA_ZSTD {
        meta::decompress(&stored, MAX_METADATA)?
    } else {
        stored
    };
    let remote_meta = MetaBlob::open(raw)?;
    remote_meta.check()?;
    let pack_sizes: HashMap<BlobDigest, u64> =
        manifest.packs().map(|p| (p.digest, p.size)).collect();
    if let Some(p) = remote_meta
        .packs()?
        .iter()
        .find(|p| !pack_sizes.contains_key(p))
    {
        return Err(crate::Error::Invalid(format!(
            "{origin}: its metadata names pack {p}, which its manifest does not list"
        )));
    }
    let config_bytes = if store.has_blob(&manifest.config.digest) {
        None
    } else {
        let c = fetch_blob(
            remote.as_ref(),
            &manifest.config,
            MAX_JSON,
            "config",
            &Quiet,
        )?;
        opened.bytes_fetched += c.len() as u64;
        Some(c)
    };

    // Chunks the store holds are read from there.
    let mut wanted = HashSet::new();
    for i in 0..remote_meta.chunk_count() {
        wanted.insert(remote_meta.chunk(i as u32)?.id);
    }
    let (local, image_pins) = local_chunks(store, &wanted)?;
    let mixed = remote_meta.relocate(|rec| Ok(local.get(&rec.id).copied().unwrap_or(rec.loc)))?;
    let view = MetaBlob::open(&mixed[..])?;
    let mut local_packs = HashSet::new();
    for p in view.packs()? {
        if store.has_blob(&p) {
            local_packs.insert(p);
        }
    }
    let order: HashMap<BlobDigest, usize> = manifest
        .packs()
        .enumerate()
        .map(|(i, p)| (p.digest, i))
        .collect();
    let mut needed: HashSet<FrameKey> = HashSet::new();
    let mut seen = HashSet::new();
    for i in 0..view.chunk_count() {
        let rec = view.chunk(i as u32)?;
        if !seen.insert(rec.id) {
            continue;
        }
        opened.chunks += 1;
        if local_packs.contains(&rec.loc.pack) {
            opened.chunks_local += 1;
        } else {
            needed.insert((rec.loc.pack, rec.loc.offset));
        }
    }
    let mut needed: Vec<FrameKey> = needed.into_iter().collect();
    needed.sort_by_key(|k| (order.get(&k.0).copied().unwrap_or(usize::MAX), k.1));

    // The mixed image, pinned while served: gc keeps the local packs.
    let size = |p: &BlobDigest| match pack_sizes.get(p) {
        Some(n) if !local_packs.contains(p) => Ok(*n),
        _ => Ok(std::fs::metadata(store.blob_path(p))
            .map_err(|e| puzzle_store::Error::Io {
                path: store.blob_path(p),
                source: e,
            })?
            .len()),
    };
    let pin = if store.is_writable() {
        loop {
            let (desc, md_desc, _) = write_image_sized(
                store,
                &mixed,
                manifest.config.clone(),
                config_bytes.as_deref(),
                None,
                size,
            )?;
            let pin = store.pin(&desc.digest)?;
            if store.has_blob(&desc.digest) && store.has_blob(&md_desc.digest) {
                break pin;
            }
        }
    } else {
        store.pin(&remote_digest)?
    };
    drop(image_pins);

    // The prefetch list, resolved against the image as served.
    let mut prefetch = Vec::new();
    if let Some(d) = manifest.prefetch() {
        let text = if store.has_blob(&d.digest) {
            store.read_blob(&d.digest, puzzle_store::prefetch::MAX_TRACE)?
        } else {
            opened.bytes_fetched += d.size;
            fetch_blob(
                remote.as_ref(),
                d,
                puzzle_store::prefetch::MAX_TRACE,
                "prefetch list",
                &Quiet,
            )?
        };
        let list = puzzle_store::prefetch::parse(&text).map_err(|e| {
            crate::Error::Invalid(format!(
                "{origin}: its prefetch list {}: {}",
                d.digest,
                puzzle_store::error::line(&e)
            ))
        })?;
        for f in puzzle_store::prefetch::frames(&view, &list)? {
            if !local_packs.contains(&f.pack) {
                prefetch.push((f.pack, f.offset));
            }
        }
    }
    opened.prefetch_frames = prefetch.len() as u64;

    let frames = FrameTable::of(&remote_meta)?;
    let kept = if store.is_writable() {
        Kept::open(store.root().join("lazy"), opts.cache_max).ok()
    } else {
        None
    };
    opened.keeping = kept.is_some();
    let blobs = LazyBlobs::new(LazyParts {
        local: store.blob_reader(),
        local_packs,
        remote,
        origin: origin.to_string(),
        frames,
        pack_sizes,
        kept,
        deadline: opts.deadline,
    });
    let (n, bytes, kn, kbytes) = blobs.local_share(&needed);
    opened.frames_needed = n;
    opened.frame_bytes_needed = bytes;
    opened.frames_kept = kn;
    opened.frame_bytes_kept = kbytes;
    let image = MappedImage {
        name: origin.to_string(),
        manifest_digest: remote_digest,
        manifest,
        meta: MetaBlob::open(Mapped::owned(mixed))?,
        pin,
    };
    Ok(LazyImage {
        image,
        blobs,
        needed,
        prefetch,
        opened,
    })
}
