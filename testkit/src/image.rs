//! Synthetic images written as OCI layouts, OCI archives and docker archives.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::entry::{layer_tar, Entry};
use crate::raw::{typeflag, RawHeader, TarBuilder};

/// Compression of a layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain tar, media type `...layer.v1.tar`.
    #[default]
    None,
    /// gzip, media type `...layer.v1.tar+gzip`.
    Gzip,
    /// zstd, media type `...layer.v1.tar+zstd`.
    Zstd,
}

impl Compression {
    /// The OCI layer media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Compresses `data` deterministically (gzip header mtime 0, zstd level 3).
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(data).expect("gzip into a Vec");
                enc.finish().expect("gzip into a Vec")
            }
            Compression::Zstd => zstd::encode_all(data, 3).expect("zstd into a Vec"),
        }
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The annotation holding a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An image: layers (kept uncompressed, compressed when written) and a
/// linux/amd64 config.
#[derive(Clone, Debug, Default)]
pub struct Image {
    layers: Vec<(Vec<u8>, Compression)>,
    env: Vec<String>,
    cmd: Option<Vec<String>>,
}

/// Digests of what a writer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Digest of the manifest. For a docker archive: of `manifest.json`.
    pub manifest_digest: String,
    /// Digest of the config blob.
    pub config_digest: String,
    /// Digests of the layer blobs as stored (compressed). For a docker
    /// archive: of the uncompressed `layer.tar` files, equal to `diff_ids`.
    pub layer_digests: Vec<String>,
    /// Digests of the uncompressed layer tars (`rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
}

/// Everything one image consists of, serialized.
struct Blobs {
    config: Vec<u8>,
    manifest: Vec<u8>,
    layers: Vec<Vec<u8>>,
    written: Written,
}

impl Image {
    /// An image with no layers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer made of `entries`.
    pub fn layer(self, entries: &[Entry], c: Compression) -> Self {
        self.raw_layer(layer_tar(entries), c)
    }

    /// Appends a layer from uncompressed tar bytes.
    pub fn raw_layer(mut self, tar: Vec<u8>, c: Compression) -> Self {
        self.layers.push((tar, c));
        self
    }

    /// Adds `KEY=VALUE` to the config's `Env`.
    pub fn env(mut self, kv: impl Into<String>) -> Self {
        self.env.push(kv.into());
        self
    }

    /// Sets the config's `Cmd`.
    pub fn cmd<S: Into<String>>(mut self, cmd: impl IntoIterator<Item = S>) -> Self {
        self.cmd = Some(cmd.into_iter().map(Into::into).collect());
        self
    }

    /// The layers: uncompressed tar and the compression used when written.
    pub fn layers(&self) -> &[(Vec<u8>, Compression)] {
        &self.layers
    }

    /// The same image with every layer compressed by `f(index, current)`.
    pub fn map_compression(mut self, mut f: impl FnMut(usize, Compression) -> Compression) -> Self {
        for (i, (_, c)) in self.layers.iter_mut().enumerate() {
            *c = f(i, *c);
        }
        self
    }

