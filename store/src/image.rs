//! Committing a flattened image to the store, and opening a stored one.

use std::collections::BTreeMap;

use crate::digest::BlobDigest;
use crate::error::{Error, IoContext, Result};
use crate::index::ChunkIndex;
use crate::layout::{ImageRef, Pin, Store, FORMAT_VERSION, MAX_JSON};
use crate::manifest::*;
use crate::meta::{self, MetaBlob, SourceInfo};
use crate::tree::Tree;

/// Largest metadata blob we read whole (about 20 million inodes).
pub const MAX_METADATA: u64 = 4 << 30;

/// What a commit wrote.
#[derive(Clone, Debug)]
pub struct Committed {
    pub manifest: Descriptor,
    pub metadata: Descriptor,
    pub packs: usize,
}

/// Writes the metadata blob, the config and the manifest, then points `name`
/// at the manifest. Packs and index entries for every chunk the tree uses
/// must already be durable. The caller holds the store lock.
pub fn commit(
    store: &Store,
    index: &ChunkIndex,
    tree: &Tree,
    source: &SourceInfo,
    config_bytes: &[u8],
    name: &str,
) -> Result<Committed> {
    crate::layout::check_name(name)?;
    let meta_bytes = meta::encode(tree, source, |id| {
        index.get(id)?.ok_or(Error::ChunkNotFound(*id))
    })?;
    let config = Descriptor::new(
        MEDIA_TYPE_CONFIG,
        BlobDigest::of(config_bytes),
        config_bytes.len() as u64,
    );
    let (desc, metadata, packs) =
        write_image(store, &meta_bytes, config, Some(config_bytes), None)?;
    store.set_tag(name, &desc)?;
    Ok(Committed {
        manifest: desc,
        metadata,
        packs,
    })
}

/// Writes a metadata blob and the manifest naming it, the packs it uses and
/// `config` (stored already, or written here from `config_bytes`), durably
/// and with one directory fsync, with `prefetch` (a prefetch list already
/// stored) as its last layer. Packs must be durable. Returns the manifest
/// and metadata descriptors and the number of packs. Tags nothing.
pub fn write_image(
    store: &Store,
    meta_bytes: &[u8],
    config: Descriptor,
    config_bytes: Option<&[u8]>,
    prefetch: Option<Descriptor>,
) -> Result<(Descriptor, Descriptor, usize)> {
    let size = |pack: &BlobDigest| {
        let path = store.blob_path(pack);
        Ok(std::fs::metadata(&path).at(&path)?.len())
    };
    write_image_sized(store, meta_bytes, config, config_bytes, prefetch, size)
}

/// [`write_image`] for an image whose packs need not all be stored: `size`
/// gives each pack's size (a lazy mount's image names packs still in the
/// registry).
pub fn write_image_sized(
    store: &Store,
    meta_bytes: &[u8],
    config: Descriptor,
    config_bytes: Option<&[u8]>,
    prefetch: Option<Descriptor>,
    size: impl Fn(&BlobDigest) -> Result<u64>,
) -> Result<(Descriptor, Descriptor, usize)> {
    let view = MetaBlob::open(meta_bytes)?;
    let stored = meta::compress(meta_bytes);
    let metadata = Descriptor::new(
        MEDIA_TYPE_METADATA_ZSTD,
        BlobDigest::of(&stored),
        stored.len() as u64,
    );
    let mut layers = vec![metadata.clone()];
    for pack in view.packs()? {
        layers.push(Descriptor::new(MEDIA_TYPE_PACK, pack, size(&pack)?));
    }
    let packs = layers.len() - 1;
    layers.extend(prefetch);
    let cfg = store.config();
    let annotations = BTreeMap::from([
        (ANNOTATION_FORMAT.to_string(), FORMAT_VERSION.to_string()),
        (ANNOTATION_CHUNKER.to_string(), cfg.chunker_label()),
        (ANNOTATION_COMPRESSION.to_string(), cfg.compression.label()),
    ]);
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.to_string(),
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        config,
        layers,
        annotations,
    };
    let bytes = manifest.to_bytes();
    let mut blobs: Vec<&[u8]> = config_bytes.into_iter().collect();
    blobs.extend([&stored[..], &bytes[..]]);
    let digest = *store.write_blobs(&blobs)?.last().expect("the manifest");
    let desc = Descriptor::new(MEDIA_TYPE_MANIFEST, digest, bytes.len() as u64);
    Ok((desc, metadata, packs))
}

/// A stored image, opened for reading.
pub struct Image {
    pub name: String,
    pub manifest_digest: BlobDigest,
    pub manifest: Manifest,
    pub meta: MetaBlob<Vec<u8>>,
}

