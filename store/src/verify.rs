//! `verify`: check a store against its own digests and cross-references, and
//! rebuild the index from packs.
//!
//! What is checked, for every image in `index.json`: the manifest's digest
//! and form, the config's digest, the metadata blob's digest and every record
//! in it, that the manifest lists exactly the packs the metadata uses, and
//! that every chunk the metadata names is in its pack's index at the same
//! place. Every pack any image uses is hashed whole and its index parsed.
//! With an open [`ChunkIndex`], every index entry must point at a pack that
//! exists and lists that chunk there. With `full`, every frame of every used
//! pack is decompressed and the BLAKE3 id of every chunk in it checked.
//!
//! Problems are collected, not returned as errors: each names the object and
//! the images it affects.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use puzzle_chunker::ChunkId;
use sha2::{Digest as _, Sha256};

use crate::blobs::BlobRead;
use crate::digest::BlobDigest;
use crate::error::{line, Error, Result};
use crate::frame::Frame;
use crate::image::{read_manifest, read_metadata};
use crate::index::ChunkIndex;
use crate::layout::{Store, MAX_JSON};
use crate::meta::MetaBlob;
use crate::pack::{self, ChunkLoc, PackEntry, PackInfo, TRAILER_LEN};

/// One thing wrong with the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is damaged: `manifest sha256:…`, `pack sha256:…`, `chunk … in pack …`, `index`.
    pub object: String,
    /// Names of the images that need the object (empty for the index).
    pub images: Vec<String>,
    /// What is wrong, one line.
    pub what: String,
}

/// What verify looked at and found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub images: usize,
    pub packs: usize,
    /// Chunk records checked against pack indexes (metadata + index entries).
    pub chunk_refs: u64,
    /// Frames decompressed and hashed (`full` only).
    pub chunks_hashed: u64,
    pub index_entries: u64,
    pub problems: Vec<Problem>,
}

/// A pack's parsed index by chunk id, or why it could not be read.
type PackIndex = std::result::Result<HashMap<ChunkId, PackEntry>, String>;

struct Checker<'a> {
    store: &'a Store,
    report: VerifyReport,
    packs: BTreeMap<BlobDigest, PackIndex>,
}

impl Checker<'_> {
    fn problem(&mut self, object: String, images: &BTreeSet<String>, what: String) {
        self.report.problems.push(Problem {
            object,
            images: images.iter().cloned().collect(),
            what,
        });
    }

    /// Hashes the pack whole and parses its index (once per pack).
    fn pack_index(&mut self, d: &BlobDigest) -> &PackIndex {
        if !self.packs.contains_key(d) {
            let r = load_pack(self.store, d);
            self.packs.insert(*d, r);
        }
        &self.packs[d]
    }
}

