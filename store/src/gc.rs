//! `gc`: give back the space no image needs.
//!
//! Roots are the manifests tagged in `index.json` plus every manifest pinned
//! by a live process ([`Store::pinned`]). A blob is live if a root manifest
//! names it (config, metadata blob, packs). A chunk is live if a root's
//! metadata names it. A chunk live in several packs (stored twice: a build
//! ran against a lost index, or two stores were merged) keeps one copy in
//! use, its canonical copy (chosen in the `copies` submodule; docs/FORMAT.md,
//! "Garbage collection"); the others count as dead. Then, under the writer
//! lock (the caller holds it):
//!
//! 1. a pack whose live bytes (each live chunk's share of its frame) are
//!    below `repack_below` of its frame bytes, and that no pinned manifest
//!    uses, is *sparse*: its live chunks are decompressed, checked against
//!    their BLAKE3 ids and compressed again, grouped into frames as a build
//!    groups them, into new packs, written durably (a pack whose live
//!    chunks all have their kept copy elsewhere is not rewritten: once the
//!    images move off it no root reaches it, and step 7 deletes it);
//! 2. the new packs go into the index, and every live chunk's index entry
//!    names the copy kept (flushed);
//! 3. every tagged image using a sparse pack or a copy not kept gets a new
//!    metadata blob (its chunk table pointing at the kept copies and the
//!    new places) and a new manifest;
//! 4. `index.json` is rewritten once, pointing those tags at the new manifests;
//! 5. pins are read again: a manifest pinned since step 0 keeps its blobs;
//! 6. layer records that would name a chunk no longer indexed are dropped,
//!    with the `streams` and `samples` hints naming them (flushed), then the
//!    index is cut down to the packs that stay (flushed): a record never
//!    outlives a chunk it names;
//! 7. only then every blob no root reaches is deleted.
//!
//! Unless it is a dry run, this runs twice: first with no pack sparse and
//! every copy kept, which deletes every blob no root reaches and writes
//! nothing but index entries (so a full disk gets room back first), then
//! as above.
//!
//! A pinned manifest reads the packs it names until it is unpinned: they
//! are never repacked and always kept, and a copy in one of them is the
//! canonical one, so other images move to it and the other copies go now.
//!
//! Killed at any point, the store stays valid: until step 4 the old images
//! are untouched; until step 7 nothing is deleted; the index never names a
//! pack before it is durable or after it is deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use puzzle_chunker::ChunkId;

use crate::digest::BlobDigest;
use crate::error::{Error, Result};
use crate::frame::{FrameReader, Group, Grouper};
use crate::image::{read_manifest, read_metadata, write_image};
use crate::index::ChunkIndex;
use crate::layout::Store;
use crate::manifest::Descriptor;
use crate::meta::MetaBlob;
use crate::pack::{self, ChunkLoc, PackInfo, PackWriter, DEFAULT_PACK_TARGET};

mod copies;

/// Packs with less than this fraction of their frame bytes live are
/// rewritten by default (docs/FORMAT.md, "Garbage collection").
pub const DEFAULT_REPACK_BELOW: f64 = 0.5;

#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Rewrite packs whose live fraction is below this (0 never, above 1 always
    /// when anything in them is dead).
    pub repack_below: f64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            repack_below: DEFAULT_REPACK_BELOW,
        }
    }
}

/// What gc did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    pub images: usize,
    pub pinned: usize,
    /// Blobs deleted (packs, metadata blobs, manifests, configs).
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    pub packs_removed: usize,
    /// Sparse packs whose live chunks were moved.
    pub packs_repacked: usize,
    pub packs_written: usize,
    /// Bytes of new packs, metadata blobs and manifests written.
    pub bytes_written: u64,
    /// Chunks moved to new packs.
    pub chunks_moved: u64,
    /// Chunks that no image needs any more and whose pack is deleted.
    pub chunks_removed: u64,
    /// Chunks no image needs, kept because their pack's live share is at
    /// or above `repack_below` (packs a pinned image uses not counted).
    pub dead_chunks_kept: u64,
    /// Their share of the packs' compressed bytes.
    pub dead_bytes_kept: u64,
    /// Tagged images given new metadata because chunks they use moved
    /// (repacked, or another copy of them kept).
    pub images_rewritten: usize,
    pub layer_records_removed: usize,
    /// Copies of chunks stored twice that images no longer use and whose
    /// pack is deleted or repacked (another copy is kept).
    pub duplicate_chunks_removed: u64,
}