/// Reads and checks a manifest blob.
pub fn read_manifest(store: &Store, digest: &BlobDigest) -> Result<Manifest> {
    let bytes = store.read_blob(digest, MAX_JSON)?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: format!("manifest {digest}"),
        source,
    })?;
    let version = manifest.annotations.get(ANNOTATION_FORMAT);
    if let (Some(first), true) = (manifest.layers.first(), manifest.metadata().is_none()) {
        if first
            .media_type
            .starts_with("application/vnd.puzzle.metadata.")
        {
            return Err(Error::CorruptBlob {
                digest: digest.to_string(),
                why: format!(
                    "its metadata blob has media type {}, which this puzzle does not read \
                     (written by a newer version?)",
                    first.media_type
                ),
            });
        }
    }
    if version.is_none() && manifest.metadata().is_none() {
        return Err(Error::CorruptBlob {
            digest: digest.to_string(),
            why: "not a puzzle image (another tool copied a plain image into the store?); \
                  `puzzle rm` its tag to drop it"
                .to_string(),
        });
    }
    if version.map(String::as_str) != Some(&FORMAT_VERSION.to_string())
        || manifest.metadata().is_none()
    {
        return Err(Error::CorruptBlob {
            digest: digest.to_string(),
            why: format!(
                "not a puzzle format {FORMAT_VERSION} manifest (format {})",
                version.map(String::as_str).unwrap_or("missing")
            ),
        });
    }
    Ok(manifest)
}

/// Opens the image tagged `name` and pins it (see [`Store::pin_image`]):
/// gc keeps everything it uses while the [`Pin`] is held.
pub fn open_pinned(store: &Store, name: &str) -> Result<(Image, Pin)> {
    let (r, pin) = store.pin_image(name)?;
    Ok((open_ref(store, &r)?, pin))
}

/// Opens the image tagged `name`: its manifest and metadata blob, both verified.
/// Not pinned: use [`open_pinned`] to read chunks while a gc may run.
pub fn open(store: &Store, name: &str) -> Result<Image> {
    open_ref(store, &store.resolve(name)?)
}

fn open_ref(store: &Store, r: &ImageRef) -> Result<Image> {
    let name = &r.name;
    let manifest = read_manifest(store, &r.manifest.digest)?;
    let md = manifest.metadata().expect("checked").clone();
    let meta = MetaBlob::open(read_metadata(store, &md)?)?;
    Ok(Image {
        name: name.to_string(),
        manifest_digest: r.manifest.digest,
        manifest,
        meta,
    })
}

/// The bytes of the metadata blob `md` names, checked against its digest and
/// decompressed if stored compressed.
pub fn read_metadata(store: &Store, md: &Descriptor) -> Result<Vec<u8>> {
    let stored = store.read_blob(&md.digest, MAX_METADATA)?;
    let corrupt = |why: String| Error::CorruptBlob {
        digest: md.digest.to_string(),
        why,
    };
    if stored.len() as u64 != md.size {
        return Err(corrupt(format!(
            "{} bytes, manifest says {}",
            stored.len(),
            md.size
        )));
    }
    if md.media_type == MEDIA_TYPE_METADATA_ZSTD {
        meta::decompress(&stored, MAX_METADATA).map_err(|e| corrupt(crate::error::line(&e)))
    } else {
        Ok(stored)
    }
}

/// What [`set_prefetch`] stored.
#[derive(Clone, Debug)]
pub struct PrefetchSet {
    /// The image's new manifest, now tagged with its name.
    pub manifest: Descriptor,
    /// The prefetch blob (None when the list was removed).
    pub blob: Option<Descriptor>,
    /// Ranges kept, and the paths the image lacks (dropped).
    pub entries: usize,
    pub missing: Vec<Vec<u8>>,
}

/// Gives the image tagged `name` the prefetch list `trace` (a trace in the
/// text form of [`crate::prefetch`], checked against the image by
/// [`crate::prefetch::normalize`]), or none: writes the blob and a manifest
/// equal to the old one but for its last layer, and points `name` at it.
/// The caller holds the store lock.
pub fn set_prefetch(store: &Store, name: &str, trace: Option<&[u8]>) -> Result<PrefetchSet> {
    let img = open(store, name)?;
    let mut manifest = img.manifest;
    manifest
        .layers
        .retain(|d| d.media_type != MEDIA_TYPE_PREFETCH);
    let (mut blobs, mut blob, mut entries, mut missing) = (Vec::new(), None, 0, Vec::new());
    if let Some(trace) = trace {
        let n = crate::prefetch::normalize(&img.meta, trace)?;
        let d = Descriptor::new(
            MEDIA_TYPE_PREFETCH,
            BlobDigest::of(&n.bytes),
            n.bytes.len() as u64,
        );
        manifest.layers.push(d.clone());
        (blob, entries, missing) = (Some(d), n.entries, n.missing);
        blobs.push(n.bytes);
    }
    blobs.push(manifest.to_bytes());
    let refs: Vec<&[u8]> = blobs.iter().map(Vec::as_slice).collect();
    let digest = *store.write_blobs(&refs)?.last().expect("the manifest");
    let desc = Descriptor::new(
        MEDIA_TYPE_MANIFEST,
        digest,
        refs.last().map_or(0, |b| b.len()) as u64,
    );
    store.set_tag(name, &desc)?;
    Ok(PrefetchSet {
        manifest: desc,
        blob,
        entries,
        missing,
    })
}

