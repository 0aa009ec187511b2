//! OCI image layouts (directory or archive): `index.json` → (nested indexes,
//! chosen by platform) → manifest → config and layers.

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, OciLayout};
use serde::Deserialize;

use crate::error::{Error, Result};

use super::{
    blobs::{BlobLoc, Store},
    digest::{shorten, Sha256Digest},
    parse_sha256, LayerInfo, OpenedImage, Platform,
};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Docker's own `docker save` writes the full image name here.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Indexes may nest; deeper than this is refused (a blob cannot contain its
/// own digest, but a long chain is still pointless work).
pub(crate) const MAX_DEPTH: usize = 8;
/// Descriptors visited when searching a layout for a config digest.
const MAX_VISITS: usize = 256;

const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// An image resolved from a source: what the caller sees, plus where each
/// layer's bytes are.
pub(crate) struct Resolved {
    pub image: OpenedImage,
    pub layer_locs: Vec<BlobLoc>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Index,
    Manifest,
}

/// Just enough of a JSON document to tell an index from a manifest when the
/// descriptor's media type does not say.
#[derive(Deserialize)]
struct Sniff {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
}

pub(crate) fn kind_of(media_type: &str, bytes: &[u8], what: &str) -> Result<Kind> {
    let classify = |t: &str| {
        if INDEX_TYPES.contains(&t) {
            Some(Kind::Index)
        } else if MANIFEST_TYPES.contains(&t) {
            Some(Kind::Manifest)
        } else {
            None
        }
    };
    if let Some(k) = classify(media_type) {
        return Ok(k);
    }
    let sniff: Sniff = serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })?;
    if let Some(k) = sniff.media_type.as_deref().and_then(classify) {
        return Ok(k);
    }
    match (sniff.manifests.is_some(), sniff.layers.is_some()) {
        (true, false) => Ok(Kind::Index),
        (false, true) => Ok(Kind::Manifest),
        _ => Err(Error::Unsupported(format!(
            "{what} has media type {} and is neither an image index nor an image manifest",
            shorten(media_type)
        ))),
    }
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations().as_ref()?.get(key).map(String::as_str)
}

fn platform_label(d: &Descriptor) -> String {
    match d.platform() {
        Some(p) => {
            let mut s = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                s.push('/');
                s.push_str(v);
            }
            s
        }
        None => "(no platform)".to_owned(),
    }
}

fn descriptor_digest(d: &Descriptor) -> Result<Sha256Digest> {
    parse_sha256(d.digest().as_ref())
}

/// Picks the descriptor for `platform` among an index's manifests.
pub(crate) fn select_platform<'a>(
    manifests: &[&'a Descriptor],
    platform: &Platform,
    what: &str,
) -> Result<&'a Descriptor> {
    let found = manifests.iter().find(|d| {
        d.platform().as_ref().is_some_and(|p| {
            platform.matches(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            )
        })
    });
    if let Some(d) = found {
        return Ok(d);
    }
    // A one-entry index without platform information: nothing to choose (the
    // image's config is checked against the platform later).
    if let [only] = manifests {
        if only.platform().is_none() {
            return Ok(only);
        }
    }
    let mut available: Vec<String> = Vec::new();
    for label in manifests.iter().map(|d| platform_label(d)) {
        if !available.contains(&label) {
            available.push(label);
        }
    }
    Err(Error::NotFound(format!(
        "no {platform} image in {what}; it has {}: pick one with --platform",
        if available.is_empty() {
            "no images".to_owned()
        } else {
            available.join(", ")
        }
    )))
}

/// What names an entry of `index.json`: its tag, else its digest.
fn entry_label(d: &Descriptor) -> String {
    // Tags are untrusted: escaped, so a message stays one line.
    annotation(d, REF_NAME).map_or_else(|| d.digest().to_string(), |t| t.escape_debug().to_string())
}

