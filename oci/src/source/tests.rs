//! End-to-end tests of `open` / `open_layer` over fixture images built in temp dirs.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use super::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn sha(data: &[u8]) -> String {
    Sha256Digest::of(data).to_string()
}

fn hex_of(data: &[u8]) -> String {
    Sha256Digest::of(data).hex()
}

/// A test layer: its tar and the blob as stored.
struct Layer {
    tar: Vec<u8>,
    blob: Vec<u8>,
}

fn layer(files: &[(&str, &[u8])], compress: fn(&[u8]) -> Vec<u8>) -> Layer {
    let tar = tar_of(files);
    let blob = compress(&tar);
    Layer { tar, blob }
}

fn plain(data: &[u8]) -> Vec<u8> {
    data.to_vec()
}

fn config_json(arch: &str, variant: Option<&str>, layers: &[&Layer]) -> Vec<u8> {
    let mut c = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha(&l.tar)).collect::<Vec<_>>()},
    });
    if let Some(v) = variant {
        c["variant"] = json!(v);
    }
    serde_json::to_vec(&c).unwrap()
}

/// Writes an OCI image layout.
struct Oci {
    root: PathBuf,
}

impl Oci {
    fn new(root: &Path) -> Oci {
        std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Oci {
            root: root.to_owned(),
        }
    }

    fn blob_path(&self, data: &[u8]) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(data))
    }

    fn put(&self, media_type: &str, data: &[u8]) -> Value {
        std::fs::write(self.blob_path(data), data).unwrap();
        json!({"mediaType": media_type, "digest": sha(data), "size": data.len()})
    }

    /// Writes config, layers and manifest; returns the manifest descriptor.
    fn image(&self, arch: &str, variant: Option<&str>, layers: &[&Layer]) -> Value {
        let config = self.put(OCI_CONFIG, &config_json(arch, variant, layers));
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|l| self.put(LAYER_GZIP, &l.blob))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layer_descs,
        });
        self.put(OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap())
    }

    fn index_blob(&self, manifests: Vec<Value>) -> Value {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        self.put(OCI_INDEX, &serde_json::to_vec(&index).unwrap())
    }

    fn write_index(&self, manifests: Vec<Value>) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        std::fs::write(
            self.root.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

fn tagged(mut desc: Value, tag: &str) -> Value {
    desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    desc
}

fn with_platform(mut desc: Value, arch: &str, variant: Option<&str>) -> Value {
    desc["platform"] = json!({"os": "linux", "architecture": arch});
    if let Some(v) = variant {
        desc["platform"]["variant"] = json!(v);
    }
    desc
}

fn oci_src(dir: &Path, reference: Option<&str>) -> SourceRef {
    SourceRef::OciDir {
        dir: dir.to_owned(),
        reference: reference.map(Into::into),
    }
}

fn open_default(src: &SourceRef) -> Result<Box<dyn ImageSource>> {
    open(src, &Platform::default())
}

/// Reads every layer fully through the tar crate, then `finish`; returns the tars.
fn read_layers(src: &dyn ImageSource) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for l in &src.image().layers {
        let mut r = src.open_layer(l)?;
        let mut tar = Vec::new();
        r.read_to_end(&mut tar)
            .map_err(|e| Error::from_io(e).unwrap())?;
        let stats = r.finish()?;
        assert_eq!(stats.compressed_bytes, l.size);
        assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
        out.push(tar);
    }
    Ok(out)
}

/// Opens the first layer and reads it to the end, returning the error.
fn first_layer_error(src: &dyn ImageSource) -> Error {
    let l = &src.image().layers[0];
    let mut r = match src.open_layer(l) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut sink = Vec::new();
    let read_err = r.read_to_end(&mut sink).expect_err("reading should fail");
    let from_read = Error::from_io(read_err).expect("error names the layer");
    let from_finish = r.finish().expect_err("finish should fail too");
    assert_eq!(from_read.to_string(), from_finish.to_string());
    from_finish
}

fn two_layers() -> (Layer, Layer) {
    (
        layer(
            &[("etc/os-release", b"ID=test\n"), ("bin/sh", &[0x7f; 5000])],
            gzip,
        ),
        layer(&[("app/main", b"print('hi')\n")], gzip),
    )
}

