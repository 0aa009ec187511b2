//! Image sources: open an image from an OCI layout directory, an OCI archive,
//! a `docker save` archive or a registry (`docker://`, see the registry
//! module), and stream its layers as verified tar.
//!
//! [`SourceRef`] is what the user wrote (`oci:./img:tag`, ...). [`open`] resolves
//! it for a [`Platform`] to an [`ImageSource`]: its [`OpenedImage`] holds the
//! verified config and one [`LayerInfo`] per layer, and
//! [`ImageSource::open_layer`] returns a [`LayerReader`] that yields the
//! layer's uncompressed tar while checking the blob digest, its size and the
//! diff_id.
//!
//! Everything read is untrusted: JSON documents are size-capped before they are
//! read ([`MAX_JSON_BYTES`]), every blob is checked against its digest while it
//! streams, and digests are validated before they name a file. Archives are
//! never extracted: one scan of the tar headers records where each member's
//! bytes are, and blobs are read in place.
//!
//! ```no_run
//! use std::io::Read;
//! use puzzle_oci::source::{self, Platform, SourceRef};
//!
//! let src: SourceRef = "oci:./debian-image:bookworm".parse()?;
//! let image = source::open(&src, &Platform::default())?;
//! for layer in &image.image().layers {
//!     let mut reader = image.open_layer(layer)?;
//!     let mut tar = tar::Archive::new(&mut reader);
//!     for entry in tar.entries()? {
//!         println!("{}", entry?.path()?.display());
//!     }
//!     let stats = reader.finish()?; // digest, size and diff_id are checked here
//!     println!("{} -> {} bytes", stats.compressed_bytes, stats.uncompressed_bytes);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod archive;
mod blobs;
mod digest;
mod docker;
mod layer;
mod layout;
mod reference;
pub(crate) mod registry;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::error::{Error, Result};

pub use digest::{parse_digest, parse_sha256, DigestAlgo, Sha256Digest};
pub use layer::{Compression, LayerReader, LayerStats};
pub use reference::{Platform, SourceRef};
pub use registry::{fuzzing as registry_fuzzing, parse_creds, ClientOptions, RetryPolicy};

/// Largest JSON document (index.json, manifest.json, manifest, config) read.
pub const MAX_JSON_BYTES: u64 = blobs::MAX_JSON;

/// One layer of an opened image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// Position in the manifest, base layer first.
    pub index: usize,
    /// `sha256:<hex>` of the blob as stored (usually compressed).
    pub digest: String,
    /// Size of the blob as stored.
    pub size: u64,
    /// Media type from the manifest; informative only, compression is
    /// detected from the blob's bytes.
    pub media_type: String,
    /// `sha256:<hex>` of the uncompressed tar (`config.rootfs.diff_ids[index]`).
    pub diff_id: String,
}

/// An image's manifest, config and layer list, all verified.
#[derive(Clone, Debug)]
pub struct OpenedImage {
    /// The source, as [`SourceRef`] displays it, for messages.
    pub source: String,
    /// Digest of the image manifest, when the source has one (OCI layouts and
    /// archives, newer `docker save`); `None` for legacy `docker save`.
    pub manifest_digest: Option<String>,
    /// `sha256:<hex>` of the config blob.
    pub config_digest: String,
    /// The config exactly as stored, verified against `config_digest`.
    pub config_bytes: Vec<u8>,
    pub config: oci_spec::image::ImageConfiguration,
    /// Layers, base first; as many as `config.rootfs.diff_ids`.
    pub layers: Vec<LayerInfo>,
}

/// An opened image whose layers can be streamed.
pub trait ImageSource: Send + Sync {
    fn image(&self) -> &OpenedImage;

    /// The layer's uncompressed tar stream. Compression is detected from the
    /// blob's magic bytes (gzip `1f 8b`, zstd `28 b5 2f fd`, else plain), not
    /// trusted from the media type. Layers may be opened concurrently.
    fn open_layer(&self, layer: &LayerInfo) -> Result<LayerReader>;
}

/// Opens `src`, choosing `platform`'s image from multi-platform indexes
/// (registries with the default [`ClientOptions`]).
pub fn open(src: &SourceRef, platform: &Platform) -> Result<Box<dyn ImageSource>> {
    open_with(src, platform, &ClientOptions::default())
}

/// Opens `src` like [`open`], a registry with `registry` options.
pub fn open_with(
    src: &SourceRef,
    platform: &Platform,
    registry: &ClientOptions,
) -> Result<Box<dyn ImageSource>> {
    let name = src.to_string();
    let resolved = match src {
        SourceRef::OciDir { dir, reference } => {
            if !dir.is_dir() {
                let e = std::fs::metadata(dir).err().unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")
                });
                return Err(Error::io(dir, e));
            }
            layout::open(
                &blobs::Store::Dir(dir.clone()),
                reference.as_deref(),
                platform,
                &name,
            )?
        }
        SourceRef::OciArchive { file, reference } => {
            let store = blobs::Store::Archive(Arc::new(archive::TarIndex::scan(file)?));
            layout::open(&store, reference.as_deref(), platform, &name)?
        }
        SourceRef::DockerArchive { file, reference } => {
            docker::open(file, reference.as_deref(), platform, &name)?
        }
        SourceRef::Registry { reference } => {
            let src = registry::open(reference, platform, registry)?;
            check_platform(src.image(), platform)?;
            return Ok(Box::new(src));
        }
    };
    check_platform(&resolved.image, platform)?;
    Ok(Box::new(LocalSource {
        image: resolved.image,
        layer_locs: resolved.layer_locs,
    }))
}

/// Refuses an image whose config says it is for another platform than the
/// one asked for (a single-platform image has no index to choose from).
fn check_platform(image: &OpenedImage, platform: &Platform) -> Result<()> {
    let c = &image.config;
    let (os, arch) = (c.os().to_string(), c.architecture().to_string());
    if os.is_empty() || arch.is_empty() || platform.matches(&os, &arch, c.variant().as_deref()) {
        return Ok(());
    }
    let mut theirs = format!("{os}/{arch}");
    if let Some(v) = c.variant() {
        theirs.push('/');
        theirs.push_str(v);
    }
    let theirs = theirs.escape_debug().to_string();
    Err(Error::NotFound(format!(
        "no {platform} image in {}: it is {theirs} only; pick it with --platform {theirs}",
        image.source
    )))
}

/// An image whose blobs are in a local directory or archive file.
struct LocalSource {
    image: OpenedImage,
    layer_locs: Vec<blobs::BlobLoc>,
}

impl ImageSource for LocalSource {
    fn image(&self) -> &OpenedImage {
        &self.image
    }

    fn open_layer(&self, layer: &LayerInfo) -> Result<LayerReader> {
        let (Some(ours), Some(loc)) = (
            self.image.layers.get(layer.index),
            self.layer_locs.get(layer.index),
        ) else {
            return Err(Error::NotFound(format!(
                "{} has no layer {}",
                self.image.source, layer.index
            )));
        };
        if ours != layer {
            return Err(Error::Invalid(format!(
                "layer {} {} does not belong to {}",
                layer.index, layer.digest, self.image.source
            )));
        }
        let digest = parse_sha256(&ours.digest)?;
        let diff_id = parse_sha256(&ours.diff_id)?;
        let what = format!("layer blob {}", ours.digest);
        let raw = loc.open_verified(what.clone(), digest, ours.size)?;
        LayerReader::new(raw, diff_id, what)
    }
}