/// Picks the entry of `index.json` named by `reference`, or the only image.
///
/// Never guesses: without a reference the index must hold one image, either
/// one manifest or the manifests of one multi-platform image (all with a
/// platform and the same tag, or none).
fn select_top<'a>(
    index: &'a ImageIndex,
    reference: Option<&str>,
    platform: &Platform,
    source: &str,
) -> Result<&'a Descriptor> {
    let manifests = index.manifests();
    let labels = || {
        let mut v: Vec<String> = Vec::new();
        for l in manifests.iter().map(entry_label) {
            if !v.contains(&l) {
                v.push(l);
            }
        }
        v
    };
    let candidates: Vec<&Descriptor> = match reference {
        Some(r) => {
            let by_digest = r.starts_with("sha256:");
            manifests
                .iter()
                .filter(|d| {
                    if by_digest {
                        d.digest().as_ref() == r
                    } else {
                        annotation(d, REF_NAME) == Some(r)
                            || annotation(d, CONTAINERD_NAME) == Some(r)
                    }
                })
                .collect()
        }
        None => manifests.iter().collect(),
    };
    let mut distinct: Vec<&Descriptor> = Vec::new();
    for d in &candidates {
        if !distinct.iter().any(|e| e.digest() == d.digest()) {
            distinct.push(d);
        }
    }
    match (reference, distinct.as_slice()) {
        (Some(r), []) => Err(Error::NotFound(format!(
            "no image {} in {source}; tags there: {}",
            shorten(r),
            if manifests.is_empty() {
                "none".to_owned()
            } else {
                labels().join(", ")
            }
        ))),
        (None, []) => Err(Error::NotFound(format!(
            "index.json of {source} lists no images"
        ))),
        (_, [only]) => Ok(only),
        (_, several) => {
            let names: Vec<Option<&str>> =
                several.iter().map(|d| annotation(d, REF_NAME)).collect();
            let one_name = names.iter().all(|n| *n == names[0]);
            if one_name && several.iter().all(|d| d.platform().is_some()) {
                // One multi-platform image whose manifests some tools put
                // straight into index.json.
                let what = format!("index.json of {source}");
                return select_platform(several, platform, &what);
            }
            if let Some(r) = reference {
                let digests: Vec<String> = several.iter().map(|d| d.digest().to_string()).collect();
                return Err(Error::NotFound(format!(
                    "{source} has {} images tagged {}; name one as {source}:DIGEST, DIGEST one of: {}",
                    several.len(),
                    shorten(r),
                    digests.join(", ")
                )));
            }
            let labels = labels();
            Err(Error::NotFound(format!(
                "{source} holds {} images; name one as {source}:TAG, TAG one of: {}",
                labels.len(),
                labels.join(", ")
            )))
        }
    }
}

/// Follows `desc` through nested indexes down to an image manifest.
fn resolve_manifest(
    store: &Store,
    desc: &Descriptor,
    platform: &Platform,
    source: &str,
) -> Result<(Sha256Digest, ImageManifest)> {
    let mut desc = desc.clone();
    for _ in 0..MAX_DEPTH {
        let digest = descriptor_digest(&desc)?;
        let media_type = desc.media_type().to_string();
        let what = format!("manifest {digest} in {source}");
        let bytes = store.read_blob(&digest, desc.size(), &what)?;
        match kind_of(&media_type, &bytes, &what)? {
            Kind::Manifest => return Ok((digest, parse_json(&bytes, &what)?)),
            Kind::Index => {
                let what = format!("image index {digest} in {source}");
                let index: ImageIndex = parse_json(&bytes, &what)?;
                let entries: Vec<&Descriptor> = index.manifests().iter().collect();
                desc = select_platform(&entries, platform, &what)?.clone();
            }
        }
    }
    Err(Error::Invalid(format!(
        "{source}: image indexes nested deeper than {MAX_DEPTH}"
    )))
}

/// Reads `oci-layout` and `index.json`.
fn read_index(store: &Store, source: &str) -> Result<ImageIndex> {
    let what = format!("oci-layout of {source}");
    let layout = store.read_file("oci-layout", &what)?.ok_or_else(|| {
        Error::NotFound(format!(
            "{source} is not an OCI image layout (it has no oci-layout file); \
             give a layout written by `skopeo copy` or `umoci`, or the archive of one"
        ))
    })?;
    let layout: OciLayout = parse_json(&layout, &what)?;
    if !layout.image_layout_version().starts_with("1.") {
        return Err(Error::Unsupported(format!(
            "{source}: image layout version {}",
            shorten(layout.image_layout_version())
        )));
    }
    let what = format!("index.json of {source}");
    let index = store
        .read_file("index.json", &what)?
        .ok_or_else(|| Error::NotFound(format!("{source} has no index.json")))?;
    parse_json(&index, &what)
}

