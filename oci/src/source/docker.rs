//! `docker save` archives: the legacy layout (`manifest.json` listing
//! `<id>.json` configs and `<id>/layer.tar` layers) and the newer one that also
//! embeds an OCI layout (`index.json`, `blobs/sha256/...`).

use std::{io::Read, path::Path, sync::Arc};

use oci_spec::image::ImageConfiguration;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

use super::{
    archive::{Member, TarIndex},
    blobs::{io_to_error, read_verified_small, BlobLoc, Store, MAX_JSON},
    digest::{shorten, Sha256Digest},
    layer::Compression,
    layout::{self, Resolved},
    parse_sha256, LayerInfo, OpenedImage, Platform,
};

/// One image in `manifest.json`.
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl Entry {
    fn tags(&self) -> &[String] {
        self.repo_tags.as_deref().unwrap_or_default()
    }
}

/// `alpine` → `alpine:latest`, `docker.io/library/alpine:3` → `alpine:3`.
fn normalize_ref(r: &str) -> String {
    let r = r.strip_prefix("docker.io/").unwrap_or(r);
    let r = r.strip_prefix("library/").unwrap_or(r);
    let name_end = r.rfind('/').map_or(0, |i| i + 1);
    if r.contains('@') || r[name_end..].contains(':') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

fn select<'a>(entries: &'a [Entry], reference: Option<&str>, source: &str) -> Result<&'a Entry> {
    let all_tags = || {
        let tags: Vec<String> = entries
            .iter()
            .flat_map(|e| e.tags().iter().map(|t| t.escape_debug().to_string()))
            .collect();
        if tags.is_empty() {
            "none".to_owned()
        } else {
            tags.join(", ")
        }
    };
    match reference {
        None => match entries {
            [] => Err(Error::NotFound(format!(
                "manifest.json of {source} lists no images"
            ))),
            [only] => Ok(only),
            _ => Err(Error::NotFound(format!(
                "{source} holds {} images; name one as {source}:REF, REF one of: {} (or @N, the N-th image from 0)",
                entries.len(),
                all_tags()
            ))),
        },
        Some(r) => {
            if let Some(n) = r.strip_prefix('@') {
                let i: usize = n.parse().map_err(|_| {
                    Error::Invalid(format!("invalid image index {} in {source}", shorten(r)))
                })?;
                return entries.get(i).ok_or_else(|| {
                    Error::NotFound(format!(
                        "{source} holds {} images, no image @{i}",
                        entries.len()
                    ))
                });
            }
            let want = normalize_ref(r);
            entries
                .iter()
                .find(|e| e.tags().iter().any(|t| t == r || normalize_ref(t) == want))
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "no image {} in {source}; tags available: {}",
                        shorten(r),
                        all_tags()
                    ))
                })
        }
    }
}

/// The digest a member's name promises: `blobs/sha256/<hex>` or `<hex>.json`.
fn digest_from_name(name: &str) -> Option<Sha256Digest> {
    let name = name.trim_start_matches("./");
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    parse_sha256(&format!("sha256:{hex}")).ok()
}

fn member(idx: &TarIndex, name: &str) -> Result<Member> {
    idx.get(name).ok_or_else(|| Error::MemberMissing {
        archive: idx.path().to_owned(),
        name: name.to_owned(),
    })
}