/// The prefetch list of an image, if it has one: its bytes checked against
/// the manifest's digest and size, parsed.
pub fn read_prefetch(
    store: &Store,
    manifest: &Manifest,
) -> Result<Option<Vec<crate::prefetch::TraceEntry>>> {
    let Some(d) = manifest.prefetch() else {
        return Ok(None);
    };
    let bytes = store.read_blob(&d.digest, crate::prefetch::MAX_TRACE)?;
    if bytes.len() as u64 != d.size {
        return Err(Error::CorruptBlob {
            digest: d.digest.to_string(),
            why: format!("{} bytes, manifest says {}", bytes.len(), d.size),
        });
    }
    crate::prefetch::parse(&bytes)
        .map(Some)
        .map_err(|e| Error::CorruptBlob {
            digest: d.digest.to_string(),
            why: crate::error::line(&e),
        })
}

/// A stored image whose metadata blob is memory-mapped rather than read.
pub struct MappedImage {
    pub name: String,
    pub manifest_digest: BlobDigest,
    pub manifest: Manifest,
    pub meta: MetaBlob<crate::mmap::Mapped>,
    /// Held from before the manifest was read: gc keeps every blob it needs.
    pub pin: Pin,
}

/// Opens the image tagged `name` with its metadata blob mapped in place, for
/// mounts: nothing is decoded up front. The manifest is verified; the
/// metadata blob is checked against its digest when `verify` is set (one
/// SHA-256 pass over it) and is always bounds-checked record by record.
/// A compressed metadata blob (what builds write) is read, checked against
/// its digest (whatever `verify` says: it is read whole anyway) and
/// decompressed into memory instead.
/// Only blobs are read, never the index.
pub fn open_mapped(store: &Store, name: &str, verify: bool) -> Result<MappedImage> {
    let (r, pin) = store.pin_image(name)?;
    let manifest = read_manifest(store, &r.manifest.digest)?;
    let md = manifest.metadata().expect("checked");
    let buf = if md.media_type == MEDIA_TYPE_METADATA_ZSTD {
        crate::mmap::Mapped::owned(read_metadata(store, md)?)
    } else {
        map_plain_metadata(store, md, verify)?
    };
    let meta = MetaBlob::open(buf)?;
    Ok(MappedImage {
        name: name.to_string(),
        manifest_digest: r.manifest.digest,
        manifest,
        meta,
        pin,
    })
}

/// Maps a metadata blob stored plain, checking its size and, when `verify`
/// is set, its digest.
fn map_plain_metadata(store: &Store, md: &Descriptor, verify: bool) -> Result<crate::mmap::Mapped> {
    let path = store.blob_path(&md.digest);
    let file = store.open_blob(&md.digest)?;
    #[allow(unsafe_code)]
    // SAFETY: blobs are immutable once in `blobs/`: they are written under
    // `tmp/` and renamed in, never opened for writing again, and gc only
    // unlinks them (which leaves a mapping valid). A corrupt blob is caught
    // by the digest check or the bounds checks, not by the mapping.
    let map = unsafe { crate::mmap::Mapped::map(&file) }.at(&path)?;
    let bytes = map.as_ref();
    if bytes.len() as u64 != md.size || bytes.len() as u64 > MAX_METADATA {
        return Err(Error::CorruptBlob {
            digest: md.digest.to_string(),
            why: format!("{} bytes, manifest says {}", bytes.len(), md.size),
        });
    }
    if verify {
        let actual = BlobDigest::of(bytes);
        if actual != md.digest {
            return Err(Error::CorruptBlob {
                digest: md.digest.to_string(),
                why: format!("content hashes to {actual}"),
            });
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    /// Builds write the metadata blob compressed; a blob stored plain (as
    /// builds before that did) still reads.
    #[test]
    fn metadata_reads_stored_plain_or_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(puzzle_chunker::ChunkParams::default(), 3);
        let store = Store::open_or_create(dir.path(), &config).unwrap();
        let raw = meta::encode(&Tree::new(), &SourceInfo::default(), |id| {
            Err(Error::ChunkNotFound(*id))
        })
        .unwrap();
        let stored = meta::compress(&raw);
        let digests = store.write_blobs(&[&raw, &stored]).unwrap();
        let plain = Descriptor::new(MEDIA_TYPE_METADATA, digests[0], raw.len() as u64);
        let zstd = Descriptor::new(MEDIA_TYPE_METADATA_ZSTD, digests[1], stored.len() as u64);
        assert_eq!(read_metadata(&store, &plain).unwrap(), raw);
        assert_eq!(read_metadata(&store, &zstd).unwrap(), raw);
        // The wrong type for the bytes is refused, not misread.
        let wrong = Descriptor::new(MEDIA_TYPE_METADATA_ZSTD, digests[0], raw.len() as u64);
        assert!(read_metadata(&store, &wrong).is_err());
    }
}
