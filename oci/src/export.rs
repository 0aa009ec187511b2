//! Exporting a stored image back to a plain OCI image: tar layers compressed
//! with gzip (or zstd), the original config with its `rootfs.diff_ids`
//! rewritten, in an OCI layout directory, an OCI archive or a `docker save`
//! archive ([`Target`]).
//!
//! - One layer per original layer when the store knows them
//!   ([`KnownLayers::load`]: the converted-layer records the index holds for
//!   the diff_ids the image's source info lists). Deletions become `.wh.`
//!   entries and opaque directories `.wh..wh..opq`, so the stack applies as
//!   the original did.
//! - Otherwise, or when asked ([`ExportOptions::squash`]), one layer holding
//!   the flattened tree of the metadata blob; the config's history then
//!   marks the old steps empty and adds one for the squash.
//!
//! Output is deterministic: entries in a fixed order (component-wise sorted
//! paths; a directory's whiteouts right after it), fixed header fields
//! (`tarw`), gzip without name or time. The same stored image gives the same
//! digests in any store. Layers stream through tar -> compression -> hashing
//! into a temp file beside their final name; file contents are read chunk by
//! chunk from the packs (a bounded frame cache), never a whole file.

mod tarw;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read as _, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use puzzle_chunker::ChunkId;
use puzzle_store::extract::ChunkCache;
use puzzle_store::frame::{ChunkBytes, FrameReader};
use puzzle_store::image::Image;
use puzzle_store::index::ChunkIndex;
use puzzle_store::layout::{Store, MAX_JSON};
use puzzle_store::manifest::{
    Descriptor, Manifest, ANNOTATION_REF_NAME, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
};
use puzzle_store::meta::{InodeRec, Kind, MetaBlob, SourceInfo};
use puzzle_store::pack::ChunkLoc;
use puzzle_store::tree::{split_parent, Layer, LayerEntry, Meta, Node, Tree};
use puzzle_store::BlobDigest;

use crate::error::{Error, Result};
use tarw::{Head, HeadKind, LayerBlob};
pub use tarw::{LayerCompression, WrittenLayer};