/// Opens the image `reference` (or the only one) of a layout for `platform`.
pub(crate) fn open(
    store: &Store,
    reference: Option<&str>,
    platform: &Platform,
    source: &str,
) -> Result<Resolved> {
    let index = read_index(store, source)?;
    let top = select_top(&index, reference, platform, source)?;
    let (digest, manifest) = resolve_manifest(store, top, platform, source)?;
    image_from_manifest(store, Some(digest), &manifest, source)
}

/// Finds, among the images reachable from `index.json`, the manifest whose
/// config is `config`. Descriptors whose blobs are absent are skipped (a
/// `docker save` of one platform still lists the others).
pub(crate) fn find_by_config(
    store: &Store,
    config: &Sha256Digest,
    source: &str,
) -> Result<Option<(Sha256Digest, ImageManifest)>> {
    let index = read_index(store, source)?;
    let mut stack: Vec<(Descriptor, usize)> = index
        .manifests()
        .iter()
        .rev()
        .map(|d| (d.clone(), 0))
        .collect();
    let mut visits = 0;
    while let Some((desc, depth)) = stack.pop() {
        visits += 1;
        if visits > MAX_VISITS || depth >= MAX_DEPTH {
            break;
        }
        let Ok(digest) = descriptor_digest(&desc) else {
            continue;
        };
        if !store.has_blob(&digest) {
            continue;
        }
        let what = format!("manifest {digest} in {source}");
        let bytes = store.read_blob(&digest, desc.size(), &what)?;
        match kind_of(desc.media_type().as_ref(), &bytes, &what)? {
            Kind::Manifest => {
                let manifest: ImageManifest = parse_json(&bytes, &what)?;
                if manifest.config().digest().as_ref() == config.to_string() {
                    return Ok(Some((digest, manifest)));
                }
            }
            Kind::Index => {
                let index: ImageIndex = parse_json(&bytes, &what)?;
                stack.extend(
                    index
                        .manifests()
                        .iter()
                        .rev()
                        .map(|d| (d.clone(), depth + 1)),
                );
            }
        }
    }
    Ok(None)
}

/// Reads and verifies the config, and locates every layer.
pub(crate) fn image_from_manifest(
    store: &Store,
    manifest_digest: Option<Sha256Digest>,
    manifest: &ImageManifest,
    source: &str,
) -> Result<Resolved> {
    let config_desc = manifest.config();
    let config_digest = descriptor_digest(config_desc)?;
    let what = format!("config {config_digest} in {source}");
    let config_bytes = store.read_blob(&config_digest, config_desc.size(), &what)?;
    let config: ImageConfiguration = parse_json(&config_bytes, &what)?;
    let diff_ids = config.rootfs().diff_ids();
    let manifest_name = match &manifest_digest {
        Some(d) => format!("manifest {d}"),
        None => "manifest".to_owned(),
    };
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Invalid(format!(
            "{manifest_name} in {source} has {} layers but config {config_digest} lists {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    let mut layer_locs = Vec::with_capacity(diff_ids.len());
    for (index, (desc, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let digest = descriptor_digest(desc)?;
        let diff_id = parse_sha256(diff_id)
            .map_err(|e| Error::Invalid(format!("config {config_digest}: diff_id {index}: {e}")))?;
        let what = format!("layer {} ({digest})", index + 1);
        layer_locs.push(store.blob(&digest, desc.size(), &what)?);
        layers.push(LayerInfo {
            index,
            digest: digest.to_string(),
            size: desc.size(),
            media_type: desc.media_type().to_string(),
            diff_id: diff_id.to_string(),
        });
    }
    Ok(Resolved {
        image: OpenedImage {
            source: source.to_owned(),
            manifest_digest: manifest_digest.map(|d| d.to_string()),
            config_digest: config_digest.to_string(),
            config_bytes,
            config,
            layers,
        },
        layer_locs,
    })
}