/// Opens a `docker save` archive.
pub(crate) fn open(
    file: &Path,
    reference: Option<&str>,
    platform: &Platform,
    source: &str,
) -> Result<Resolved> {
    let idx = Arc::new(TarIndex::scan(file)?);
    let store = Store::Archive(idx.clone());
    let what = format!("manifest.json of {source}");
    let Some(bytes) = idx.read_small("manifest.json", &what, MAX_JSON)? else {
        if idx.get("index.json").is_some() {
            return layout::open(&store, reference, platform, source);
        }
        return Err(Error::NotFound(format!(
            "{source} is not a docker archive: no manifest.json"
        )));
    };
    let entries: Vec<Entry> = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        what: what.clone(),
        source,
    })?;
    let entry = select(&entries, reference, source)?;

    // Config: verified against the digest its name promises, if any.
    let config_member = member(&idx, &entry.config)?;
    let config_loc = BlobLoc::Member {
        archive: idx.path().to_owned(),
        member: config_member,
    };
    let named = digest_from_name(&entry.config);
    let config_what = format!("config {} in {source}", entry.config);
    let config_bytes = match named {
        Some(d) => read_verified_small(&config_loc, &d, config_member.size, &config_what)?,
        None => idx
            .read_small(&entry.config, &config_what, MAX_JSON)?
            .unwrap_or_default(),
    };
    let config_digest = Sha256Digest::of(&config_bytes);

    // Newer `docker save` also writes an OCI layout: use its manifest when it
    // describes this very image, so the manifest digest is known.
    if named.is_some() && idx.get("index.json").is_some() && idx.get("oci-layout").is_some() {
        // manifest.json is authoritative: if the embedded layout is unusable,
        // fall back to it (config and layers are verified either way).
        if let Ok(Some((digest, manifest))) = layout::find_by_config(&store, &config_digest, source)
        {
            let same_layers = manifest.layers().len() == entry.layers.len()
                && manifest
                    .layers()
                    .iter()
                    .zip(&entry.layers)
                    .all(|(d, name)| {
                        digest_from_name(name).map(|n| n.to_string()).as_deref()
                            == Some(d.digest().as_ref())
                    });
            if same_layers {
                return layout::image_from_manifest(&store, Some(digest), &manifest, source);
            }
        }
    }

    let config: ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(|e| Error::Json {
            what: config_what.clone(),
            source: e,
        })?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(Error::Invalid(format!(
            "manifest.json of {source} lists {} layers but config {} lists {} diff_ids",
            entry.layers.len(),
            entry.config,
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    let mut layer_locs = Vec::with_capacity(diff_ids.len());
    for (index, (name, diff_id)) in entry.layers.iter().zip(diff_ids).enumerate() {
        let diff_id = parse_sha256(diff_id).map_err(|e| {
            Error::Invalid(format!("config {}: diff_id {index}: {e}", entry.config))
        })?;
        let m = member(&idx, name)?;
        let loc = BlobLoc::Member {
            archive: idx.path().to_owned(),
            member: m,
        };
        let compression = peek_compression(&loc)?;
        let digest = match digest_from_name(name).filter(|_| name.contains("blobs/sha256/")) {
            Some(d) => d,
            // An uncompressed layer's blob digest is its diff_id, checked while streaming.
            None if compression == Compression::None => diff_id,
            None => hash_member(&loc)?,
        };
        let media_type = match compression {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        };
        layers.push(LayerInfo {
            index,
            digest: digest.to_string(),
            size: m.size,
            media_type: media_type.to_owned(),
            diff_id: diff_id.to_string(),
        });
        layer_locs.push(loc);
    }
    Ok(Resolved {
        image: OpenedImage {
            source: source.to_owned(),
            manifest_digest: None,
            config_digest: config_digest.to_string(),
            config_bytes,
            config,
            layers,
        },
        layer_locs,
    })
}

fn peek_compression(loc: &BlobLoc) -> Result<Compression> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    let mut r = loc.open()?;
    while n < magic.len() {
        match r.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_to_error(e, loc.path())),
        }
    }
    Ok(Compression::detect(&magic[..n]))
}

/// One pass over a member to learn its digest.
fn hash_member(loc: &BlobLoc) -> Result<Sha256Digest> {
    let mut r = loc.open()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(loc.path(), e)),
        }
    }
    Ok(Sha256Digest::from_bytes(hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_docker_refs() {
        assert_eq!(normalize_ref("alpine"), "alpine:latest");
        assert_eq!(
            normalize_ref("docker.io/library/alpine:3.19"),
            "alpine:3.19"
        );
        assert_eq!(
            normalize_ref("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(
            normalize_ref("localhost:5000/app:2"),
            "localhost:5000/app:2"
        );
    }

    #[test]
    fn digests_from_member_names() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(digest_from_name(&format!("{hex}.json")).is_some());
        assert!(digest_from_name(&format!("./blobs/sha256/{hex}")).is_some());
        assert!(digest_from_name("config.json").is_none());
        assert!(digest_from_name("blobs/sha256/../../x").is_none());
    }
}