/// Where an export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `oci:DIR[:TAG]`: an OCI layout directory, created or added to (a
    /// manifest already tagged `TAG` there is replaced in `index.json`).
    OciDir { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: a tar of such a layout.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:REF]`: what `docker save` writes (with an OCI
    /// layout inside, as docker 25 does); `docker load` reads it.
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
}

const TARGET_USAGE: &str =
    "expected oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:REF]";

/// Splits `PATH[:TAG]` for a destination that may not exist yet: the whole
/// string if it exists, else at the first ':' whose prefix's parent
/// directory exists (a tag or docker reference may hold ':' itself).
fn split_target(kind: &str, rest: &str) -> Result<(PathBuf, Option<String>)> {
    let parent_exists = |p: &str| match Path::new(p).parent() {
        Some(d) if !d.as_os_str().is_empty() => d.is_dir(),
        _ => true,
    };
    let (path, tag) = if Path::new(rest).exists() {
        (rest, None)
    } else {
        match rest
            .match_indices(':')
            .find(|(i, _)| *i > 0 && parent_exists(&rest[..*i]))
        {
            Some((i, _)) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        }
    };
    if path.is_empty() {
        return Err(Error::Invalid(format!(
            "{kind}: missing path ({TARGET_USAGE})"
        )));
    }
    if tag == Some("") {
        return Err(Error::Invalid(format!("{kind}{rest}: empty tag after ':'")));
    }
    Ok((PathBuf::from(path), tag.map(str::to_owned)))
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Target> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_target("oci:", rest)?;
            Ok(Target::OciDir { dir, tag })
        } else if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_target("oci-archive:", rest)?;
            Ok(Target::OciArchive { file, tag })
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, reference) = split_target("docker-archive:", rest)?;
            Ok(Target::DockerArchive { file, reference })
        } else if s.starts_with("docker://") {
            Err(Error::Unsupported(format!(
                "exporting to a registry ({s}); export to oci:DIR and copy it with skopeo"
            )))
        } else {
            Err(Error::Invalid(format!(
                "unrecognized export target {s}: {TARGET_USAGE}"
            )))
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, path, r) = match self {
            Target::OciDir { dir, tag } => ("oci", dir, tag),
            Target::OciArchive { file, tag } => ("oci-archive", file, tag),
            Target::DockerArchive { file, reference } => ("docker-archive", file, reference),
        };
        write!(f, "{kind}:{}", path.display())?;
        if let Some(r) = r {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

/// How [`export`] writes layers.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions<'a> {
    pub compression: LayerCompression,
    /// Compression level; [`LayerCompression::default_level`] when `None`.
    pub level: Option<i32>,
    /// One layer holding the flattened tree, whatever the store knows.
    pub squash: bool,
    /// Stop with an error once this is set (checked before each entry).
    pub cancel: Option<&'a AtomicBool>,
}

impl Default for ExportOptions<'_> {
    fn default() -> Self {
        ExportOptions {
            compression: LayerCompression::Gzip,
            level: None,
            squash: false,
            cancel: None,
        }
    }
}

/// The original layers of an image, as converted in this store, with the
/// location of every chunk they use.
pub struct KnownLayers {
    layers: Vec<Layer>,
    locs: HashMap<ChunkId, ChunkLoc>,
}

impl KnownLayers {
    /// Loads the converted-layer record of every layer `source` lists.
    /// `Ok(Err(why))` when the store does not know them all (no source
    /// layers recorded, a record gone or naming a chunk no longer indexed).
    pub fn load(
        index: &ChunkIndex,
        source: &SourceInfo,
    ) -> Result<std::result::Result<KnownLayers, String>> {
        if source.layers.is_empty() {
            return Ok(Err("the image records no source layers".into()));
        }
        let mut layers = Vec::with_capacity(source.layers.len());
        let mut locs = HashMap::new();
        for (i, l) in source.layers.iter().enumerate() {
            let Some(layer) = index.usable_layer(&l.diff_id)? else {
                return Ok(Err(format!(
                    "layer {} ({}) has no usable record in the store's index",
                    i + 1,
                    l.diff_id
                )));
            };
            for id in layer.chunks() {
                if locs.contains_key(id) {
                    continue;
                }
                match index.get(id)? {
                    Some(loc) => {
                        locs.insert(*id, loc);
                    }
                    None => {
                        return Ok(Err(format!(
                            "layer {} ({}) uses chunk {id}, no longer indexed",
                            i + 1,
                            l.diff_id
                        )))
                    }
                }
            }
            layers.push(layer);
        }
        Ok(Ok(KnownLayers { layers, locs }))
    }

    /// Every pack the layers' chunks are read from.
    pub fn packs(&self) -> BTreeSet<BlobDigest> {
        self.locs.values().map(|l| l.pack).collect()
    }

    /// Bytes of file contents the layers hold (what export reads).
    pub fn content_bytes(&self) -> u64 {
        self.layers
            .iter()
            .flat_map(|l| l.files())
            .map(|f| f.0)
            .sum()
    }
}

/// What an export wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<WrittenLayer>,
    /// One layer from the flattened tree.
    pub squashed: bool,
}

impl Exported {
    /// Uncompressed tar bytes over all layers.
    pub fn tar_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_bytes).sum()
    }
    /// Compressed layer bytes.
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// Exports `image` to `target`: per layer from `known` (unless
/// `opts.squash`), else one squashed layer. The caller keeps every chunk
/// readable meanwhile (a pin on the image; for chunks of `known` outside the
/// image's packs, the store lock). `progress` gets the file-content bytes
/// written so far.
pub fn export(
    store: &Store,
    image: &Image,
    known: Option<&KnownLayers>,
    target: &Target,
    opts: &ExportOptions<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<Exported> {
    let level = opts.level.unwrap_or(opts.compression.default_level());
    if !opts.compression.levels().contains(&level) {
        return Err(Error::Invalid(format!(
            "compression level {level} is out of range {:?}",
            opts.compression.levels()
        )));
    }
    let known = known.filter(|_| !opts.squash);
    match target {
        Target::OciDir { dir, tag } => {
            let layout = Layout::open(dir)?;
            let out = write_image(store, image, known, &layout, opts, level, progress)?;
            layout.add_to_index(&out.manifest, tag.as_deref())?;
            Ok(out)
        }
        Target::OciArchive { file, tag } => archive(file, |layout| {
            let out = write_image(store, image, known, layout, opts, level, progress)?;
            layout.add_to_index(&out.manifest, tag.as_deref())?;
            Ok(out)
        }),
        Target::DockerArchive { file, reference } => archive(file, |layout| {
            let out = write_image(store, image, known, layout, opts, level, progress)?;
            layout.add_to_index(&out.manifest, reference.as_deref())?;
            layout.write_docker_manifest(&out, reference.as_deref())?;
            Ok(out)
        }),
    }
}

fn cancelled(opts: &ExportOptions<'_>) -> Result<()> {
    match opts.cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Invalid("interrupted".into())),
        _ => Ok(()),
    }
}

fn write_image(
    store: &Store,
    image: &Image,
    known: Option<&KnownLayers>,
    layout: &Layout,
    opts: &ExportOptions<'_>,
    level: i32,
    progress: &mut dyn FnMut(u64),
) -> Result<Exported> {
    let blobs = layout.blobs();
    let mut done = 0u64;
    let mut layers = Vec::new();
    match known {
        Some(k) => {
            layers = write_layers(store, k, &blobs, opts, level, progress)?;
        }
        None => {
            let mut blob = LayerBlob::create(&blobs, opts.compression, level)?;
            let mut cache = ChunkCache::new(store, &image.meta, 32 << 20);
            write_squashed(&mut blob, &image.meta, &mut cache, opts, &mut |n| {
                done += n;
                progress(done)
            })?;
            layers.push(blob.finish(&blobs)?);
        }
    }
    let squashed = known.is_none();
    let config_in = store.read_blob(&image.manifest.config.digest, MAX_JSON)?;
    let diff_ids: Vec<BlobDigest> = layers.iter().map(|l| l.diff_id).collect();
    let config_bytes = rewrite_config(&config_in, &diff_ids, squashed)?;
    let config = Descriptor::new(
        MEDIA_TYPE_CONFIG,
        layout.write_blob(&config_bytes)?,
        config_bytes.len() as u64,
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.to_string(),
        config: config.clone(),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(opts.compression.media_type(), l.digest, l.size))
            .collect(),
        annotations: Default::default(),
    };
    let bytes = manifest.to_bytes();
    let manifest = Descriptor::new(
        MEDIA_TYPE_MANIFEST,
        layout.write_blob(&bytes)?,
        bytes.len() as u64,
    );
    Ok(Exported {
        manifest,
        config,
        layers,
        squashed,
    })
}

/// The image config with `rootfs.diff_ids` set to the exported layers'.
/// When squashed, every history step is marked empty and one step for the
/// squash is added (dated as the config is, so the output stays fixed).
/// Everything else is kept as it was.
pub fn rewrite_config(config: &[u8], diff_ids: &[BlobDigest], squashed: bool) -> Result<Vec<u8>> {
    let bad = |source| Error::Json {
        what: "the image config".into(),
        source,
    };
    let mut v: serde_json::Value = serde_json::from_slice(config).map_err(bad)?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| Error::Invalid("the image config is not a JSON object".into()))?;
    obj.insert(
        "rootfs".into(),
        serde_json::json!({
            "type": "layers",
            "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        }),
    );
    if squashed {
        let created = obj.get("created").cloned();
        if let Some(serde_json::Value::Array(history)) = obj.get_mut("history") {
            let steps = history.len();
            for h in history.iter_mut() {
                if let Some(h) = h.as_object_mut() {
                    h.insert("empty_layer".into(), true.into());
                }
            }
            let mut step = serde_json::Map::new();
            if let Some(c) = created {
                step.insert("created".into(), c);
            }
            step.insert("created_by".into(), "puzzle export --squash".into());
            step.insert(
                "comment".into(),
                format!("the {steps} steps above squashed into one layer").into(),
            );
            history.push(step.into());
        }
    }
    serde_json::to_vec(&v).map_err(bad)
}

/// How a layer's items are ordered in its tar.
enum Item<'a> {
    Node(&'a [u8], &'a Node, &'a Meta),
    Opaque(&'a [u8]),
    Whiteout(&'a [u8]),
}

/// Sort key: the path with `/` as 0, so paths sort component by component
/// (a directory's whole subtree before its next sibling). A directory's
/// opaque marker, then its whiteouts, sort right after it, before its
/// children (names never start with a 0 byte).
fn order_key(path: &[u8]) -> Vec<u8> {
    path.iter()
        .map(|&b| if b == b'/' { 0 } else { b })
        .collect()
}

fn marker_key(dir: &[u8], whiteout: Option<&[u8]>) -> Vec<u8> {
    let mut k = order_key(dir);
    if !dir.is_empty() {
        k.push(0);
    }
    k.extend_from_slice(&[0, 0]);
    if let Some(name) = whiteout {
        k.push(1);
        k.extend_from_slice(name);
    }
    k
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn dir_name(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        b"./".to_vec()
    } else {
        let mut p = path.to_vec();
        p.push(b'/');
        p
    }
}

fn head<'a>(path: Vec<u8>, kind: HeadKind<'a>, m: &'a Meta) -> Head<'a> {
    Head {
        path,
        kind,
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        mtime_nsec: m.mtime_nsec,
        xattrs: m
            .xattrs
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect(),
    }
}

fn meta_at(tree: &Tree, path: &[u8], target: &[u8]) -> Result<Meta> {
    let ino = tree.lookup(target).ok_or_else(|| {
        Error::Invalid(format!(
            "layer record: hard link {} names {}, which does not exist",
            puzzle_store::error::show_path(path),
            puzzle_store::error::show_path(target)
        ))
    })?;
    Ok(tree.inodes[ino].meta.clone())
}

/// The metadata a layer's link headers carry: their targets' (for links to
/// lower layers, as the lower layers left them). Applies the layer to
/// `tree`, the image so far.
struct LinkMetas {
    lower: Vec<Meta>,
    inner: Vec<Meta>,
}

fn link_metas(layer: &Layer, tree: &mut Tree) -> Result<LinkMetas> {
    let mut lower = Vec::new();
    for e in &layer.entries {
        if let LayerEntry::LowerLink { path, target } = e {
            lower.push(meta_at(tree, path, target)?);
        }
    }
    tree.apply(layer)?;
    let mut inner = Vec::new();
    for e in &layer.entries {
        if let LayerEntry::HardLink { path, target } = e {
            inner.push(meta_at(tree, path, target)?);
        }
    }
    Ok(LinkMetas { lower, inner })
}

/// Writes every known layer, on as many threads as there are cores (at
/// most one per layer; the largest layers first). Each layer has its own
/// frame cache (32 MiB). The first error stops the others.
fn write_layers(
    store: &Store,
    k: &KnownLayers,
    blobs: &Path,
    opts: &ExportOptions<'_>,
    level: i32,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<WrittenLayer>> {
    // Link headers need the tree below each layer: settled first, in order.
    let mut tree = Tree::new();
    let mut metas = Vec::with_capacity(k.layers.len());
    for layer in &k.layers {
        metas.push(link_metas(layer, &mut tree)?);
    }
    drop(tree);
    let mut order: Vec<usize> = (0..k.layers.len()).collect();
    let size = |i: usize| -> u64 { k.layers[i].files().map(|f| f.0).sum() };
    order.sort_by_key(|&i| std::cmp::Reverse(size(i)));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(order.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Option<Result<WrittenLayer>>>> =
        k.layers.iter().map(|_| Mutex::new(None)).collect();
    let (tx, rx) = crossbeam_channel::unbounded::<()>();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (order, next, done, failed, results, metas) =
                (&order, &next, &done, &failed, &results, &metas);
            s.spawn(move || {
                let mut frames = FrameReader::new(store, 32 << 20);
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = (|| {
                        let mut blob = LayerBlob::create(blobs, opts.compression, level)?;
                        let mut chunk = |id: &ChunkId| -> Result<ChunkBytes> {
                            let loc = k
                                .locs
                                .get(id)
                                .ok_or(puzzle_store::Error::ChunkNotFound(*id))?;
                            Ok(frames.chunk(id, loc)?)
                        };
                        let check = || -> Result<()> {
                            if failed.load(Ordering::Relaxed) {
                                return Err(Error::Invalid("stopped: another layer failed".into()));
                            }
                            cancelled(opts)
                        };
                        write_layer(
                            &mut blob,
                            &k.layers[i],
                            &metas[i],
                            &mut chunk,
                            &check,
                            &mut |n| {
                                done.fetch_add(n, Ordering::Relaxed);
                            },
                        )?;
                        blob.finish(blobs)
                    })();
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
                let _ = tx.send(());
            });
        }
        drop(tx);
        // Progress from this thread: the callback need not be shared.
        let mut finished = 0;
        while finished < workers {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(()) => finished += 1,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            }
            progress(done.load(Ordering::Relaxed));
        }
    });
    // The first error in layer order, but not one caused by another's.
    let mut out = Vec::with_capacity(results.len());
    let mut stopped = None;
    for r in results {
        match r.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(l)) => out.push(l),
            Some(Err(Error::Invalid(m))) if m.starts_with("stopped: ") => stopped = Some(m),
            Some(Err(e)) => return Err(e),
            None => stopped = Some("stopped: another layer failed".into()),
        }
    }
    match stopped {
        Some(m) => Err(Error::Invalid(m)),
        None => Ok(out),
    }
}

/// Writes one converted layer as a tar: links into lower layers first
/// (their targets as the lower layers left them), then entries, opaque
/// markers and whiteouts in path order, then links within the layer.
/// `check` is called before each entry (an error stops the layer).
fn write_layer(
    blob: &mut LayerBlob,
    layer: &Layer,
    metas: &LinkMetas,
    chunk: &mut dyn FnMut(&ChunkId) -> Result<ChunkBytes>,
    check: &dyn Fn() -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let lower = layer
        .entries
        .iter()
        .filter_map(|e| match e {
            LayerEntry::LowerLink { path, target } => Some((path, target)),
            _ => None,
        })
        .zip(&metas.lower)
        .map(|((p, t), m)| (p, t, m));
    let inner: Vec<_> = layer
        .entries
        .iter()
        .filter_map(|e| match e {
            LayerEntry::HardLink { path, target } => Some((path, target)),
            _ => None,
        })
        .zip(&metas.inner)
        .map(|((p, t), m)| (p, t, m))
        .collect();
    for (path, target, meta) in lower {
        check()?;
        blob.header(&head(path.to_vec(), HeadKind::Link(target), meta))?;
    }
    let mut items: Vec<(Vec<u8>, Item<'_>)> = Vec::with_capacity(layer.entries.len());
    for e in &layer.entries {
        if let LayerEntry::Node { path, node, meta } = e {
            items.push((order_key(path), Item::Node(path, node, meta)));
        }
    }
    for o in &layer.opaques {
        items.push((marker_key(o, None), Item::Opaque(o)));
    }
    for w in &layer.whiteouts {
        let (dir, name) = split_parent(w);
        items.push((marker_key(dir, Some(name)), Item::Whiteout(w)));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, item) in &items {
        check()?;
        match item {
            Item::Opaque(d) => blob.header(&Head::marker(join(d, b".wh..wh..opq")))?,
            Item::Whiteout(w) => {
                let (dir, name) = split_parent(w);
                let mut n = b".wh.".to_vec();
                n.extend_from_slice(name);
                blob.header(&Head::marker(join(dir, &n)))?
            }
            Item::Node(path, node, meta) => match node {
                Node::File { size, extents, .. } => {
                    blob.header(&head(path.to_vec(), HeadKind::File { size: *size }, meta))?;
                    let mut written = 0u64;
                    for x in extents {
                        let data = chunk(&x.chunk)?;
                        let start = x.offset as usize;
                        let slice = start
                            .checked_add(x.len as usize)
                            .and_then(|end| data.get(start..end))
                            .ok_or_else(|| {
                                Error::Invalid(format!(
                                    "layer record: an extent of {} reaches past chunk {}",
                                    puzzle_store::error::show_path(path),
                                    x.chunk
                                ))
                            })?;
                        blob.write(slice)?;
                        written += slice.len() as u64;
                        progress(slice.len() as u64);
                    }
                    if written != *size {
                        return Err(Error::Invalid(format!(
                            "layer record: {} has {written} bytes of extents for size {size}",
                            puzzle_store::error::show_path(path)
                        )));
                    }
                    blob.pad(*size)?;
                }
                Node::Dir => blob.header(&head(dir_name(path), HeadKind::Dir, meta))?,
                Node::Symlink(t) => {
                    blob.header(&head(path.to_vec(), HeadKind::Symlink(t), meta))?
                }
                Node::CharDev { major, minor } => blob.header(&head(
                    path.to_vec(),
                    HeadKind::CharDev(*major, *minor),
                    meta,
                ))?,
                Node::BlockDev { major, minor } => blob.header(&head(
                    path.to_vec(),
                    HeadKind::BlockDev(*major, *minor),
                    meta,
                ))?,
                Node::Fifo => blob.header(&head(path.to_vec(), HeadKind::Fifo, meta))?,
            },
        }
    }
    for (path, target, meta) in inner {
        check()?;
        blob.header(&head(path.to_vec(), HeadKind::Link(target), meta))?;
    }
    Ok(())
}

fn corrupt(why: String) -> Error {
    Error::Store(puzzle_store::Error::Corrupt {
        what: "metadata blob".into(),
        why,
    })
}

/// Writes the flattened tree of `meta` as one tar, depth-first in name
/// order; the second and later names of a hard-linked inode are links to
/// the first.
fn write_squashed(
    blob: &mut LayerBlob,
    meta: &MetaBlob<Vec<u8>>,
    cache: &mut ChunkCache<'_>,
    opts: &ExportOptions<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let root = meta.root()?;
    let mut links: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut visited = vec![false; meta.inode_count() as usize];
    visited[0] = true;
    write_inode(blob, meta, &root, Vec::new(), None, cache, progress)?;
    let mut stack: Vec<(InodeRec, Vec<u8>, u32)> = vec![(root, Vec::new(), 0)];
    while let Some((dir, path, next)) = stack.pop() {
        cancelled(opts)?;
        if next >= dir.count() {
            continue;
        }
        stack.push((dir, path.clone(), next + 1));
        let (name, ino) = meta.dirent(&dir, next)?;
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(corrupt(format!("bad entry name in inode {}", dir.ino)));
        }
        let child_path = join(&path, name);
        let child = meta.inode(ino)?;
        if child.kind == Kind::Dir {
            if std::mem::replace(&mut visited[ino as usize], true) {
                return Err(corrupt(format!("directory inode {ino} is reachable twice")));
            }
            write_inode(
                blob,
                meta,
                &child,
                child_path.clone(),
                None,
                cache,
                progress,
            )?;
            stack.push((child, child_path, 0));
            continue;
        }
        let first = if child.nlink > 1 {
            match links.get(&ino) {
                Some(first) => Some(first.clone()),
                None => {
                    links.insert(ino, child_path.clone());
                    None
                }
            }
        } else {
            None
        };
        write_inode(
            blob,
            meta,
            &child,
            child_path,
            first.as_deref(),
            cache,
            progress,
        )?;
    }
    Ok(())
}

/// One inode of the flattened tree at `path` (a link to `link_to` if set).
fn write_inode(
    blob: &mut LayerBlob,
    meta: &MetaBlob<Vec<u8>>,
    ino: &InodeRec,
    path: Vec<u8>,
    link_to: Option<&[u8]>,
    cache: &mut ChunkCache<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let target;
    let kind = match (link_to, ino.kind) {
        (Some(first), _) => HeadKind::Link(first),
        (None, Kind::File) => HeadKind::File { size: ino.size },
        (None, Kind::Dir) => HeadKind::Dir,
        (None, Kind::Symlink) => {
            target = meta.symlink_target(ino)?;
            HeadKind::Symlink(target)
        }
        (None, Kind::CharDev) => HeadKind::CharDev(ino.rdev().0, ino.rdev().1),
        (None, Kind::BlockDev) => HeadKind::BlockDev(ino.rdev().0, ino.rdev().1),
        (None, Kind::Fifo) => HeadKind::Fifo,
    };
    let name = if ino.kind == Kind::Dir {
        dir_name(&path)
    } else {
        path.clone()
    };
    let h = Head {
        path: name,
        kind,
        mode: ino.mode,
        uid: ino.uid,
        gid: ino.gid,
        mtime: ino.mtime,
        mtime_nsec: ino.mtime_nsec,
        xattrs: meta.xattrs(ino)?,
    };
    blob.header(&h)?;
    if !matches!(kind, HeadKind::File { .. }) {
        return Ok(());
    }
    let mut written = 0u64;
    for i in 0..ino.count() {
        let e = meta.extent(ino, i)?;
        let data = cache.get(e.chunk)?;
        let start = e.chunk_offset as usize;
        let slice = start
            .checked_add(e.len as usize)
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| {
                corrupt(format!(
                    "extent {i} of {} reaches past its chunk",
                    puzzle_store::error::show_path(&path)
                ))
            })?;
        blob.write(slice)?;
        written += slice.len() as u64;
        progress(slice.len() as u64);
    }
    if written != ino.size {
        return Err(corrupt(format!(
            "{} has {written} bytes of extents for size {}",
            puzzle_store::error::show_path(&path),
            ino.size
        )));
    }
    blob.pad(ino.size)
}

/// An OCI layout directory being written.
struct Layout {
    dir: PathBuf,
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl Layout {
    /// `dir` created if missing; an existing directory must be an OCI
    /// layout or empty.
    fn open(dir: &Path) -> Result<Layout> {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?
            }
            Err(e) => return Err(Error::io(dir, e)),
            Ok(m) if !m.is_dir() => {
                return Err(Error::Invalid(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )))
            }
            Ok(_) => {
                let is_layout = dir.join("oci-layout").is_file();
                let empty = std::fs::read_dir(dir)
                    .map_err(|e| Error::io(dir, e))?
                    .next()
                    .is_none();
                if !is_layout && !empty {
                    return Err(Error::Invalid(format!(
                        "{} is neither an OCI layout nor empty",
                        dir.display()
                    )));
                }
            }
        }
        let layout = Layout { dir: dir.into() };
        let blobs = layout.blobs();
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
        let ol = dir.join("oci-layout");
        if !ol.is_file() {
            write_atomic(dir, "oci-layout", OCI_LAYOUT)?;
        }
        Ok(layout)
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    fn write_blob(&self, bytes: &[u8]) -> Result<BlobDigest> {
        let d = BlobDigest::of(bytes);
        write_atomic(&self.blobs(), &d.hex(), bytes)?;
        Ok(d)
    }

    /// Adds `manifest` to `index.json` (kept as it was otherwise), replacing
    /// any manifest tagged `tag`.
    fn add_to_index(&self, manifest: &Descriptor, tag: Option<&str>) -> Result<()> {
        let path = self.dir.join("index.json");
        let mut index = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| Error::Json {
                what: format!("{}", path.display()),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []})
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let manifests = index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| Error::Invalid(format!("{} has no manifests list", path.display())))?;
        let mut desc = manifest.clone();
        if let Some(tag) = tag {
            manifests.retain(|m| m["annotations"][ANNOTATION_REF_NAME] != tag);
            desc.annotations
                .insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
        }
        manifests.push(serde_json::to_value(&desc).expect("descriptor serializes"));
        let bytes = serde_json::to_vec(&index).expect("index serializes");
        write_atomic(&self.dir, "index.json", &bytes)
    }

    /// `manifest.json` as `docker save` writes it, naming blobs of the layout.
    fn write_docker_manifest(&self, out: &Exported, reference: Option<&str>) -> Result<()> {
        let blob = |d: &BlobDigest| format!("blobs/sha256/{}", d.hex());
        let m = serde_json::json!([{
            "Config": blob(&out.config.digest),
            "RepoTags": reference.map(|r| vec![r.to_string()]).unwrap_or_default(),
            "Layers": out.layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
        }]);
        write_atomic(
            &self.dir,
            "manifest.json",
            &serde_json::to_vec(&m).expect("json"),
        )
    }
}

/// Writes `bytes` as `dir/name` through a synced temp file and a rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(tmp.path(), e))?;
    let dest = dir.join(name);
    tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
    Ok(())
}

/// Writes a layout in a temp directory beside `file`, then a tar of it to
/// `file` (through a temp file and a rename).
fn archive(file: &Path, fill: impl FnOnce(&Layout) -> Result<Exported>) -> Result<Exported> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if file.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a directory; an archive is written as a file",
            file.display()
        )));
    }
    let work = tempfile::Builder::new()
        .prefix(".puzzle-export-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let layout = Layout::open(&work.path().join("layout"))?;
    let out = fill(&layout)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-archive-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let tmp_path = tmp.path().to_path_buf();
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        tar_dir(&layout.dir, &mut w).map_err(|e| Error::io(&tmp_path, e))?;
        w.flush().map_err(|e| Error::io(&tmp_path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(&tmp_path, e))?;
    tmp.persist(file).map_err(|e| Error::io(file, e.error))?;
    Ok(out)
}

/// A tar of a layout directory: every entry in sorted path order, owned by
/// root, mode 0644 (0755 for directories), time 0.
fn tar_dir(dir: &Path, w: &mut dyn Write) -> std::io::Result<()> {
    let mut paths = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let name = rel.join(e.file_name());
            if e.file_name().as_bytes().starts_with(b".tmp-") {
                continue;
            }
            if e.file_type()?.is_dir() {
                stack.push(name.clone());
            }
            paths.push((name, e.file_type()?.is_dir()));
        }
    }
    paths.sort_by(|a, b| {
        order_key(a.0.as_os_str().as_bytes()).cmp(&order_key(b.0.as_os_str().as_bytes()))
    });
    let fixed = Meta {
        mode: 0o644,
        ..Meta::default()
    };
    let dir_meta = Meta {
        mode: 0o755,
        ..Meta::default()
    };
    for (rel, is_dir) in paths {
        let bytes = rel.as_os_str().as_bytes();
        if is_dir {
            w.write_all(&tarw::header_bytes(&head(
                dir_name(bytes),
                HeadKind::Dir,
                &dir_meta,
            ))?)?;
            continue;
        }
        let mut f = std::fs::File::open(dir.join(&rel))?;
        let size = f.metadata()?.len();
        w.write_all(&tarw::header_bytes(&head(
            bytes.to_vec(),
            HeadKind::File { size },
            &fixed,
        ))?)?;
        let copied = std::io::copy(&mut (&mut f).take(size), w)?;
        if copied != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shrank while archived", rel.display()),
            ));
        }
        let rem = (size % 512) as usize;
        if rem != 0 {
            w.write_all(&[0u8; 512][..512 - rem])?;
        }
    }
    w.write_all(&[0u8; 1024])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_sources() {
        assert_eq!(
            "oci:out:v1".parse::<Target>().unwrap(),
            Target::OciDir {
                dir: "out".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            "oci:/nonexistent/out:v1".parse::<Target>().unwrap(),
            Target::OciDir {
                dir: "/nonexistent/out:v1".into(),
                tag: None
            },
            "no parent directory: no split"
        );
        let tmp = std::env::temp_dir();
        let file = tmp.join("puzzle-no-such-file.tar");
        assert_eq!(
            format!("docker-archive:{}:app:2", file.display())
                .parse::<Target>()
                .unwrap(),
            Target::DockerArchive {
                file: file.clone(),
                reference: Some("app:2".into())
            }
        );
        assert_eq!(
            format!("oci-archive:{}", file.display())
                .parse::<Target>()
                .unwrap(),
            Target::OciArchive { file, tag: None }
        );
        assert!("docker://example.com/a:1".parse::<Target>().is_err());
    }

    #[test]
    fn markers_sort_after_their_directory_before_its_children() {
        let mut keys = [
            (order_key(b"a/b"), "a/b"),
            (order_key(b"a-c"), "a-c"),
            (order_key(b"a"), "a"),
            (marker_key(b"a", Some(b"x")), "a/.wh.x"),
            (marker_key(b"a", None), "a/.wh..wh..opq"),
            (marker_key(b"", Some(b"z")), ".wh.z"),
            (order_key(b""), "./"),
            (order_key(b"a/ "), "a/ "),
        ];
        keys.sort();
        let got: Vec<&str> = keys.iter().map(|k| k.1).collect();
        assert_eq!(
            got,
            [
                "./",
                ".wh.z",
                "a",
                "a/.wh..wh..opq",
                "a/.wh.x",
                "a/ ",
                "a/b",
                "a-c"
            ]
        );
    }

    #[test]
    fn config_keeps_fields_and_rewrites_layers() {
        let cfg = br#"{"architecture":"amd64","created":"2024-01-01T00:00:00Z","config":{"Env":["A=1"],"Cmd":["sh"],"Labels":{"l":"v"}},"rootfs":{"type":"layers","diff_ids":["sha256:00"]},"history":[{"created_by":"a"},{"created_by":"b","empty_layer":true}]}"#;
        let d = BlobDigest::of(b"x");
        let out: serde_json::Value =
            serde_json::from_slice(&rewrite_config(cfg, &[d], false).unwrap()).unwrap();
        assert_eq!(out["rootfs"]["diff_ids"][0], d.to_string());
        assert_eq!(out["config"]["Env"][0], "A=1");
        assert_eq!(out["config"]["Labels"]["l"], "v");
        assert_eq!(out["history"].as_array().unwrap().len(), 2);
        let sq: serde_json::Value =
            serde_json::from_slice(&rewrite_config(cfg, &[d], true).unwrap()).unwrap();
        let h = sq["history"].as_array().unwrap();
        assert_eq!(h.len(), 3);
        assert!(h[..2].iter().all(|s| s["empty_layer"] == true));
        assert_eq!(h[2]["created"], "2024-01-01T00:00:00Z");
        assert!(h[2].get("empty_layer").is_none());
        assert!(rewrite_config(b"[]", &[], false).is_err());
    }
}
