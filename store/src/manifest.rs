//! The OCI JSON puzzle writes: descriptors, image manifests and the store's
//! `index.json`. Our own structs (not oci-spec's) because annotations must
//! serialize in a fixed order for manifests to be deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::BlobDigest;

pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The image metadata blob (docs/FORMAT.md, "Metadata blob").
pub const MEDIA_TYPE_METADATA: &str = "application/vnd.puzzle.metadata.v1";
/// The metadata blob as one zstd frame (what builds write; the uncompressed
/// type is still read).
pub const MEDIA_TYPE_METADATA_ZSTD: &str = "application/vnd.puzzle.metadata.v1+zstd";
/// A pack of zstd chunk frames (docs/FORMAT.md, "Pack").
pub const MEDIA_TYPE_PACK: &str = "application/vnd.puzzle.pack.v1";
/// The prefetch list of an image, the layer after its packs (docs/FORMAT.md,
/// "Prefetch list"); images without one are read as before.
pub const MEDIA_TYPE_PREFETCH: &str = "application/vnd.puzzle.prefetch.v1";
/// The `artifactType` of a puzzle image manifest: what tells a registry (and
/// tools listing referrers or artifacts) that this is a puzzle image, not a
/// runnable container image, though `config` is the original image config.
pub const ARTIFACT_TYPE: &str = "application/vnd.puzzle.image.v1";

pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_FORMAT: &str = "dev.puzzle.format.version";
pub const ANNOTATION_CHUNKER: &str = "dev.puzzle.chunker";
pub const ANNOTATION_COMPRESSION: &str = "dev.puzzle.compression";
/// On an `index.json` entry of a pulled image: the digest of the manifest
/// in the registry it was pulled from (docs/FORMAT.md, "Pull").
pub const ANNOTATION_ORIGIN_MANIFEST: &str = "dev.puzzle.origin.manifest";
/// On an `index.json` entry of a pulled image: the reference it was pulled
/// from (`HOST/REPO:TAG` or `HOST/REPO@DIGEST`).
pub const ANNOTATION_ORIGIN_REF: &str = "dev.puzzle.origin.ref";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: BlobDigest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: BlobDigest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
        }
    }
}

/// A puzzle image manifest: `config` is the original image config; `layers`
/// holds the metadata blob first, then every pack the image references, then
/// optionally its prefetch list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// [`ARTIFACT_TYPE`] in what builds write; absent in manifests written
    /// before it was added (still read) and in exported plain images.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    /// The metadata blob's descriptor, checked to be one.
    pub fn metadata(&self) -> Option<&Descriptor> {
        self.layers.first().filter(|d| {
            d.media_type == MEDIA_TYPE_METADATA || d.media_type == MEDIA_TYPE_METADATA_ZSTD
        })
    }

    pub fn packs(&self) -> impl Iterator<Item = &Descriptor> {
        self.layers
            .iter()
            .filter(|d| d.media_type == MEDIA_TYPE_PACK)
    }

    /// The prefetch list's descriptor, if the image has one.
    pub fn prefetch(&self) -> Option<&Descriptor> {
        self.layers
            .iter()
            .skip(1)
            .find(|d| d.media_type == MEDIA_TYPE_PREFETCH)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("manifest serializes")
    }
}

/// `index.json` of the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default = "index_media_type")]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

fn index_media_type() -> String {
    MEDIA_TYPE_INDEX.to_string()
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: index_media_type(),
            manifests: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn manifest(artifact: Option<&str>) -> String {
        let at = artifact
            .map(|a| format!(r#""artifactType":"{a}","#))
            .unwrap_or_default();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_MANIFEST}",{at}"config":{{"mediaType":"{MEDIA_TYPE_CONFIG}","digest":"{D}","size":0}},"layers":[{{"mediaType":"{MEDIA_TYPE_METADATA_ZSTD}","digest":"{D}","size":0}}],"annotations":{{"{ANNOTATION_FORMAT}":"2"}}}}"#
        )
    }

    #[test]
    fn manifests_with_and_without_artifact_type_read_back_to_their_bytes() {
        // Written before artifactType: read, and written again unchanged.
        let old = manifest(None);
        let m: Manifest = serde_json::from_str(&old).unwrap();
        assert_eq!(m.artifact_type, None);
        assert_eq!(m.to_bytes(), old.as_bytes());
        // What builds write now: the field right after mediaType.
        let new = manifest(Some(ARTIFACT_TYPE));
        let m: Manifest = serde_json::from_str(&new).unwrap();
        assert_eq!(m.artifact_type.as_deref(), Some(ARTIFACT_TYPE));
        assert_eq!(m.to_bytes(), new.as_bytes());
    }
}
