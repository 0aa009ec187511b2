//! `docker://` sources: an image in a registry (distribution API v2).
//!
//! The manifest (through an image index, chosen by platform) and the config
//! are fetched and verified when the source opens; a layer blob is fetched
//! only when the build opens it, so layers already converted in the store
//! are never downloaded. Blobs stream through conversion with their digest
//! checked as they go; a dropped connection resumes with `Range`.

mod auth;
mod client;
mod creds;
mod options;
pub(crate) mod ranges;
mod reference;
mod retry;
mod stream;
pub(crate) mod upload;

pub use options::{parse_creds, ClientOptions, RetryPolicy};

use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::error::{Error, Result};

use super::{
    digest::{Sha256Digest, VerifyingReader},
    layout::{kind_of, parse_json, select_platform, Kind, MAX_DEPTH},
    parse_sha256, ImageSource, LayerInfo, LayerReader, OpenedImage, Platform,
};

pub(crate) use client::Client;
pub(crate) use reference::{Reference, RegistryRef};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// An image in a registry whose layers are fetched on demand.
pub(crate) struct RegistrySource {
    client: Arc<Client>,
    image: OpenedImage,
}

/// Checks that `bytes` hash to `digest` (for documents named by digest).
fn verify(bytes: &[u8], digest: &Sha256Digest, what: &str) -> Result<()> {
    let actual = Sha256Digest::of(bytes);
    if &actual != digest {
        return Err(Error::DigestMismatch {
            what: what.to_owned(),
            expected: digest.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

/// Checks the syntax of what follows `docker://`.
pub(crate) fn check_reference(reference: &str) -> Result<()> {
    RegistryRef::parse(reference).map(drop)
}

/// Opens `reference` (what follows `docker://`) for `platform`.
pub(crate) fn open(
    reference: &str,
    platform: &Platform,
    opts: &ClientOptions,
) -> Result<RegistrySource> {
    let r = RegistryRef::parse(reference)?;
    let source = r.to_string();
    let client = Arc::new(Client::with_options(r.clone(), opts)?);
    let mut wanted = r.reference.clone();
    for _ in 0..MAX_DEPTH {
        let (bytes, media_type) = client.manifest(wanted.as_str(), ACCEPT)?;
        let digest = Sha256Digest::of(&bytes);
        let what = format!("manifest {} of {source}", wanted.as_str());
        if let Reference::Digest(d) = &wanted {
            verify(&bytes, &parse_sha256(d)?, &what)?;
        }
        match kind_of(&media_type, &bytes, &what)? {
            Kind::Manifest => {
                let manifest: ImageManifest = parse_json(&bytes, &what)?;
                let image = image_from_manifest(&client, digest, &manifest, &source)?;
                return Ok(RegistrySource { client, image });
            }
            Kind::Index => {
                let what = format!("image index {digest} of {source}");
                let index: ImageIndex = parse_json(&bytes, &what)?;
                let entries: Vec<&Descriptor> = index.manifests().iter().collect();
                let chosen = select_platform(&entries, platform, &what)?;
                let d = chosen.digest().to_string();
                parse_sha256(&d)?;
                wanted = Reference::Digest(d);
            }
        }
    }
    Err(Error::Invalid(format!(
        "{source}: image indexes nested deeper than {MAX_DEPTH}"
    )))
}

/// Fetches and verifies the config and lists the layers.
fn image_from_manifest(
    client: &Client,
    manifest_digest: Sha256Digest,
    manifest: &ImageManifest,
    source: &str,
) -> Result<OpenedImage> {
    let config_desc = manifest.config();
    let config_digest = parse_sha256(config_desc.digest().as_ref())?;
    let what = format!("config {config_digest} of {source}");
    let config_bytes = client.small_blob(&config_digest.to_string(), &what)?;
    verify(&config_bytes, &config_digest, &what)?;
    if config_bytes.len() as u64 != config_desc.size() {
        return Err(Error::SizeMismatch {
            what,
            expected: config_desc.size(),
            actual: config_bytes.len() as u64,
        });
    }
    let config: ImageConfiguration = parse_json(&config_bytes, &what)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Invalid(format!(
            "manifest {manifest_digest} of {source} has {} layers but config {config_digest} \
             lists {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (index, (desc, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let digest = parse_sha256(desc.digest().as_ref())?;
        let diff_id = parse_sha256(diff_id)
            .map_err(|e| Error::Invalid(format!("config {config_digest}: diff_id {index}: {e}")))?;
        layers.push(LayerInfo {
            index,
            digest: digest.to_string(),
            size: desc.size(),
            media_type: desc.media_type().to_string(),
            diff_id: diff_id.to_string(),
        });
    }
    Ok(OpenedImage {
        source: source.to_owned(),
        manifest_digest: Some(manifest_digest.to_string()),
        config_digest: config_digest.to_string(),
        config_bytes,
        config,
        layers,
    })
}

impl ImageSource for RegistrySource {
    fn image(&self) -> &OpenedImage {
        &self.image
    }

    fn open_layer(&self, layer: &LayerInfo) -> Result<LayerReader> {
        if self.image.layers.get(layer.index) != Some(layer) {
            return Err(Error::Invalid(format!(
                "layer {} {} does not belong to {}",
                layer.index, layer.digest, self.image.source
            )));
        }
        let digest = parse_sha256(&layer.digest)?;
        let diff_id = parse_sha256(&layer.diff_id)?;
        let what = format!("layer blob {}", layer.digest);
        let stream = self.client.blob_stream(&layer.digest, layer.size);
        let url = stream.url();
        let raw = VerifyingReader::new(Box::new(stream), what.clone(), url, digest, layer.size);
        LayerReader::new(raw, diff_id, what)
    }
}

/// The parsers of what registries and users hand us, for the fuzz targets
/// (not an API).
#[doc(hidden)]
pub mod fuzzing {
    /// A `docker://` reference; its Display parses back to itself.
    pub fn reference(s: &str) -> Option<String> {
        let r = super::RegistryRef::parse(s).ok()?;
        let shown = r.to_string();
        let again = super::RegistryRef::parse(shown.strip_prefix("docker://").unwrap_or(&shown))
            .expect("a shown reference parses");
        assert_eq!(again, r, "{shown}");
        Some(shown)
    }

    /// A `WWW-Authenticate` value.
    pub fn challenge(s: &str) -> bool {
        super::auth::parse_challenge(s).is_some()
    }

    /// A token service's answer; its lifetime is computed at a fixed time.
    pub fn token(body: &[u8]) -> Option<u64> {
        let t = super::auth::parse_token(body)?;
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        Some(t.lifetime(now).as_secs())
    }

    /// An auth file looked up for `host`.
    pub fn auth_config(bytes: &[u8], host: &str) -> bool {
        matches!(super::creds::lookup(bytes, host), Ok(Some(_)))
    }

    /// A `Retry-After` value and an RFC 3339 time.
    pub fn times(s: &str) -> bool {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        super::retry::parse_retry_after(s, now).is_some()
            || super::retry::parse_rfc3339(s).is_some()
    }
}
