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

mod dest;
mod layers;
mod squash;
mod tarw;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use puzzle_chunker::ChunkId;
use puzzle_store::extract::ChunkCache;
use puzzle_store::frame::{ChunkBytes, FrameReader};
use puzzle_store::image::Image;
use puzzle_store::index::ChunkIndex;
use puzzle_store::layout::{Store, MAX_JSON};
use puzzle_store::manifest::{Descriptor, Manifest, MEDIA_TYPE_CONFIG, MEDIA_TYPE_MANIFEST};
use puzzle_store::meta::{InodeRec, Kind, MetaBlob, SourceInfo};
use puzzle_store::pack::ChunkLoc;
use puzzle_store::tree::{split_parent, Layer, LayerEntry, Meta, Node, Tree};
use puzzle_store::BlobDigest;

use crate::error::{Error, Result};
pub use dest::Target;
use dest::{archive, Layout};
use layers::write_layers;
use squash::write_squashed;
use tarw::{Head, HeadKind, LayerBlob};
pub use tarw::{LayerCompression, WrittenLayer};

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
        // A plain image again: no puzzle artifactType.
        artifact_type: None,
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
