//! OCI layout, OCI archive and docker archive writers.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use puzzle_testkit::{
    all_kinds_image, sha256_digest, Compression, Entry, Image, Written, REF_NAME,
};
use serde_json::Value;

use crate::have_tool;

fn small(n: &str) -> Image {
    Image::new()
        .layer(&[Entry::file("a", n)], Compression::Gzip)
        .layer(&[Entry::file("b", "zstd")], Compression::Zstd)
        .layer(&[Entry::file("c", "plain")], Compression::None)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    match media_type.rsplit_once('+').map(|(_, c)| c) {
        None => blob.to_vec(),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Some("zstd") => zstd::decode_all(blob).unwrap(),
        Some(other) => panic!("unexpected compression {other}"),
    }
}

/// Checks the layout's blobs for `w`: names are digests, the manifest names
/// config and layers, layers decompress to the diff_ids.
fn check_layout_image(layout: &Path, w: &Written) {
    let blob = |d: &str| fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    for entry in fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert_eq!(
            sha256_digest(&fs::read(entry.path()).unwrap()),
            format!("sha256:{name}")
        );
    }
    let manifest: Value = serde_json::from_slice(&blob(&w.manifest_digest)).unwrap();
    assert_eq!(manifest["config"]["digest"], w.config_digest.as_str());
    let config: Value = serde_json::from_slice(&blob(&w.config_digest)).unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(w.diff_ids));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), w.layer_digests.len());
    for ((l, digest), diff_id) in layers.iter().zip(&w.layer_digests).zip(&w.diff_ids) {
        assert_eq!(l["digest"], digest.as_str());
        let b = blob(digest);
        assert_eq!(l["size"], b.len());
        let tar = decompress(l["mediaType"].as_str().unwrap(), &b);
        assert_eq!(&sha256_digest(&tar), diff_id);
    }
}

fn tags(layout: &Path) -> BTreeMap<String, String> {
    let index = read_json(&layout.join("index.json"));
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["annotations"][REF_NAME].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn oci_layout_adds_and_retags() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let w1 = small("one").write_oci_layout(&layout, "one").unwrap();
    let w2 = small("two").write_oci_layout(&layout, "two").unwrap();
    assert_ne!(w1.manifest_digest, w2.manifest_digest);
    // The zstd and plain layers are shared by both images.
    assert_eq!(w1.layer_digests[1..], w2.layer_digests[1..]);
    assert_eq!(w1.layer_digests[2], w1.diff_ids[2]);
    assert_eq!(
        read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    check_layout_image(&layout, &w1);
    check_layout_image(&layout, &w2);
    let t = tags(&layout);
    assert_eq!(t.len(), 2);
    assert_eq!(t["one"], w1.manifest_digest);

    let w3 = small("three").write_oci_layout(&layout, "one").unwrap();
    let t = tags(&layout);
    assert_eq!(t.len(), 2);
    assert_eq!(t["one"], w3.manifest_digest);
    assert_eq!(t["two"], w2.manifest_digest);
}

#[test]
fn writers_are_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let wa = all_kinds_image().write_oci_layout(a.path(), "k").unwrap();
    let wb = all_kinds_image().write_oci_layout(b.path(), "k").unwrap();
    assert_eq!(wa, wb);
    check_layout_image(a.path(), &wa);
    let da = all_kinds_image()
        .write_docker_archive(&a.path().join("d.tar"), "k:1")
        .unwrap();
    let db = all_kinds_image()
        .write_docker_archive(&b.path().join("d.tar"), "k:1")
        .unwrap();
    assert_eq!(da, db);
    assert_eq!(da.config_digest, wa.config_digest);
    assert_eq!(
        fs::read(a.path().join("d.tar")).unwrap(),
        fs::read(b.path().join("d.tar")).unwrap()
    );
}

fn tar_files(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let data = fs::read(p).unwrap();
    let mut ar = tar::Archive::new(data.as_slice());
    let mut out = BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let mut d = Vec::new();
        e.read_to_end(&mut d).unwrap();
        out.insert(name, d);
    }
    out
}

#[test]
fn docker_archive_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("img.tar");
    let w = small("d")
        .write_docker_archive(&file, "registry:5000/app:1")
        .unwrap();
    let files = tar_files(&file);
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(sha256_digest(&files["manifest.json"]), w.manifest_digest);
    let m = &manifest[0];
    assert_eq!(m["RepoTags"][0], "registry:5000/app:1");
    let config_name = m["Config"].as_str().unwrap();
    assert_eq!(config_name, format!("{}.json", &w.config_digest[7..]));
    assert_eq!(sha256_digest(&files[config_name]), w.config_digest);
    let layers = m["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (l, diff_id) in layers.iter().zip(&w.diff_ids) {
        let tar = &files[l.as_str().unwrap()];
        // Uncompressed, as docker writes them.
        assert_eq!(&sha256_digest(tar), diff_id);
        let id = l.as_str().unwrap().strip_suffix("/layer.tar").unwrap();
        assert_eq!(files[&format!("{id}/VERSION")], b"1.0");
    }
    assert_eq!(w.layer_digests, w.diff_ids);
    let repos: Value = serde_json::from_slice(&files["repositories"]).unwrap();
    let last = layers[2]
        .as_str()
        .unwrap()
        .strip_suffix("/layer.tar")
        .unwrap();
    assert_eq!(repos["registry:5000/app"]["1"], last);
}

#[test]
fn oci_archive_holds_a_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("img.tar");
    let w = small("o").write_oci_archive(&file, "t").unwrap();
    let files = tar_files(&file);
    // Unpack the archive and check it as a layout.
    let layout = tmp.path().join("layout");
    for (name, data) in &files {
        let p = layout.join(name);
        if name.ends_with('/') {
            fs::create_dir_all(p).unwrap();
        } else {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
    }
    check_layout_image(&layout, &w);
    assert_eq!(tags(&layout)["t"], w.manifest_digest);
}

fn skopeo_inspect(reference: &str) -> Value {
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--override-os",
            "linux",
            "--override-arch",
            "amd64",
            reference,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn skopeo_reads_all_three_formats() {
    if !have_tool("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = small("s");
    let layout = tmp.path().join("layout");
    let w = img.write_oci_layout(&layout, "t").unwrap();
    let v = skopeo_inspect(&format!("oci:{}:t", layout.display()));
    assert_eq!(v["Layers"], serde_json::json!(w.layer_digests));
    assert_eq!(v["Architecture"], "amd64");

    let archive = tmp.path().join("oci.tar");
    let w = img.write_oci_archive(&archive, "t").unwrap();
    let v = skopeo_inspect(&format!("oci-archive:{}:t", archive.display()));
    assert_eq!(v["Layers"], serde_json::json!(w.layer_digests));

    let docker = tmp.path().join("docker.tar");
    let w = img.write_docker_archive(&docker, "app:1").unwrap();
    let v = skopeo_inspect(&format!("docker-archive:{}", docker.display()));
    assert_eq!(v["Layers"], serde_json::json!(w.diff_ids));
    assert_eq!(v["RepoTags"], serde_json::json!([]));
}
