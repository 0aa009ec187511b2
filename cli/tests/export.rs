//! `puzzle export`: stored images back to plain OCI images, checked by
//! unpacking them with umoci and by building them again.

use std::io::Read;
use std::path::Path;

use puzzle_testkit::{all_kinds_image, umoci_unpack};
use serde::Deserialize;

use crate::util::*;

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct ExportSummary {
    image: String,
    target: String,
    manifest: String,
    config: String,
    layers: usize,
    squashed: bool,
    tar_bytes: u64,
    layer_bytes: u64,
    seconds: f64,
}

fn export(store: &Path, name: &str, dest: &str, extra: &[&str]) -> (ExportSummary, String) {
    let r = ok(puzzle(store)
        .args(["export", name, dest, "--json"])
        .args(extra));
    let line: Line<ExportSummary> = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("export --json printed something else ({e}):\n{}", r.stdout));
    assert_eq!((line.kind.as_str(), line.schema), ("export", 1));
    (line.data, r.stderr)
}

/// The manifest `tag` names in the OCI layout `dir`, parsed.
fn manifest(dir: &Path, tag: &str) -> serde_json::Value {
    let digest = corpus_manifest(dir, tag);
    let hex = digest.strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// Entry names of every layer of `tag` in layout `dir` (gzip layers).
fn layer_names(dir: &Path, tag: &str) -> Vec<Vec<String>> {
    let m = manifest(dir, tag);
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(
                l["mediaType"],
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let hex = l["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap();
            let f = std::fs::File::open(dir.join("blobs/sha256").join(hex)).unwrap();
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
            ar.entries()
                .unwrap()
                .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
                .collect()
        })
        .collect()
}

/// The config's `rootfs.diff_ids` are the SHA-256 of the layers' tars.
fn check_diff_ids(dir: &Path, tag: &str) {
    let m = manifest(dir, tag);
    let cfg_hex = m["config"]["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(cfg_hex)).unwrap())
            .unwrap();
    let diff_ids = cfg["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    for (l, d) in layers.iter().zip(diff_ids) {
        let hex = l["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(dir.join("blobs/sha256").join(hex)).unwrap(),
        )
        .read_to_end(&mut tar)
        .unwrap();
        assert_eq!(d.as_str().unwrap(), puzzle_testkit::sha256_digest(&tar));
    }
}

#[test]
fn all_kinds_export_unpacks_as_extracted_and_builds_back() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    all_kinds_image().write_oci_layout(&src, "all").unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:all", src.display()), "all");
    let extracted = t.join("extracted");
    extract(&store, "all", &extracted);

    let out = t.join("out");
    let (per_layer, stderr) = export(&store, "all", &format!("oci:{}:all", out.display()), &[]);
    assert_eq!(
        (per_layer.layers, per_layer.squashed),
        (3, false),
        "{stderr}"
    );
    let (squashed, _) = export(
        &store,
        "all",
        &format!("oci:{}:flat", out.display()),
        &["--squash"],
    );
    assert_eq!((squashed.layers, squashed.squashed), (1, true));
    check_diff_ids(&out, "all");
    check_diff_ids(&out, "flat");
    // Blobs are readable by everyone, as other tools write them (under the
    // usual umask 022), not 0600 like temp files.
    for e in std::fs::read_dir(out.join("blobs/sha256")).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let mode = e.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    // The per-layer export carries the deletions as whiteouts.
    let names = layer_names(&out, "all");
    assert!(
        names[1].iter().any(|n| n.ends_with("/.wh..wh..opq")),
        "no opaque marker in layer 2: {:?}",
        names[1]
    );
    assert!(
        names[1]
            .iter()
            .any(|n| n.contains("/.wh.") && !n.ends_with(".wh..opq")),
        "no whiteout in layer 2: {:?}",
        names[1]
    );
    assert!(!layer_names(&out, "flat")[0]
        .iter()
        .any(|n| n.contains(".wh.")));

    if have("umoci") {
        for tag in ["all", "flat"] {
            let rootfs = umoci_unpack(&out, tag, &t.join(format!("bundle-{tag}"))).unwrap();
            assert_same_tree(&extracted, &rootfs);
        }
    }

    // Built again, each export extracts to the same tree; zstd too, and
    // both archive kinds.
    let zst = t.join("zst");
    export(
        &store,
        "all",
        &format!("oci:{}:z", zst.display()),
        &["--compress", "zstd", "--level", "9"],
    );
    let oci_tar = t.join("all.oci.tar");
    export(
        &store,
        "all",
        &format!("oci-archive:{}:all", oci_tar.display()),
        &[],
    );
    let docker_tar = t.join("all.docker.tar");
    let (d, _) = export(
        &store,
        "all",
        &format!("docker-archive:{}:all:1", docker_tar.display()),
        &[],
    );
    assert_eq!(d.layers, 3);
    let store2 = t.join("store2");
    for (i, source) in [
        format!("oci:{}:all", out.display()),
        format!("oci:{}:flat", out.display()),
        format!("oci:{}:z", zst.display()),
        format!("oci-archive:{}:all", oci_tar.display()),
        format!("docker-archive:{}", docker_tar.display()),
    ]
    .iter()
    .enumerate()
    {
        let tag = format!("back-{i}");
        let s = build(&store2, source, &tag);
        let want = if source.contains(":flat") { 1 } else { 3 };
        assert_eq!(s.layers, want, "{source}");
        let x = t.join(format!("x{i}"));
        extract(&store2, &tag, &x);
        assert_same_tree(&extracted, &x);
    }
    // The zstd export holds zstd layers.
    let m = manifest(&zst, "z");
    assert!(m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"));

    // Exporting again under a tag replaces that tag's manifest in index.json.
    let (relevel, _) = export(
        &store,
        "all",
        &format!("oci:{}:flat", out.display()),
        &["--squash", "--level", "1"],
    );
    assert_ne!(relevel.manifest, squashed.manifest);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [per_layer.manifest.as_str(), relevel.manifest.as_str()]
    );

    // The same stored image, exported from another store: the same digests.
    let out2 = t.join("out2");
    let (again, _) = export(
        &store2,
        "back-0",
        &format!("oci:{}:all", out2.display()),
        &[],
    );
    assert_eq!(again.manifest, per_layer.manifest);
    // Config kept: env and cmd.
    let cfg_hex = manifest(&out, "all")["config"]["digest"].as_str().unwrap()[7..].to_string();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("blobs/sha256").join(cfg_hex)).unwrap())
            .unwrap();
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh");
    assert!(cfg["config"]["Env"][0]
        .as_str()
        .unwrap()
        .starts_with("PATH="));
}