fn load_pack(store: &Store, d: &BlobDigest) -> PackIndex {
    let mut f = match store.open_blob(d) {
        Ok(f) => f,
        Err(Error::BlobMissing { .. }) => return Err("missing".into()),
        Err(e) => return Err(line(&e)),
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
    let actual = BlobDigest::from_bytes(h.finalize().into());
    if actual != *d {
        return Err(format!("content hashes to {actual}"));
    }
    let entries = pack::read_pack_index(&f, len).map_err(|e| line(&e))?;
    Ok(entries.into_iter().map(|e| (e.id, e)).collect())
}

fn same_place(e: &PackEntry, loc: &ChunkLoc) -> bool {
    e.loc(loc.pack) == *loc
}

/// Checks the store; see the module docs. `index`, when given, is checked too.
pub fn verify(store: &Store, index: Option<&ChunkIndex>, full: bool) -> Result<VerifyReport> {
    let images = store.images()?;
    let mut c = Checker {
        store,
        report: VerifyReport {
            images: images.len(),
            ..Default::default()
        },
        packs: BTreeMap::new(),
    };
    // Which images use each pack, and where their metadata says each chunk is.
    let mut users: BTreeMap<BlobDigest, BTreeSet<String>> = BTreeMap::new();
    let mut wanted: BTreeMap<BlobDigest, Vec<(ChunkId, ChunkLoc, String)>> = BTreeMap::new();
    for r in &images {
        let who = BTreeSet::from([r.name.clone()]);
        let m = match read_manifest(store, &r.manifest.digest) {
            Ok(m) => m,
            Err(e) => {
                c.problem(format!("manifest {}", r.manifest.digest), &who, line(&e));
                continue;
            }
        };
        if let Err(e) = store.read_blob(&m.config.digest, MAX_JSON) {
            c.problem(format!("config {}", m.config.digest), &who, line(&e));
        }
        if let (Some(d), Err(e)) = (m.prefetch(), crate::image::read_prefetch(store, &m)) {
            c.problem(format!("prefetch list {}", d.digest), &who, line(&e));
        }
        let md = m.metadata().expect("checked by read_manifest");
        let listed: BTreeSet<BlobDigest> = m.packs().map(|p| p.digest).collect();
        for p in &listed {
            users.entry(*p).or_default().insert(r.name.clone());
        }
        let meta = match read_metadata(store, md)
            .and_then(MetaBlob::open)
            .and_then(|m| m.check().map(|()| m))
        {
            Ok(meta) => meta,
            Err(e) => {
                c.problem(format!("metadata {}", md.digest), &who, line(&e));
                continue;
            }
        };
        let used: BTreeSet<BlobDigest> = meta.packs()?.into_iter().collect();
        if used != listed {
            c.problem(
                format!("manifest {}", r.manifest.digest),
                &who,
                format!(
                    "lists {} pack(s) but its metadata uses {}",
                    listed.len(),
                    used.len()
                ),
            );
        }
        for i in 0..meta.chunk_count() {
            let rec = meta.chunk(i as u32)?;
            users
                .entry(rec.loc.pack)
                .or_default()
                .insert(r.name.clone());
            wanted
                .entry(rec.loc.pack)
                .or_default()
                .push((rec.id, rec.loc, r.name.clone()));
        }
    }

    c.report.packs = users.len();
    let blobs = store.blob_reader();
    for (p, who) in &users {
        let idx = c.pack_index(p).clone();
        let idx = match idx {
            Ok(idx) => idx,
            Err(why) => {
                c.problem(format!("pack {p}"), who, why);
                continue;
            }
        };
        for (id, loc, name) in wanted.get(p).map(Vec::as_slice).unwrap_or_default() {
            c.report.chunk_refs += 1;
            if !idx.get(id).is_some_and(|e| same_place(e, loc)) {
                c.problem(
                    format!("chunk {id} in pack {p}"),
                    &BTreeSet::from([name.clone()]),
                    format!(
                        "metadata says offset {} length {}, the pack index disagrees",
                        loc.offset, loc.clen
                    ),
                );
            }
        }
        if full {
            if let Err(e) = blobs.size(p) {
                c.problem(format!("pack {p}"), who, line(&e));
                continue;
            }
            let mut entries: Vec<&PackEntry> = idx.values().collect();
            entries.sort_by_key(|e| (e.offset, e.at));
            // Each frame is decompressed once for all its chunks.
            let mut frame: Option<(u64, std::result::Result<Frame, String>)> = None;
            for e in entries {
                c.report.chunks_hashed += 1;
                let loc = e.loc(*p);
                if frame.as_ref().is_none_or(|(at, _)| *at != e.offset) {
                    let read = Frame::read(&blobs, &e.id, &loc).map_err(|e| line(&e));
                    frame = Some((e.offset, read));
                }
                let checked = match &frame.as_ref().expect("just set").1 {
                    Ok(fr) => fr.chunk(&e.id, &loc).map(drop).map_err(|e| line(&e)),
                    Err(why) => Err(why.clone()),
                };
                if let Err(why) = checked {
                    c.problem(format!("chunk {} in pack {p}", e.id), who, why);
                }
            }
        }
    }

    if let Some(index) = index {
        // One problem per pack and reason, however many entries share it.
        let mut bad: BTreeMap<(BlobDigest, String), (u64, ChunkId)> = BTreeMap::new();
        for (id, loc) in index.chunk_entries()? {
            c.report.index_entries += 1;
            let why = match c.pack_index(&loc.pack) {
                Ok(idx) if idx.get(&id).is_some_and(|e| same_place(e, &loc)) => continue,
                Ok(_) => "does not hold them where the index says".to_string(),
                Err(why) => why.clone(),
            };
            bad.entry((loc.pack, why)).or_insert((0, id)).0 += 1;
        }
        let none = BTreeSet::new();
        for ((pack, why), (n, first)) in bad {
            c.problem(
                "index".into(),
                &none,
                format!("{n} chunk entries (first {first}) point at pack {pack}: {why}"),
            );
        }
    }
    Ok(c.report)
}

/// What [`rebuild_index`] found.
#[derive(Clone, Debug, Default)]
pub struct RebuildReport {
    pub packs: usize,
    pub chunks: usize,
    /// Blobs that look like packs but failed their digest or index check.
    pub bad_packs: Vec<BlobDigest>,
}

/// Why [`open_index`] rebuilt the index before opening it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexRepair {
    /// `index/` is gone while the store holds packs.
    Missing,
    /// The index lists no chunk while the store holds packs.
    Empty,
    /// The index could not be opened (its message).
    Unreadable(String),
}