#[test]
fn oci_layout_with_one_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let oci = Oci::new(dir.path());
    let m = oci.image("amd64", None, &[&l1, &l2]);
    let manifest_digest = m["digest"].as_str().unwrap().to_owned();
    oci.write_index(vec![tagged(m, "v1")]);

    for reference in [Some("v1"), None, Some(manifest_digest.as_str())] {
        let src = open_default(&oci_src(dir.path(), reference)).unwrap();
        let img = src.image();
        assert_eq!(
            img.manifest_digest.as_deref(),
            Some(manifest_digest.as_str())
        );
        assert_eq!(img.layers.len(), 2);
        assert_eq!(img.layers[1].diff_id, sha(&l2.tar));
        assert_eq!(img.layers[1].digest, sha(&l2.blob));
        assert_eq!(img.layers[1].media_type, LAYER_GZIP);
        assert_eq!(img.config_digest, sha(&img.config_bytes));
        assert_eq!(img.config.rootfs().diff_ids().len(), 2);
        assert_eq!(
            read_layers(src.as_ref()).unwrap(),
            [l1.tar.clone(), l2.tar.clone()]
        );
    }
    let err = open_default(&oci_src(dir.path(), Some("v2")))
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("v1")),
        "{err}"
    );
}

#[test]
fn oci_layout_with_two_tags() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let oci = Oci::new(dir.path());
    let a = oci.image("amd64", None, &[&l1]);
    let b = oci.image("amd64", None, &[&l1, &l2]);
    oci.write_index(vec![tagged(a, "one"), tagged(b, "two")]);

    let one = open_default(&oci_src(dir.path(), Some("one"))).unwrap();
    assert_eq!(one.image().layers.len(), 1);
    let two = open_default(&oci_src(dir.path(), Some("two"))).unwrap();
    assert_eq!(two.image().layers.len(), 2);
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    match &err {
        Error::NotFound(m) => assert!(m.contains("one, two") && m.contains(":TAG"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn oci_layout_without_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, _) = two_layers();
    let oci = Oci::new(dir.path());
    let m = oci.image("amd64", None, &[&l1]);
    let digest = m["digest"].as_str().unwrap().to_owned();
    oci.write_index(vec![m]);
    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    assert_eq!(read_layers(src.as_ref()).unwrap(), vec![l1.tar.clone()]);
    // An untagged entry is named by its digest, which selects it.
    let err = open_default(&oci_src(dir.path(), Some("latest")))
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains(&digest)),
        "{err}"
    );
    open_default(&oci_src(dir.path(), Some(&digest))).unwrap();
}