/// Without layer records (an index rebuilt from packs), export says so and
/// writes one squashed layer.
#[test]
fn unknown_layers_export_squashed() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    all_kinds_image().write_oci_layout(&src, "all").unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:all", src.display()), "all");
    ok(puzzle(&store).args(["verify", "--rebuild-index"]));
    let out = t.join("out");
    let (s, stderr) = export(&store, "all", &format!("oci:{}", out.display()), &[]);
    assert_eq!((s.layers, s.squashed), (1, true));
    assert!(
        stderr.contains("no usable record") && stderr.contains("squashed"),
        "{stderr}"
    );
    let store2 = t.join("store2");
    build(&store2, &format!("oci:{}", out.display()), "back");
    let (a, b) = (t.join("a"), t.join("b"));
    extract(&store, "all", &a);
    extract(&store2, "back", &b);
    assert_same_tree(&a, &b);
}

#[test]
fn bad_targets_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = tmp.path().join("src");
    all_kinds_image().write_oci_layout(&src, "all").unwrap();
    build(&store, &format!("oci:{}:all", src.display()), "all");
    for (args, want) in [
        (vec!["docker://example.com/a:1"], "registry"),
        (vec!["nowhere"], "unrecognized export target"),
        (vec!["oci:x", "--level", "42"], "out of range"),
    ] {
        let r = run(puzzle(&store).args(["export", "all"]).args(&args));
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    // A directory that is neither empty nor a layout is not written to.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let r = run(puzzle(&store)
        .args(["export", "all"])
        .arg(format!("oci:{}", busy.display())));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("neither an OCI layout nor empty"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
}

