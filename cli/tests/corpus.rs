//! The small real corpus (corpora/build.sh --small): every image round-trips
//! exactly, django 5.0.8 after 5.0.7 stores only new chunks, an as-built
//! no-op rebuild adds no chunk data, and memory stays bounded.

use std::path::Path;

use puzzle_testkit::umoci_unpack;

use crate::util::*;

const DET: [&str; 5] = [
    "base",
    "python3",
    "django-5.0.7",
    "django-5.0.8",
    "django-5.0.8-rebuild",
];

fn src(corpus: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", corpus.display())
}

/// Uncompressed sizes of `tag`'s layers, by `gzip -dc` (not our decoder).
fn layer_tar_sizes(corpus: &Path, tag: &str) -> Vec<u64> {
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        corpus.join("blobs/sha256").join(hex)
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&corpus_manifest(corpus, tag))).unwrap())
            .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg("gzip -dc \"$0\" | wc -c")
                .arg(blob(l["digest"].as_str().unwrap()))
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn corpus_images_extract_identical_to_umoci() {
    let Some(corpus) = corpus() else { return };
    if !have("umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let mut tags: Vec<String> = DET.iter().map(|s| s.to_string()).collect();
    tags.push("django-5.0.8-asbuilt".into());
    for tag in &tags {
        build(&store, &src(&corpus, tag), tag);
        let x = t.join("x");
        let bundle = t.join("bundle");
        extract(&store, tag, &x);
        let rootfs = umoci_unpack(&corpus, tag, &bundle).unwrap();
        assert_same_tree(&rootfs, &x);
        std::fs::remove_dir_all(&x).unwrap();
        std::fs::remove_dir_all(&bundle).unwrap();
    }
}

#[test]
fn version_series_dedups_and_rebuilds_add_nothing() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let s0 = build(&store, &src(&corpus, "django-5.0.7"), "django-5.0.7");
    assert_eq!(s0.layers, 3);
    assert_eq!(s0.new_chunk_bytes + s0.reused_chunk_bytes, s0.bytes_chunked);
    let tars = layer_tar_sizes(&corpus, "django-5.0.7");
    assert_eq!(s0.bytes_uncompressed, tars.iter().sum::<u64>());

    let s1 = build(&store, &src(&corpus, "django-5.0.8"), "django-5.0.8");
    assert_eq!(
        s1.layers_reused, 2,
        "base and python3 layers are converted once"
    );
    // Only the django layer was chunked; most of it was already stored.
    assert_eq!(s1.new_chunk_bytes + s1.reused_chunk_bytes, s1.bytes_chunked);
    assert!(s1.reused_chunk_bytes > 0);
    let tars = layer_tar_sizes(&corpus, "django-5.0.8");
    assert_eq!(
        s1.bytes_uncompressed, tars[2],
        "only the django layer is read"
    );
    assert!(
        s1.new_chunk_bytes * 2 < s1.bytes_chunked,
        "5.0.8 after 5.0.7 should mostly reuse chunks: new {} of {}",
        s1.new_chunk_bytes,
        s1.bytes_chunked
    );
    assert!(
        s1.stored_bytes < s1.new_chunk_bytes,
        "new chunks are compressed"
    );
    eprintln!(
        "django 5.0.8 after 5.0.7: {} new of {} chunked bytes, {} stored",
        s1.new_chunk_bytes, s1.bytes_chunked, s1.stored_bytes
    );

    // A no-op rebuild, deterministic or as built: no new chunk data at all.
    for tag in [
        "django-5.0.8-rebuild",
        "django-5.0.8-asbuilt",
        "django-5.0.8-rebuild-asbuilt",
    ] {
        let s = build(&store, &src(&corpus, tag), tag);
        assert_eq!(s.new_chunk_bytes, 0, "{tag} added chunk data");
        assert_eq!(s.new_chunks, 0, "{tag}");
    }
}

#[test]
fn same_corpus_image_same_digests_in_two_stores() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = build(
        &tmp.path().join("a/store"),
        &src(&corpus, "python3"),
        "python3",
    );
    let b = build(
        &tmp.path().join("b/other/store"),
        &src(&corpus, "python3"),
        "python3",
    );
    assert_eq!((a.manifest, a.metadata), (b.manifest, b.metadata));
}

#[test]
fn peak_memory_stays_bounded() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // The largest small-corpus image, into a fresh store: every layer converted.
    let s = build(
        &tmp.path().join("store"),
        &src(&corpus, "django-5.0.8-asbuilt"),
        "big",
    );
    eprintln!(
        "built {} bytes of files in {:.1}s, peak RSS {} MiB",
        s.bytes_chunked,
        s.seconds,
        s.peak_rss_bytes >> 20
    );
    assert!(s.peak_rss_bytes > 0, "peak RSS is measured");
    assert!(
        s.peak_rss_bytes < 256 << 20,
        "peak RSS {} MiB",
        s.peak_rss_bytes >> 20
    );
}