    fn config_json(&self, diff_ids: &[String]) -> Vec<u8> {
        let mut config = serde_json::Map::new();
        if !self.env.is_empty() {
            config.insert("Env".into(), json!(self.env));
        }
        if let Some(cmd) = &self.cmd {
            config.insert("Cmd".into(), json!(cmd));
        }
        let history: Vec<Value> = (0..diff_ids.len())
            .map(|i| {
                json!({
                    "created": "1970-01-01T00:00:00Z",
                    "created_by": format!("puzzle-testkit layer {i}"),
                })
            })
            .collect();
        let v = json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": Value::Object(config),
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": history,
        });
        serde_json::to_vec(&v).expect("json")
    }

    fn blobs(&self) -> Blobs {
        let diff_ids: Vec<String> = self.layers.iter().map(|(t, _)| sha256_digest(t)).collect();
        let layers: Vec<Vec<u8>> = self.layers.iter().map(|(t, c)| c.compress(t)).collect();
        let config = self.config_json(&diff_ids);
        let layer_descs: Vec<Value> = layers
            .iter()
            .zip(&self.layers)
            .map(|(blob, (_, c))| {
                json!({
                    "mediaType": c.media_type(),
                    "digest": sha256_digest(blob),
                    "size": blob.len(),
                })
            })
            .collect();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": sha256_digest(&config),
                "size": config.len(),
            },
            "layers": layer_descs,
        }))
        .expect("json");
        let written = Written {
            manifest_digest: sha256_digest(&manifest),
            config_digest: sha256_digest(&config),
            layer_digests: layers.iter().map(|b| sha256_digest(b)).collect(),
            diff_ids,
        };
        Blobs {
            config,
            manifest,
            layers,
            written,
        }
    }

    fn manifest_descriptor(b: &Blobs, tag: &str) -> Value {
        json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": b.written.manifest_digest,
            "size": b.manifest.len(),
            "annotations": { REF_NAME: tag },
            "platform": { "architecture": "amd64", "os": "linux" },
        })
    }

    /// Writes the image into the OCI layout `dir`, creating the layout if
    /// needed. `index.json` gains a manifest tagged `tag`; an entry that had
    /// the same tag loses it.
    pub fn write_oci_layout(&self, dir: &Path, tag: &str) -> Result<Written> {
        let b = self.blobs();
        let blob_dir = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blob_dir).with_context(|| format!("create {}", blob_dir.display()))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            fs::write(&layout, OCI_LAYOUT)
                .with_context(|| format!("write {}", layout.display()))?;
        }
        let mut blobs: Vec<&[u8]> = vec![&b.config, &b.manifest];
        blobs.extend(b.layers.iter().map(Vec::as_slice));
        for blob in blobs {
            let digest = sha256_digest(blob);
            let p = blob_dir.join(&digest["sha256:".len()..]);
            fs::write(&p, blob).with_context(|| format!("write {}", p.display()))?;
        }

        let index_path = dir.join("index.json");
        let mut index = if index_path.exists() {
            let bytes =
                fs::read(&index_path).with_context(|| format!("read {}", index_path.display()))?;
            serde_json::from_slice::<Value>(&bytes)
                .with_context(|| format!("parse {}", index_path.display()))?
        } else {
            json!({ "schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [] })
        };
        let Some(manifests) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
            bail!("{}: no manifests array", index_path.display());
        };
        manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag));
        manifests.push(Self::manifest_descriptor(&b, tag));
        let bytes = serde_json::to_vec(&index).expect("json");
        fs::write(&index_path, bytes).with_context(|| format!("write {}", index_path.display()))?;
        Ok(b.written)
    }

    /// Writes the image as an OCI archive: a tar of a fresh OCI layout
    /// holding only this image, tagged `tag`.
    pub fn write_oci_archive(&self, file: &Path, tag: &str) -> Result<Written> {
        let b = self.blobs();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [Self::manifest_descriptor(&b, tag)],
        });
        let mut tb = TarBuilder::new();
        add_file(&mut tb, b"oci-layout", OCI_LAYOUT.as_bytes());
        add_file(
            &mut tb,
            b"index.json",
            &serde_json::to_vec(&index).expect("json"),
        );
        add_dir(&mut tb, b"blobs/");
        add_dir(&mut tb, b"blobs/sha256/");
        let mut blobs: Vec<&[u8]> = vec![&b.config, &b.manifest];
        blobs.extend(b.layers.iter().map(Vec::as_slice));
        let mut seen = std::collections::BTreeSet::new();
        for blob in blobs {
            let digest = sha256_digest(blob);
            if seen.insert(digest.clone()) {
                let name = format!("blobs/sha256/{}", &digest["sha256:".len()..]);
                add_file(&mut tb, name.as_bytes(), blob);
            }
        }
        fs::write(file, tb.finish()).with_context(|| format!("write {}", file.display()))?;
        Ok(b.written)
    }

    /// Writes the image in the legacy `docker save` format: `manifest.json`,
    /// `repositories`, `<config hex>.json` and per layer `<id>/layer.tar`
    /// (uncompressed, as docker writes it), `<id>/VERSION`, `<id>/json`.
    /// Layer compression is ignored.
    pub fn write_docker_archive(&self, file: &Path, repo_tag: &str) -> Result<Written> {
        let diff_ids: Vec<String> = self.layers.iter().map(|(t, _)| sha256_digest(t)).collect();
        let config = self.config_json(&diff_ids);
        let config_digest = sha256_digest(&config);
        let config_name = format!("{}.json", &config_digest["sha256:".len()..]);

        let mut tb = TarBuilder::new();
        add_file(&mut tb, config_name.as_bytes(), &config);
        let mut parent: Option<String> = None;
        let mut layer_paths = Vec::new();
        for (i, (tar, _)) in self.layers.iter().enumerate() {
            // Docker's v1 ids chain the parent id and the layer's diff_id.
            let seed = format!("{}\n{}", parent.as_deref().unwrap_or(""), diff_ids[i]);
            let id = hex::encode(Sha256::digest(seed.as_bytes()));
            let mut v1 = json!({ "id": id, "created": "1970-01-01T00:00:00Z" });
            if let Some(p) = &parent {
                v1["parent"] = json!(p);
            }
            add_dir(&mut tb, format!("{id}/").as_bytes());
            add_file(&mut tb, format!("{id}/VERSION").as_bytes(), b"1.0");
            add_file(
                &mut tb,
                format!("{id}/json").as_bytes(),
                &serde_json::to_vec(&v1).expect("json"),
            );
            add_file(&mut tb, format!("{id}/layer.tar").as_bytes(), tar);
            layer_paths.push(format!("{id}/layer.tar"));
            parent = Some(id);
        }
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": layer_paths,
        }]))
        .expect("json");
        add_file(&mut tb, b"manifest.json", &manifest);
        if let (Some((repo, tag)), Some(last)) = (split_repo_tag(repo_tag), &parent) {
            let repos = json!({ repo: { tag: last } });
            add_file(
                &mut tb,
                b"repositories",
                &serde_json::to_vec(&repos).expect("json"),
            );
        }
        fs::write(file, tb.finish()).with_context(|| format!("write {}", file.display()))?;
        Ok(Written {
            manifest_digest: sha256_digest(&manifest),
            config_digest,
            layer_digests: diff_ids.clone(),
            diff_ids,
        })
    }
}

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// Splits `repo:tag` at the last `:` after the last `/` (a registry port is
/// not a tag).
fn split_repo_tag(s: &str) -> Option<(&str, &str)> {
    let slash = s.rfind('/').map_or(0, |i| i + 1);
    let colon = slash + s[slash..].rfind(':')?;
    Some((&s[..colon], &s[colon + 1..]))
}

fn add_file(tb: &mut TarBuilder, name: &[u8], data: &[u8]) {
    tb.header(&RawHeader {
        name: name.to_vec(),
        mode: 0o644,
        size: data.len() as u64,
        typeflag: typeflag::REG,
        ..RawHeader::default()
    });
    tb.data(data);
}

fn add_dir(tb: &mut TarBuilder, name: &[u8]) {
    tb.header(&RawHeader {
        name: name.to_vec(),
        mode: 0o755,
        typeflag: typeflag::DIR,
        ..RawHeader::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_tag_split() {
        assert_eq!(split_repo_tag("a/b:1"), Some(("a/b", "1")));
        assert_eq!(split_repo_tag("host:5000/b:1"), Some(("host:5000/b", "1")));
        assert_eq!(split_repo_tag("host:5000/b"), None);
    }
}