#[test]
fn multi_arch_index_selects_platform() {
    let dir = tempfile::tempdir().unwrap();
    let amd = layer(&[("arch", b"amd64")], gzip);
    let arm = layer(&[("arch", b"arm64")], zstd);
    let oci = Oci::new(dir.path());
    let m_amd = oci.image("amd64", None, &[&amd]);
    let m_arm = oci.image("arm64", Some("v8"), &[&arm]);
    let attestation = json!({"mediaType": OCI_MANIFEST, "digest": sha(b"x"), "size": 1,
        "platform": {"os": "unknown", "architecture": "unknown"}});
    let idx = oci.index_blob(vec![
        with_platform(m_amd.clone(), "amd64", None),
        with_platform(m_arm.clone(), "arm64", Some("v8")),
        attestation,
    ]);
    // Nest it once more, as some tools do.
    let outer = oci.index_blob(vec![idx]);
    oci.write_index(vec![tagged(outer, "latest")]);
    let src = oci_src(dir.path(), Some("latest"));

    let img = open(&src, &Platform::default()).unwrap();
    assert_eq!(
        img.image().manifest_digest.as_ref(),
        m_amd["digest"].as_str().map(str::to_owned).as_ref()
    );
    assert_eq!(read_layers(img.as_ref()).unwrap(), vec![amd.tar.clone()]);

    for p in ["linux/arm64", "linux/arm64/v8"] {
        let img = open(&src, &p.parse().unwrap()).unwrap();
        assert_eq!(img.image().layers[0].diff_id, sha(&arm.tar));
        let mut r = img.open_layer(&img.image().layers[0]).unwrap();
        assert_eq!(r.compression(), Compression::Zstd);
        let mut tar = Vec::new();
        r.read_to_end(&mut tar).unwrap();
        assert_eq!(tar, arm.tar);
        r.finish().unwrap();
    }

    let err = open(&src, &"linux/s390x".parse().unwrap()).err().unwrap();
    match &err {
        Error::NotFound(m) => {
            assert!(m.contains("linux/s390x"), "{m}");
            assert!(
                m.contains("linux/amd64, linux/arm64/v8, unknown/unknown"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn platform_manifests_listed_directly_in_index_json() {
    let dir = tempfile::tempdir().unwrap();
    let amd = layer(&[("arch", b"amd64")], gzip);
    let arm = layer(&[("arch", b"arm64")], gzip);
    let oci = Oci::new(dir.path());
    let a = with_platform(oci.image("amd64", None, &[&amd]), "amd64", None);
    let b = with_platform(oci.image("arm64", None, &[&arm]), "arm64", None);
    oci.write_index(vec![a, b]);
    let img = open(&oci_src(dir.path(), None), &"linux/arm64".parse().unwrap()).unwrap();
    assert_eq!(img.image().layers[0].diff_id, sha(&arm.tar));
}

#[test]
fn selection_never_guesses() {
    let dir = tempfile::tempdir().unwrap();
    let amd = layer(&[("arch", b"amd64")], gzip);
    let arm = layer(&[("arch", b"arm64")], gzip);
    let oci = Oci::new(dir.path());
    let m_amd = oci.image("amd64", None, &[&amd]);
    let m_arm = oci.image("arm64", Some("v8"), &[&arm]);
    let arm64: Platform = "linux/arm64".parse().unwrap();

    // Two tags, each with a platform: naming no tag is an error listing
    // them, whatever the platform.
    oci.write_index(vec![
        tagged(with_platform(m_amd.clone(), "amd64", None), "a"),
        tagged(with_platform(m_arm.clone(), "arm64", Some("v8")), "b"),
    ]);
    for p in [Platform::default(), arm64.clone()] {
        match open(&oci_src(dir.path(), None), &p).err().unwrap() {
            Error::NotFound(m) => {
                assert!(m.contains("holds 2 images") && m.contains("a, b"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    // One tag on the manifests of several platforms: the platform picks.
    oci.write_index(vec![
        tagged(with_platform(m_amd.clone(), "amd64", None), "v1"),
        tagged(with_platform(m_arm.clone(), "arm64", Some("v8")), "v1"),
    ]);
    let img = open(&oci_src(dir.path(), Some("v1")), &arm64).unwrap();
    assert_eq!(img.image().layers[0].diff_id, sha(&arm.tar));
    let img = open_default(&oci_src(dir.path(), None)).unwrap();
    assert_eq!(img.image().layers[0].diff_id, sha(&amd.tar));

    // One tag on two images without platforms: name one by digest.
    oci.write_index(vec![
        tagged(m_amd.clone(), "v1"),
        tagged(m_arm.clone(), "v1"),
    ]);
    match open_default(&oci_src(dir.path(), Some("v1")))
        .err()
        .unwrap()
    {
        Error::NotFound(m) => {
            assert!(m.contains("2 images tagged \"v1\""), "{m}");
            assert!(m.contains(m_arm["digest"].as_str().unwrap()), "{m}");
        }
        other => panic!("{other:?}"),
    }

    // A single-platform image for another platform than asked for.
    oci.write_index(vec![tagged(m_arm.clone(), "arm")]);
    match open_default(&oci_src(dir.path(), Some("arm")))
        .err()
        .unwrap()
    {
        Error::NotFound(m) => assert!(
            m.contains("no linux/amd64 image") && m.contains("--platform linux/arm64/v8"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    let img = open(&oci_src(dir.path(), Some("arm")), &arm64).unwrap();
    assert_eq!(img.image().layers[0].diff_id, sha(&arm.tar));
}

#[test]
fn deeply_nested_indexes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let l = layer(&[("a", b"a")], gzip);
    let oci = Oci::new(dir.path());
    let mut desc = oci.image("amd64", None, &[&l]);
    for _ in 0..12 {
        desc = oci.index_blob(vec![with_platform(desc, "amd64", None)]);
    }
    oci.write_index(vec![desc]);
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("nested")),
        "{err}"
    );
}

#[test]
fn gzip_zstd_and_plain_layers_read_back_identically() {
    let files: &[(&str, &[u8])] = &[("a/b", b"same content"), ("c", &[42u8; 70_000])];
    let dir = tempfile::tempdir().unwrap();
    let oci = Oci::new(dir.path());
    let layers = [layer(files, plain), layer(files, gzip), layer(files, zstd)];
    let m = oci.image("amd64", None, &[&layers[0], &layers[1], &layers[2]]);
    oci.write_index(vec![m]);
    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    let kinds: Vec<Compression> = src
        .image()
        .layers
        .iter()
        .map(|l| src.open_layer(l).unwrap().compression())
        .collect();
    assert_eq!(
        kinds,
        [Compression::None, Compression::Gzip, Compression::Zstd]
    );
    let tars = read_layers(src.as_ref()).unwrap();
    assert!(tars.iter().all(|t| *t == layers[0].tar));

    // The usual pattern: the tar parser stops early; finish drains and checks.
    for l in &src.image().layers {
        let mut r = src.open_layer(l).unwrap();
        let mut n = 0;
        for e in tar::Archive::new(&mut r).entries().unwrap() {
            e.unwrap();
            n += 1;
        }
        assert_eq!(n, 2);
        assert!(r.compressed_read() > 0);
        let stats = r.finish().unwrap();
        assert_eq!(stats.compressed_bytes, l.size);
    }
}

#[test]
fn corrupt_layer_blob_is_a_digest_mismatch_naming_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, _) = two_layers();
    let oci = Oci::new(dir.path());
    let m = oci.image("amd64", None, &[&l1]);
    oci.write_index(vec![m]);
    // Same size, different bytes (flip a bit in the gzip trailer's CRC).
    let path = oci.blob_path(&l1.blob);
    let mut bytes = l1.blob.clone();
    let n = bytes.len();
    bytes[n - 6] ^= 1;
    std::fs::write(&path, &bytes).unwrap();

    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    let err = first_layer_error(src.as_ref());
    // Either the gzip CRC or our digest check fires first; both name the layer.
    let msg = err.to_string();
    assert!(msg.contains(&sha(&l1.blob)), "{msg}");

    // A plain layer has no CRC: it must be our digest check.
    let dir = tempfile::tempdir().unwrap();
    let oci = Oci::new(dir.path());
    let l = layer(&[("x", b"hello")], plain);
    let m = oci.image("amd64", None, &[&l]);
    oci.write_index(vec![m]);
    let mut bytes = l.blob.clone();
    bytes[600] ^= 1;
    std::fs::write(oci.blob_path(&l.blob), &bytes).unwrap();
    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    match first_layer_error(src.as_ref()) {
        Error::DigestMismatch {
            what,
            expected,
            actual,
        } => {
            assert!(what.contains(&sha(&l.blob)), "{what}");
            assert_eq!(expected, sha(&l.blob));
            assert_eq!(actual, sha(&bytes));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupt_config_or_manifest_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, _) = two_layers();
    let oci = Oci::new(dir.path());
    let config = config_json("amd64", None, &[&l1]);
    let m = oci.image("amd64", None, &[&l1]);
    oci.write_index(vec![m.clone()]);
    let mut bad = config.clone();
    bad[2] ^= 0x20;
    std::fs::write(oci.blob_path(&config), &bad).unwrap();
    match open_default(&oci_src(dir.path(), None)).err().unwrap() {
        Error::DigestMismatch { what, .. } => {
            assert!(
                what.starts_with(&format!("config {}", sha(&config))),
                "{what}"
            )
        }
        other => panic!("{other:?}"),
    }

    let manifest_path = dir
        .path()
        .join("blobs/sha256")
        .join(&m["digest"].as_str().unwrap()[7..]);
    let mut bytes = std::fs::read(&manifest_path).unwrap();
    bytes.push(b' ');
    std::fs::write(&manifest_path, &bytes).unwrap();
    match open_default(&oci_src(dir.path(), None)).err().unwrap() {
        Error::SizeMismatch { what, .. } => assert!(what.starts_with("manifest sha256:"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncated_gzip_layer_is_an_error() {
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let full = layer(&[("big", &big)], gzip);
    let cut = Layer {
        tar: full.tar.clone(),
        blob: full.blob[..full.blob.len() / 2].to_vec(),
    };

    // The descriptor matches the truncated blob: only the decoder and the
    // diff_id can tell.
    let dir = tempfile::tempdir().unwrap();
    let oci = Oci::new(dir.path());
    let m = oci.image("amd64", None, &[&cut]);
    oci.write_index(vec![m]);
    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    let err = first_layer_error(src.as_ref());
    assert!(
        matches!(err, Error::Decompress { .. } | Error::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&sha(&cut.blob)), "{err}");

    // The descriptor describes the full blob but the file was cut short.
    let dir = tempfile::tempdir().unwrap();
    let oci = Oci::new(dir.path());
    let m = oci.image("amd64", None, &[&full]);
    oci.write_index(vec![m]);
    std::fs::write(oci.blob_path(&full.blob), &cut.blob).unwrap();
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err:?}");
}

#[test]
fn missing_blob_is_blob_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let oci = Oci::new(dir.path());
    let m = oci.image("amd64", None, &[&l1, &l2]);
    oci.write_index(vec![m]);
    std::fs::remove_file(oci.blob_path(&l2.blob)).unwrap();
    match open_default(&oci_src(dir.path(), None)).err().unwrap() {
        Error::BlobMissing { digest, .. } => assert_eq!(digest, sha(&l2.blob)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_index_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    Oci::new(dir.path());
    std::fs::write(
        dir.path().join("index.json"),
        b"{\"schemaVersion\": 2, \"manifests\": [",
    )
    .unwrap();
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(
        matches!(&err, Error::Json { what, .. } if what.starts_with("index.json of oci:")),
        "{err}"
    );
    assert!(err.to_string().contains("index.json"));

    // A digest that tries to walk out of blobs/: refused by the JSON types or by us.
    let traversal = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:../../../../etc/passwd", "size": 10}]});
    std::fs::write(dir.path().join("index.json"), traversal.to_string()).unwrap();
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(
        matches!(err, Error::Json { .. } | Error::Invalid(_)),
        "{err:?}"
    );

    std::fs::remove_file(dir.path().join("oci-layout")).unwrap();
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("oci-layout")),
        "{err}"
    );
}

#[test]
fn oversized_json_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let oci = Oci::new(dir.path());
    let mut huge = b"{\"schemaVersion\":2,\"manifests\":[]".to_vec();
    huge.resize(5 << 20, b' ');
    huge.push(b'}');
    std::fs::write(dir.path().join("index.json"), &huge).unwrap();
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(
        matches!(&err, Error::TooLarge { what, .. } if what.starts_with("index.json")),
        "{err}"
    );

    // A manifest whose descriptor claims a huge config is refused without reading it.
    let l = layer(&[("a", b"a")], gzip);
    let m = oci.image("amd64", None, &[&l]);
    let manifest_path = dir
        .path()
        .join("blobs/sha256")
        .join(&m["digest"].as_str().unwrap()[7..]);
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(manifest_path).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("blobs/sha256").join(&config_digest[7..]))
        .unwrap()
        .set_len(100 << 20)
        .unwrap();
    manifest["config"]["size"] = json!(100 << 20);
    let m = oci.put(OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    oci.write_index(vec![m]);
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(
        matches!(&err, Error::TooLarge { what, .. } if what.starts_with("config")),
        "{err}"
    );
}

#[test]
fn layer_count_must_match_diff_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let oci = Oci::new(dir.path());
    let config = oci.put(OCI_CONFIG, &config_json("amd64", None, &[&l1]));
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
        "layers": [oci.put(LAYER_GZIP, &l1.blob), oci.put(LAYER_GZIP, &l2.blob)]});
    let m = oci.put(OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    oci.write_index(vec![m]);
    let err = open_default(&oci_src(dir.path(), None)).err().unwrap();
    assert!(
        matches!(&err, Error::Invalid(m) if m.contains("2 layers") && m.contains("1 diff_ids")),
        "{err}"
    );
}

#[test]
fn wrong_diff_id_fails_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let l = layer(&[("a", b"a")], gzip);
    let liar = Layer {
        tar: tar_of(&[("b", b"b")]),
        blob: l.blob.clone(),
    };
    let oci = Oci::new(dir.path());
    oci.write_index(vec![oci.image("amd64", None, &[&liar])]);
    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    match first_layer_error(src.as_ref()) {
        Error::DigestMismatch { what, expected, .. } => {
            assert!(
                what.starts_with("uncompressed layer blob sha256:"),
                "{what}"
            );
            assert_eq!(expected, sha(&liar.tar));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn layer_info_from_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let l = layer(&[("a", b"a")], gzip);
    let oci = Oci::new(dir.path());
    oci.write_index(vec![oci.image("amd64", None, &[&l])]);
    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    let mut info = src.image().layers[0].clone();
    info.digest = sha(b"other");
    assert!(matches!(src.open_layer(&info), Err(Error::Invalid(_))));
    info.index = 7;
    assert!(matches!(src.open_layer(&info), Err(Error::NotFound(_))));
}

/// Tars the files under `root` into `out`, names prefixed with "./".
fn tar_dir(root: &Path, out: &Path) {
    fn walk(b: &mut tar::Builder<std::fs::File>, root: &Path, dir: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(b, root, &p);
            } else {
                let name = Path::new(".").join(p.strip_prefix(root).unwrap());
                b.append_path_with_name(&p, name).unwrap();
            }
        }
    }
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    walk(&mut b, root, root);
    b.finish().unwrap();
}

#[test]
fn oci_archive_reads_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let (l1, l2) = two_layers();
    let oci = Oci::new(&layout);
    let m = oci.image("amd64", None, &[&l1, &l2]);
    oci.write_index(vec![tagged(m.clone(), "v1")]);
    let file = dir.path().join("img.tar");
    tar_dir(&layout, &file);

    let src: SourceRef = format!("oci-archive:{}:v1", file.display())
        .parse()
        .unwrap();
    let img = open_default(&src).unwrap();
    assert_eq!(img.image().manifest_digest.as_deref(), m["digest"].as_str());
    assert_eq!(img.image().source, src.to_string());
    assert_eq!(
        read_layers(img.as_ref()).unwrap(),
        [l1.tar.clone(), l2.tar.clone()]
    );

    // Missing blob inside an archive.
    std::fs::remove_file(oci.blob_path(&l1.blob)).unwrap();
    tar_dir(&layout, &file);
    assert!(matches!(open_default(&src), Err(Error::BlobMissing { .. })));
}

/// Builds a legacy `docker save` archive: two images sharing their base
/// layer, the second copy being a symlink as docker writes it.
fn docker_legacy(path: &Path, base: &Layer, top: &Layer) -> (Vec<u8>, Vec<u8>) {
    let cfg1 = config_json("amd64", None, &[base]);
    let cfg2 = config_json("amd64", None, &[base, top]);
    let id = |n: u8| hex::encode([n; 32]);
    let manifest = json!([
        {"Config": format!("{}.json", hex_of(&cfg1)), "RepoTags": ["app:1"],
         "Layers": [format!("{}/layer.tar", id(1))]},
        {"Config": format!("{}.json", hex_of(&cfg2)), "RepoTags": ["docker.io/library/app:2"],
         "Layers": [format!("{}/layer.tar", id(3)), format!("{}/layer.tar", id(2))]},
    ]);
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(format!("{}/layer.tar", id(1)), &base.blob);
    add(format!("{}/layer.tar", id(2)), &top.blob);
    add(format!("{}.json", hex_of(&cfg1)), &cfg1);
    add(format!("{}.json", hex_of(&cfg2)), &cfg2);
    add(
        "manifest.json".into(),
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(
        &mut h,
        format!("{}/layer.tar", id(3)),
        format!("../{}/layer.tar", id(1)),
    )
    .unwrap();
    b.finish().unwrap();
    (cfg1, cfg2)
}

#[test]
fn docker_archive_legacy() {
    let dir = tempfile::tempdir().unwrap();
    let base = layer(&[("etc/hostname", b"x")], plain);
    let top = layer(&[("app", b"y")], gzip);
    let file = dir.path().join("save.tar");
    let (cfg1, cfg2) = docker_legacy(&file, &base, &top);
    let src = |r: Option<&str>| SourceRef::DockerArchive {
        file: file.clone(),
        reference: r.map(Into::into),
    };

    let one = open_default(&src(Some("app:1"))).unwrap();
    assert_eq!(one.image().config_digest, sha(&cfg1));
    assert_eq!(one.image().manifest_digest, None);
    assert_eq!(read_layers(one.as_ref()).unwrap(), vec![base.tar.clone()]);

    for r in ["app:2", "docker.io/library/app:2", "@1"] {
        let two = open_default(&src(Some(r))).unwrap();
        let img = two.image();
        assert_eq!(img.config_digest, sha(&cfg2));
        assert_eq!(img.layers[0].digest, sha(&base.blob));
        assert_eq!(img.layers[1].digest, sha(&top.blob));
        assert_eq!(img.layers[1].size, top.blob.len() as u64);
        assert_eq!(
            read_layers(two.as_ref()).unwrap(),
            [base.tar.clone(), top.tar.clone()]
        );
    }

    let err = open_default(&src(None)).err().unwrap();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("app:1")),
        "{err}"
    );
    let err = open_default(&src(Some("app:3"))).err().unwrap();
    assert!(
        matches!(&err, Error::NotFound(m) if m.contains("docker.io/library/app:2")),
        "{err}"
    );
}

#[test]
fn docker_archive_with_embedded_oci_layout() {
    // Newer `docker save`: an OCI layout plus a manifest.json pointing into blobs/.
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let (l1, l2) = two_layers();
    let oci = Oci::new(&layout);
    let m = oci.image("amd64", None, &[&l1, &l2]);
    let mut m_tagged = tagged(m.clone(), "1");
    m_tagged["annotations"]["io.containerd.image.name"] = json!("docker.io/library/app:1");
    oci.write_index(vec![m_tagged]);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(&m["digest"].as_str().unwrap()[7..]),
        )
        .unwrap(),
    )
    .unwrap();
    let blob = |d: &Value| format!("blobs/sha256/{}", &d["digest"].as_str().unwrap()[7..]);
    let docker_manifest = json!([{
        "Config": blob(&manifest["config"]),
        "RepoTags": ["app:1"],
        "Layers": manifest["layers"].as_array().unwrap().iter().map(blob).collect::<Vec<_>>(),
    }]);
    std::fs::write(layout.join("manifest.json"), docker_manifest.to_string()).unwrap();
    let file = dir.path().join("save.tar");
    tar_dir(&layout, &file);

    let src: SourceRef = format!("docker-archive:{}:app:1", file.display())
        .parse()
        .unwrap();
    let img = open_default(&src).unwrap();
    assert_eq!(img.image().manifest_digest.as_deref(), m["digest"].as_str());
    assert_eq!(img.image().layers[0].media_type, LAYER_GZIP);
    assert_eq!(
        read_layers(img.as_ref()).unwrap(),
        [l1.tar.clone(), l2.tar.clone()]
    );

    // Without manifest.json it is read as an OCI archive.
    std::fs::remove_file(layout.join("manifest.json")).unwrap();
    tar_dir(&layout, &file);
    let src = SourceRef::DockerArchive {
        file: file.clone(),
        reference: Some("docker.io/library/app:1".into()),
    };
    let img = open_default(&src).unwrap();
    assert_eq!(img.image().manifest_digest.as_deref(), m["digest"].as_str());
}

#[test]
fn an_unreachable_registry_is_an_io_error_naming_it() {
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let src: SourceRef = format!("docker://127.0.0.1:{port}/app:2").parse().unwrap();
    let err = open_default(&src).err().unwrap();
    assert!(
        matches!(&err, Error::Io { path, .. }
            if *path == std::path::Path::new(&format!("docker://127.0.0.1:{port}/app:2"))),
        "{err:?}"
    );
}

#[test]
fn missing_directory_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = open_default(&oci_src(&missing, None)).err().unwrap();
    assert!(
        matches!(&err, Error::Io { path, .. } if *path == missing),
        "{err:?}"
    );
}

#[test]
fn sources_are_send_and_sync_and_layers_open_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2) = two_layers();
    let oci = Oci::new(dir.path());
    oci.write_index(vec![oci.image("amd64", None, &[&l1, &l2])]);
    let src = open_default(&oci_src(dir.path(), None)).unwrap();
    let tars: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = src
            .image()
            .layers
            .iter()
            .map(|l| {
                let src = &src;
                s.spawn(move || {
                    let mut r = src.open_layer(l).unwrap();
                    let mut v = Vec::new();
                    r.read_to_end(&mut v).unwrap();
                    r.finish().unwrap();
                    v
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(tars, [l1.tar.clone(), l2.tar.clone()]);
}