impl GcReport {
    /// Net bytes given back.
    pub fn freed(&self) -> i64 {
        self.bytes_removed as i64 - self.bytes_written as i64
    }
}

/// Blobs a manifest names, itself included.
fn closure(store: &Store, m: &BlobDigest) -> Result<Vec<BlobDigest>> {
    let man = read_manifest(store, m)?;
    let mut out = vec![*m, man.config.digest];
    out.extend(man.layers.iter().map(|l| l.digest));
    Ok(out)
}

struct Root {
    name: Option<String>,
    manifest: BlobDigest,
    meta: MetaBlob<Vec<u8>>,
    config: Descriptor,
    /// Kept when the image is given new metadata (it names paths, not
    /// chunk locations).
    prefetch: Option<Descriptor>,
}

/// Runs gc; see the module docs. The caller holds the writer lock and has
/// the index open. Blobs no root reaches are deleted in a first pass that
/// writes nothing but index entries, before chunks stored twice are given up
/// and sparse packs repacked: on a full disk, the space those need comes
/// from them.
pub fn gc(store: &Store, index: &ChunkIndex, opts: &GcOptions) -> Result<GcReport> {
    if opts.dry_run {
        return gc_pass(store, index, opts, true);
    }
    let first = gc_pass(
        store,
        index,
        &GcOptions {
            dry_run: false,
            repack_below: 0.0,
        },
        false,
    )?;
    let mut r = gc_pass(store, index, opts, true)?;
    r.blobs_removed += first.blobs_removed;
    r.bytes_removed += first.bytes_removed;
    r.packs_removed += first.packs_removed;
    r.chunks_removed += first.chunks_removed;
    r.layer_records_removed += first.layer_records_removed;
    Ok(r)
}