#[test]
fn corpus_images_export_as_extracted_in_any_store() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let out = t.join("out");
    for tag in ["base", "django-5.0.8"] {
        build(&store, &format!("oci:{}:{tag}", corpus.display()), tag);
        let (s, _) = export(&store, tag, &format!("oci:{}:{tag}", out.display()), &[]);
        let original = manifest(&corpus, tag);
        assert_eq!(
            s.layers,
            original["layers"].as_array().unwrap().len(),
            "{tag}"
        );
        assert!(!s.squashed);
        let extracted = t.join(format!("x-{tag}"));
        extract(&store, tag, &extracted);
        if have("umoci") {
            let rootfs = umoci_unpack(&out, tag, &t.join(format!("bundle-{tag}"))).unwrap();
            assert_same_tree(&extracted, &rootfs);
        }
        // Built again from the export: the same tree.
        let back = format!("{tag}-back");
        build(&store, &format!("oci:{}:{tag}", out.display()), &back);
        let x = t.join(format!("x-{back}"));
        extract(&store, &back, &x);
        assert_same_tree(&extracted, &x);
    }
    check_diff_ids(&out, "base");
    // Squashed: the same tree in one layer.
    let (s, _) = export(
        &store,
        "django-5.0.8",
        &format!("oci:{}:flat", out.display()),
        &["--squash"],
    );
    assert_eq!(s.layers, 1);
    if have("umoci") {
        let rootfs = umoci_unpack(&out, "flat", &t.join("bundle-flat")).unwrap();
        assert_same_tree(&t.join("x-django-5.0.8"), &rootfs);
    }
    // Another store holding only django-5.0.8 exports the same image.
    let other = t.join("other");
    build(
        &other,
        &format!("oci:{}:django-5.0.8", corpus.display()),
        "d",
    );
    let (a, _) = export(
        &other,
        "d",
        &format!("oci:{}:d", t.join("out2").display()),
        &[],
    );
    let b = corpus_manifest(&out, "django-5.0.8");
    assert_eq!(a.manifest, b);
}

/// A pack gone from the store: the export fails naming it and leaves no
/// temp file in the destination.
#[test]
fn missing_pack_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    all_kinds_image().write_oci_layout(&src, "all").unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:all", src.display()), "all");
    let m = manifest(&store, "all");
    let pack = m["layers"][1]["digest"].as_str().unwrap()[7..].to_string();
    std::fs::remove_file(store.join("blobs/sha256").join(&pack)).unwrap();
    for squash in [false, true] {
        let out = t.join(format!("out-{squash}"));
        let mut cmd = puzzle(&store);
        cmd.args(["export", "all"])
            .arg(format!("oci:{}", out.display()));
        if squash {
            cmd.arg("--squash");
        }
        let r = run(&mut cmd);
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains(&pack), "{}", r.stderr);
        let leftovers: Vec<_> = std::fs::read_dir(out.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// Links into a lower layer, written first in their layer's tar, whose
/// parent directory is new in that layer, and whose target the layer then
/// replaces: umoci applies the export as the store flattened it.
#[test]
fn lower_links_under_new_directories_apply_like_the_store() {
    use puzzle_testkit::{Compression, Entry, Image};
    if !have("umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let img = Image::new()
        .layer(
            &[
                Entry::file("a", "lower a\n").mode(0o640).owner(5, 6),
                Entry::file("w", "whited out\n"),
            ],
            Compression::Gzip,
        )
        .layer(
            &[
                Entry::dir("new").mode(0o750),
                Entry::hardlink("new/la", "a"),
                Entry::hardlink("new/lw", "w"),
                Entry::file("a", "upper a\n"),
                Entry::whiteout("w"),
            ],
            Compression::Gzip,
        );
    let src = t.join("src");
    img.write_oci_layout(&src, "l").unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:l", src.display()), "l");
    let x = t.join("x");
    extract(&store, "l", &x);
    assert_eq!(std::fs::read(x.join("new/la")).unwrap(), b"lower a\n");
    assert_eq!(std::fs::read(x.join("new/lw")).unwrap(), b"whited out\n");
    assert!(!x.join("w").exists());
    let out = t.join("out");
    let (s, _) = export(&store, "l", &format!("oci:{}:l", out.display()), &[]);
    assert_eq!((s.layers, s.squashed), (2, false));
    // The links come first, before their directory and the new `a`.
    assert_eq!(
        layer_names(&out, "l")[1],
        ["new/la", "new/lw", ".wh.w", "a", "new/"]
    );
    let rootfs = umoci_unpack(&out, "l", &t.join("bundle")).unwrap();
    assert_same_tree(&x, &rootfs);
}