impl std::fmt::Display for IndexRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexRepair::Missing => f.write_str("the index is missing"),
            IndexRepair::Empty => f.write_str("the index lists no chunk but the store has packs"),
            IndexRepair::Unreadable(why) => write!(f, "the index cannot be read ({why})"),
        }
    }
}

/// Opens the index, first rebuilding it from the packs when it is missing,
/// empty while packs exist, or unreadable: the index is a cache, and an
/// empty one would make the next build store every chunk again. `starting`
/// is called before a rebuild begins (to say so). The caller holds the
/// writer lock.
pub fn open_index(
    store: &Store,
    starting: &mut dyn FnMut(&IndexRepair),
) -> Result<(ChunkIndex, Option<RebuildReport>)> {
    let repair = if !store.index_dir().exists() {
        has_pack(store)?.then_some(IndexRepair::Missing)
    } else {
        match ChunkIndex::open(store) {
            // A full disk is not damage: rebuilding would need room too.
            Err(e) if e.is_out_of_space() => return Err(e),
            // sled's messages end with an empty " backtrace ()".
            Err(e) => Some(IndexRepair::Unreadable(
                e.to_string().trim_end_matches(" backtrace ()").to_string(),
            )),
            Ok(index) if index.has_no_chunks() && has_pack(store)? => {
                drop(index);
                Some(IndexRepair::Empty)
            }
            Ok(index) => return Ok((index, None)),
        }
    };
    let Some(repair) = repair else {
        return Ok((ChunkIndex::open(store)?, None));
    };
    starting(&repair);
    let report = rebuild_index(store)?;
    Ok((ChunkIndex::open(store)?, Some(report)))
}

/// Packs [`check_packs`] found unfit to reuse.
#[derive(Clone, Debug, Default)]
pub struct PackCheck {
    /// Each damaged pack and what is wrong with it.
    pub damaged: Vec<(BlobDigest, String)>,
    /// Index entries dropped because they pointed into a damaged pack.
    pub chunks_dropped: usize,
}

/// Makes sure the packs the index points into can be reused by a build. A
/// pack is checked once (its trailer and chunk index parse, against its
/// size) and remembered in the index with its size; later checks compare
/// only the size (a stat). A pack that is gone, has another size, or fails
/// its first check is forgotten and its chunks dropped from the index, so
/// the build stores them again and converts again the layers that used
/// them. A pack only gc deleted (no chunk points into it any more) is
/// forgotten quietly. Packs of a store indexed before packs were
/// remembered are found from the chunk entries and checked once. The
/// caller holds the writer lock.
pub fn check_packs(store: &Store, index: &ChunkIndex) -> Result<PackCheck> {
    let mut known = index.sound_packs()?;
    if known.is_empty() && !index.has_no_chunks() {
        let packs: BTreeSet<BlobDigest> = index
            .chunk_entries()?
            .into_iter()
            .map(|(_, loc)| loc.pack)
            .collect();
        for d in packs {
            let size = std::fs::metadata(store.blob_path(&d)).map_or(u64::MAX, |m| m.len());
            if trailer_sound(store, &d, size) {
                index.set_sound_pack(&d, Some(size))?;
                known.push((d, size));
            } else {
                known.push((d, u64::MAX));
            }
        }
    }
    let mut suspect = BTreeMap::new();
    for (d, size) in known {
        match std::fs::metadata(store.blob_path(&d)) {
            Ok(m) if m.len() == size => {}
            Ok(m) => {
                let why = if size == u64::MAX {
                    "its trailer or chunk index is damaged".to_string()
                } else {
                    format!("{} bytes, {size} when it was stored", m.len())
                };
                suspect.insert(d, why);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                suspect.insert(d, "missing".to_string());
            }
            Err(e) => {
                return Err(Error::Io {
                    path: store.blob_path(&d),
                    source: e,
                })
            }
        }
    }
    let mut out = PackCheck::default();
    if suspect.is_empty() {
        return Ok(out);
    }
    let mut used = BTreeSet::new();
    for (id, loc) in index.chunk_entries()? {
        if suspect.contains_key(&loc.pack) {
            index.remove_chunk(&id)?;
            used.insert(loc.pack);
            out.chunks_dropped += 1;
        }
    }
    for (d, why) in suspect {
        index.set_sound_pack(&d, None)?;
        if used.contains(&d) {
            out.damaged.push((d, why));
        }
    }
    index.flush()?;
    Ok(out)
}