/// Whether `moves` says any chunk of `meta` moves.
fn moves_any(
    meta: &MetaBlob<Vec<u8>>,
    mut moves: impl FnMut(&ChunkId, &ChunkLoc) -> bool,
) -> Result<bool> {
    for i in 0..meta.chunk_count() {
        let rec = meta.chunk(i as u32)?;
        if moves(&rec.id, &rec.loc) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One gc run as the module docs describe it; `dedup` gives up the copies
/// of chunks stored twice other than the canonical one (`copies`).
fn gc_pass(store: &Store, index: &ChunkIndex, opts: &GcOptions, dedup: bool) -> Result<GcReport> {
    let images = store.images()?;
    let pins0 = store.pinned()?;
    let mut report = GcReport {
        images: images.len(),
        pinned: pins0.len(),
        ..Default::default()
    };
    let refuse = |what: String, e: Error| Error::Corrupt {
        what,
        why: format!(
            "{}; gc refuses to run (see `puzzle verify`)",
            crate::error::line(&e)
        ),
    };

    // Roots, with their metadata.
    let mut roots: Vec<Root> = Vec::new();
    let mut seen = HashSet::new();
    let tagged = images
        .iter()
        .map(|r| (Some(r.name.clone()), r.manifest.digest));
    let pinned = pins0.iter().map(|d| (None, *d));
    for (name, m) in tagged.chain(pinned) {
        if !seen.insert(m) {
            continue;
        }
        if name.is_none() && !store.has_blob(&m) {
            continue; // pinned, but already gone: nothing to keep
        }
        let what = format!("image {}", name.as_deref().unwrap_or(&m.to_string()));
        let man = read_manifest(store, &m).map_err(|e| refuse(what.clone(), e))?;
        let meta = read_metadata(store, man.metadata().expect("checked"))
            .and_then(MetaBlob::open)
            .map_err(|e| refuse(what.clone(), e))?;
        roots.push(Root {
            name,
            manifest: m,
            meta,
            config: man.config.clone(),
            prefetch: man.prefetch().cloned(),
        });
    }
    let pinned_manifests: HashSet<BlobDigest> = pins0.iter().copied().collect();

    // Live chunk bytes per pack, and packs a pinned manifest uses.
    let mut live: HashMap<BlobDigest, HashMap<ChunkId, ChunkLoc>> = HashMap::new();
    let mut pinned_packs: HashSet<BlobDigest> = HashSet::new();
    for r in &roots {
        let is_pinned = pinned_manifests.contains(&r.manifest);
        for i in 0..r.meta.chunk_count() {
            let rec = r.meta.chunk(i as u32)?;
            live.entry(rec.loc.pack)
                .or_default()
                .insert(rec.id, rec.loc);
            if is_pinned {
                pinned_packs.insert(rec.loc.pack);
            }
        }
    }

    // One copy of each chunk stored twice stays in use; the others count
    // as dead, so `net` is what each pack holds that images will use.
    let canon = if dedup {
        copies::canonical(&live, &pinned_packs)
    } else {
        HashMap::new()
    };
    let net: copies::Live = live
        .iter()
        .map(|(p, chunks)| {
            let used = chunks
                .iter()
                .filter(|(id, loc)| canon.get(id).is_none_or(|c| c == *loc))
                .map(|(id, loc)| (*id, *loc))
                .collect();
            (*p, used)
        })
        .collect();

    // Sparse packs, and packs left with nothing in use (every live chunk in
    // them has its canonical copy elsewhere).
    let mut sparse: BTreeSet<BlobDigest> = BTreeSet::new();
    let mut emptied: BTreeSet<BlobDigest> = BTreeSet::new();
    for (p, chunks) in &net {
        if pinned_packs.contains(p) {
            continue;
        }
        if chunks.is_empty() {
            emptied.insert(*p);
            continue;
        }
        let f = store
            .open_blob(p)
            .map_err(|e| refuse(format!("pack {p}"), e))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let entries = pack::read_pack_index(&f, len).map_err(|e| refuse(format!("pack {p}"), e))?;
        let total: u64 = entries.last().map_or(0, |e| e.offset + u64::from(e.clen));
        let live_bytes: u64 = chunks.values().map(ChunkLoc::stored_share).sum();
        let dead = entries.len() > chunks.len();
        if dead && (live_bytes as f64) < opts.repack_below * total as f64 {
            sparse.insert(*p);
        } else if dead {
            for e in entries.iter().filter(|e| !chunks.contains_key(&e.id)) {
                report.dead_chunks_kept += 1;
                report.dead_bytes_kept += e.loc(*p).stored_share();
            }
        }
    }
    report.packs_repacked = sparse.len();

    // Where each chunk an image uses is now, and where it is to be (moved
    // later if that is a sparse pack).
    let target = |id: &ChunkId, loc: &ChunkLoc| canon.get(id).copied().unwrap_or(*loc);
    let mut rewrite: Vec<&Root> = Vec::new();
    for r in roots.iter().filter(|r| r.name.is_some()) {
        if moves_any(&r.meta, |id, loc| {
            let t = target(id, loc);
            t != *loc || sparse.contains(&t.pack)
        })? {
            rewrite.push(r);
        }
    }
    report.images_rewritten = rewrite.len();

    // Copy the canonical copies of live chunks of sparse packs, in
    // image-name then chunk-table order.
    let mut moved: HashMap<ChunkId, ChunkLoc> = HashMap::new();
    let mut order: Vec<(ChunkId, ChunkLoc)> = Vec::new();
    for r in &roots {
        for i in 0..r.meta.chunk_count() {
            let rec = r.meta.chunk(i as u32)?;
            let t = target(&rec.id, &rec.loc);
            if sparse.contains(&t.pack) && !moved.contains_key(&rec.id) {
                moved.insert(rec.id, t);
                order.push((rec.id, t));
            }
        }
    }
    report.chunks_moved = order.len() as u64;

    let mut moved_manifests: BTreeMap<BlobDigest, Descriptor> = BTreeMap::new();
    if opts.dry_run {
        report.bytes_written = order.iter().map(|(_, l)| l.stored_share()).sum();
    } else if dedup {
        let new_packs = copy_chunks(store, &order)?;
        for p in &new_packs {
            for e in &p.entries {
                moved.insert(e.id, e.loc(p.digest));
            }
            index.add_pack(p)?;
            report.bytes_written += p.size;
        }
        report.packs_written = new_packs.len();
        let place = |id: &ChunkId, loc: &ChunkLoc| {
            let t = target(id, loc);
            if sparse.contains(&t.pack) {
                moved[id]
            } else {
                t
            }
        };
        // The index names the copy images use (future builds reuse it).
        let used: HashMap<ChunkId, ChunkLoc> = net
            .values()
            .flat_map(|chunks| chunks.iter())
            .map(|(id, loc)| (*id, place(id, loc)))
            .collect();
        for (id, loc) in index.chunk_entries()? {
            if let Some(u) = used.get(&id).filter(|u| **u != loc) {
                index.set_chunk(&id, u)?;
            }
        }
        index.flush()?;
        // New metadata and manifests for tagged images moving off a copy.
        for r in rewrite {
            if moved_manifests.contains_key(&r.manifest) {
                continue;
            }
            let bytes = r.meta.relocate(|rec| Ok(place(&rec.id, &rec.loc)))?;
            let (desc, md, _) =
                write_image(store, &bytes, r.config.clone(), None, r.prefetch.clone())?;
            report.bytes_written += desc.size + md.size;
            moved_manifests.insert(r.manifest, desc);
        }
        if !moved_manifests.is_empty() {
            store.retarget(&moved_manifests)?;
        }
    }

    // What stays: every blob the tags reach now, plus what pins reach now.
    let mut keep: HashSet<BlobDigest> = HashSet::new();
    let manifests: BTreeSet<BlobDigest> =
        store.images()?.iter().map(|r| r.manifest.digest).collect();
    let pins1 = store.pinned()?;
    for m in manifests.iter().chain(&pins1).chain(&pins0) {
        if !store.has_blob(m) {
            continue;
        }
        let pinned_now = pins1.contains(m) || pins0.contains(m);
        match closure(store, m) {
            Ok(c) => keep.extend(c),
            // A pinned manifest that is already damaged keeps nothing else.
            Err(_) if pinned_now => {
                keep.insert(*m);
            }
            Err(e) => return Err(refuse(format!("manifest {m}"), e)),
        }
    }
    if opts.dry_run {
        // Nothing was rewritten: count sparse and emptied packs as gone
        // (the live chunks of sparse ones were counted as written above).
        for p in sparse.iter().chain(&emptied) {
            if !pins1
                .iter()
                .any(|m| closure(store, m).is_ok_and(|c| c.contains(p)))
            {
                keep.remove(p);
            }
        }
    }

    let blobs = store.blobs()?;
    let mut packs_removed: HashSet<BlobDigest> = HashSet::new();
    for (d, len) in &blobs {
        if keep.contains(d) {
            continue;
        }
        report.blobs_removed += 1;
        report.bytes_removed += len;
        if crate::verify::looks_like_pack(store, d, *len) {
            packs_removed.insert(*d);
        }
    }
    report.packs_removed = packs_removed.len();

    // The index: only chunks in packs that stay.
    let entries = index.chunk_entries()?;
    let mut gone: Vec<ChunkId> = Vec::new();
    for (id, loc) in &entries {
        if !keep.contains(&loc.pack) {
            gone.push(*id);
        }
    }
    let mut still_held: HashSet<ChunkId> = HashSet::new();
    for (p, chunks) in &live {
        // Chunks of sparse packs live on in the new packs.
        if keep.contains(p) || sparse.contains(p) {
            still_held.extend(chunks.keys().copied());
        }
    }
    report.chunks_removed = gone.iter().filter(|id| !still_held.contains(id)).count() as u64;
    // Copies given up whose pack goes (those in packs that stay were
    // counted in `dead_chunks_kept`).
    for (p, chunks) in &live {
        if !keep.contains(p) {
            let used = &net[p];
            report.duplicate_chunks_removed += chunks
                .keys()
                .filter(|id| canon.contains_key(*id) && !used.contains_key(*id))
                .count() as u64;
        }
    }
    if opts.dry_run {
        return Ok(report);
    }
    // Layer records that would name a chunk no longer indexed go first, in
    // a flush of their own, so no record outlives its chunks, not even
    // across a crash between the two flushes.
    // Chunks of the packs that stay (re-added below if their index entry
    // named a pack that goes).
    let kept: Vec<(&ChunkId, &ChunkLoc)> = net
        .iter()
        .filter(|(p, _)| keep.contains(*p))
        .flat_map(|(_, chunks)| chunks.iter())
        .collect();
    let readded: HashSet<&ChunkId> = kept.iter().map(|(id, _)| *id).collect();
    let leaving: HashSet<ChunkId> = gone
        .iter()
        .filter(|id| !readded.contains(id))
        .copied()
        .collect();
    for diff_id in index.layer_ids()? {
        let ok = match index.usable_layer(&diff_id)? {
            Some(layer) => !layer.chunks().any(|id| leaving.contains(id)),
            None => false,
        };
        if !ok {
            index.remove_layer(&diff_id)?;
            report.layer_records_removed += 1;
        }
    }
    if report.layer_records_removed > 0 {
        index.drop_stale_hints()?;
    }
    index.flush()?;
    for id in &gone {
        index.remove_chunk(id)?;
    }
    // A chunk whose indexed pack goes may still be in a pack that stays.
    for (id, loc) in kept {
        index.add_if_missing(id, loc)?;
    }
    index.flush()?;

    // Only now delete.
    for (d, _) in &blobs {
        if !keep.contains(d) {
            store.remove_blob(d)?;
        }
    }
    store.sync_blobs()?;
    Ok(report)
}

/// Writes `chunks` (id, current place) into new durable packs: each is
/// read from its frame (decompressed once for all its chunks), checked
/// against its id, and compressed again in frames grouped as a build groups
/// them, at the store's level.
fn copy_chunks(store: &Store, chunks: &[(ChunkId, ChunkLoc)]) -> Result<Vec<PackInfo>> {
    let cfg = &store.config().compression;
    let mut cx = zstd::bulk::Compressor::new(cfg.level).map_err(|source| Error::Io {
        path: "zstd".into(),
        source,
    })?;
    let mut grouper = Grouper::new(cfg.frame_target);
    let mut frames = FrameReader::new(store, 32 << 20);
    let mut out = Vec::new();
    let mut w: Option<PackWriter> = None;
    let mut write = |group: Group, w: &mut Option<PackWriter>| -> Result<()> {
        let bytes = crate::frame::compress(&mut cx, &group).map_err(|source| Error::Io {
            path: "zstd".into(),
            source,
        })?;
        if w.is_none() {
            *w = Some(PackWriter::new(store)?);
        }
        let pw = w.as_mut().expect("just set");
        pw.append_frame(&bytes, &group.chunks)?;
        if pw.frames_len() >= DEFAULT_PACK_TARGET {
            out.push(w.take().expect("open").finish(store)?);
        }
        Ok(())
    };
    for (id, loc) in chunks {
        let data = frames.chunk(id, loc)?;
        if let Some(g) = grouper.push(*id, &data) {
            write(g, &mut w)?;
        }
    }
    if let Some(g) = grouper.finish() {
        write(g, &mut w)?;
    }
    if let Some(pw) = w.filter(|w| !w.is_empty()) {
        out.push(pw.finish(store)?);
    }
    Ok(out)
}