/// Whether pack `d` of `len` bytes has a trailer and chunk index that parse.
fn trailer_sound(store: &Store, d: &BlobDigest, len: u64) -> bool {
    store
        .open_blob(d)
        .is_ok_and(|f| pack::read_pack_index(&f, len).is_ok())
}

/// Whether any blob ends with a pack trailer.
fn has_pack(store: &Store) -> Result<bool> {
    Ok(store
        .blobs()?
        .iter()
        .any(|(d, len)| looks_like_pack(store, d, *len)))
}

/// Replaces the index with one built from the packs in `blobs/` alone. Every
/// blob whose trailer has the pack magic is hashed and parsed; a chunk held
/// by several packs points at one an image uses, if any. Converted-layer
/// records cannot be derived from packs: they are dropped, so those layers
/// are converted again on their next build (their chunks are found in the
/// index, so nothing is stored twice). The new index is built in `tmp/` and
/// renamed into place: a rebuild cut short leaves the old index, or none,
/// and the next open rebuilds again. The caller holds the writer lock and
/// must not have the index open.
pub fn rebuild_index(store: &Store) -> Result<RebuildReport> {
    let dir = store.index_dir();
    let fresh = store.tmp_dir().join("index-rebuild");
    remove_dir(&fresh)?;
    let index = ChunkIndex::open_at(fresh.clone())?;
    // Packs some image uses go last, so their locations win.
    let mut used = BTreeSet::new();
    for r in store.images()? {
        if let Ok(m) = read_manifest(store, &r.manifest.digest) {
            used.extend(m.packs().map(|p| p.digest));
        }
    }
    let mut report = RebuildReport::default();
    let mut candidates = Vec::new();
    for (d, len) in store.blobs()? {
        if looks_like_pack(store, &d, len) {
            candidates.push((d, len));
        }
    }
    candidates.sort_by_key(|(d, _)| used.contains(d));
    for (d, size) in candidates {
        match load_pack(store, &d) {
            Ok(idx) => {
                let mut entries: Vec<PackEntry> = idx.into_values().collect();
                entries.sort_by_key(|e| (e.offset, e.at));
                report.packs += 1;
                index.add_pack(&PackInfo {
                    digest: d,
                    size,
                    entries,
                })?;
            }
            Err(_) => report.bad_packs.push(d),
        }
    }
    index.flush()?;
    report.chunks = index.chunk_count();
    drop(index);
    remove_dir(&dir)?;
    std::fs::rename(&fresh, &dir).map_err(|source| Error::Io {
        path: dir.clone(),
        source,
    })?;
    crate::layout::sync_dir(store.root())?;
    Ok(report)
}

/// Removes a directory tree; a missing one is fine.
fn remove_dir(dir: &std::path::Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Whether a blob ends with a pack trailer.
pub(crate) fn looks_like_pack(store: &Store, d: &BlobDigest, len: u64) -> bool {
    use std::os::unix::fs::FileExt;
    if len < TRAILER_LEN as u64 {
        return false;
    }
    let Ok(f) = store.open_blob(d) else {
        return false;
    };
    let mut t = [0u8; 8];
    f.read_exact_at(&mut t, len - TRAILER_LEN as u64).is_ok() && &t == pack::PACK_MAGIC
}
