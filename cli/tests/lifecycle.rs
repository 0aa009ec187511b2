//! Store lifecycle: `verify` finds damage, `gc` gives back exactly the space
//! no image needs, and pinned images survive gc.

use std::path::Path;

use puzzle_testkit::{pseudo_random, Compression, Entry, Image};
use serde::Deserialize;

use crate::util::*;

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
pub struct GcLine {
    pub dry_run: bool,
    pub images: usize,
    pub pinned: usize,
    pub blobs_removed: usize,
    pub bytes_removed: u64,
    pub packs_removed: usize,
    pub packs_repacked: usize,
    pub packs_written: usize,
    pub bytes_written: u64,
    pub chunks_moved: u64,
    pub chunks_removed: u64,
    pub images_rewritten: usize,
    pub layer_records_removed: usize,
    pub freed_bytes: i64,
}

pub fn gc(store: &Path, extra: &[&str]) -> GcLine {
    let r = ok(puzzle(store).args(["gc", "--json"]).args(extra));
    let line: Line<GcLine> = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("gc --json printed something else ({e}):\n{}", r.stdout));
    assert_eq!(line.kind, "gc");
    line.data
}

/// Runs `verify` and returns (exit code, stdout).
pub fn verify(store: &Path, extra: &[&str]) -> (i32, String) {
    let r = run(puzzle(store).arg("verify").args(extra));
    (r.code, r.stdout + &r.stderr)
}

pub fn verify_ok(store: &Path) {
    let (code, out) = verify(store, &[]);
    assert_eq!(code, 0, "verify found problems:\n{out}");
}

/// Bytes of every pack in the store, less their trailers.
pub fn pack_payload(store: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        if bytes.len() >= 32 && &bytes[bytes.len() - 32..][..8] == b"PZLPACK\0" {
            total += bytes.len() as u64 - 32;
        }
    }
    total
}

/// The ids of the chunks of every pack in the store, sorted, a chunk held
/// twice listed twice: equal for two stores holding the same chunks once,
/// however they were grouped into frames and packs.
pub fn pack_chunks(store: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let path = e.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if bytes.len() >= 32 && &bytes[bytes.len() - 32..][..8] == b"PZLPACK\0" {
            let f = std::fs::File::open(&path).unwrap();
            let entries = puzzle_store::pack::read_pack_index(&f, bytes.len() as u64).unwrap();
            ids.extend(entries.iter().map(|e| e.id.to_string()));
        }
    }
    ids.sort();
    ids
}

/// Two images sharing a base layer, each with its own layer.
fn two_images(dir: &Path) -> (String, String) {
    let base = [
        Entry::dir("usr"),
        Entry::file("usr/base.bin", pseudo_random(1, 3 << 20)),
    ];
    let a = Image::new().layer(&base, Compression::Gzip).layer(
        &[Entry::file("a.bin", pseudo_random(2, 2 << 20))],
        Compression::Gzip,
    );
    let b = Image::new().layer(&base, Compression::Gzip).layer(
        &[Entry::file("b.bin", pseudo_random(3, 2 << 20))],
        Compression::None,
    );
    a.write_oci_layout(dir, "a").unwrap();
    b.write_oci_layout(dir, "b").unwrap();
    (
        format!("oci:{}:a", dir.display()),
        format!("oci:{}:b", dir.display()),
    )
}

#[test]
fn rm_then_gc_gives_back_exactly_what_only_that_image_used() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b) = two_images(&t.join("layout"));
    // Reference: a store that only ever held image a.
    let alone = t.join("alone");
    build(&alone, &a, "a");
    let want = pack_payload(&alone);
    extract(&alone, "a", &t.join("xa"));

    // b first: its pack holds the shared base, so after `rm b` that pack is
    // partly live and must be repacked for a.
    let store = t.join("store");
    build(&store, &b, "b");
    build(&store, &a, "a");
    verify_ok(&store);
    let before = pack_payload(&store);
    assert!(before > want);

    // Nothing to collect while both are tagged.
    let g = gc(&store, &["--repack-below", "1"]);
    assert_eq!((g.blobs_removed, g.packs_repacked), (0, 0), "{g:?}");

    ok(puzzle(&store).args(["rm", "b"]));
    let dry = gc(&store, &["--dry-run", "--repack-below", "1"]);
    assert!(dry.dry_run && dry.freed_bytes > 0, "{dry:?}");
    assert_eq!(pack_payload(&store), before, "dry run changed nothing");

    let g = gc(&store, &["--repack-below", "1"]);
    assert!(g.freed_bytes > 0 && g.chunks_removed > 0, "{g:?}");
    assert_eq!((g.packs_repacked, g.images_rewritten), (1, 1), "{g:?}");
    assert_eq!(
        pack_chunks(&store),
        pack_chunks(&alone),
        "after rm b + gc the packs hold exactly a's chunks"
    );
    verify_ok(&store);
    let (code, out) = verify(&store, &["--full"]);
    assert_eq!(code, 0, "{out}");
    extract(&store, "a", &t.join("xa2"));
    assert_same_tree(&t.join("xa"), &t.join("xa2"));
    // gc again: nothing left to do.
    let g = gc(&store, &["--repack-below", "1"]);
    assert_eq!((g.blobs_removed, g.packs_repacked), (0, 0), "{g:?}");
    // b builds again (its layer record was dropped with its chunks).
    build(&store, &b, "b");
    verify_ok(&store);
}

#[test]
fn gc_with_default_threshold_deletes_unreferenced_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b) = two_images(&t.join("layout"));
    let store = t.join("store");
    build(&store, &a, "a");
    build(&store, &b, "b");
    ok(puzzle(&store).args(["rm", "a", "b"]));
    let g = gc(&store, &[]);
    assert!(g.packs_removed >= 2, "{g:?}");
    assert_eq!(pack_payload(&store), 0);
    let left = std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "no image: no blob");
    verify_ok(&store);
    build(&store, &a, "a");
    verify_ok(&store);
}

#[test]
fn pinned_image_survives_gc_after_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, _) = two_images(&t.join("layout"));
    let store_dir = t.join("store");
    build(&store_dir, &a, "a");
    let store = puzzle_store::Store::open(&store_dir).unwrap();
    let (img, pin) = puzzle_store::image::open_pinned(&store, "a").unwrap();
    ok(puzzle(&store_dir).args(["rm", "a"]));
    let g = gc(&store_dir, &["--repack-below", "1"]);
    assert_eq!((g.pinned, g.blobs_removed), (1, 0), "{g:?}");
    // Everything the pinned image reads is still there.
    puzzle_store::extract::extract(&store, &img.meta, &t.join("x")).unwrap();
    drop(pin);
    let g = gc(&store_dir, &[]);
    assert_eq!(g.pinned, 0);
    assert!(g.blobs_removed >= 3, "{g:?}");
    assert_eq!(pack_payload(&store_dir), 0);
}

#[test]
fn verify_names_damaged_objects_and_images() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b) = two_images(&t.join("layout"));
    let store = t.join("store");
    let sa = build(&store, &a, "a");
    let sb = build(&store, &b, "b");
    verify_ok(&store);

    // A flipped byte in the pack only b uses.
    let store_h = puzzle_store::Store::open(&store).unwrap();
    let manifest = |s: &BuildSummary| {
        let d: puzzle_store::BlobDigest = s.manifest.parse().unwrap();
        puzzle_store::image::read_manifest(&store_h, &d).unwrap()
    };
    let (ma, m) = (manifest(&sa), manifest(&sb));
    let last_pack = m
        .packs()
        .map(|p| p.digest)
        .find(|p| !ma.packs().any(|q| q.digest == *p))
        .expect("b has a pack of its own");
    let path = store_h.blob_path(&last_pack);
    let good = std::fs::read(&path).unwrap();
    let mut bad = good.clone();
    bad[10] ^= 0x55;
    std::fs::write(&path, &bad).unwrap();
    let (code, out) = verify(&store, &[]);
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains(&format!("pack {last_pack}")) && out.contains("needed by b"),
        "{out}"
    );
    std::fs::write(&path, &good).unwrap();
    verify_ok(&store);

    // A missing metadata blob.
    let md = m.metadata().unwrap().digest;
    let mpath = store_h.blob_path(&md);
    let meta = std::fs::read(&mpath).unwrap();
    std::fs::remove_file(&mpath).unwrap();
    let (code, out) = verify(&store, &[]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains(&format!("metadata {md}")), "{out}");
    std::fs::write(&mpath, &meta).unwrap();
    verify_ok(&store);

    // The index pointing at a pack that is gone: found, and fixed by a rebuild.
    ok(puzzle(&store).args(["rm", "b"]));
    std::fs::remove_file(&path).unwrap();
    let (code, out) = verify(&store, &[]);
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains(&format!("point at pack {last_pack}: missing")),
        "{out}"
    );
    let (code, out) = verify(&store, &["--rebuild-index"]);
    assert_eq!(code, 0, "{out}");
    // A rebuilt index still dedups: b's base layer is found by chunk.
    let again = build(&store, &b, "b");
    assert!(again.reused_chunks > 0, "{again:?}");
    verify_ok(&store);
}

/// Stores built before manifests carried `artifactType` keep working:
/// their manifests verify, gc keeps what they name, and a gc that rewrites
/// such an image writes the new form.
#[test]
fn manifests_without_artifact_type_verify_and_gc_rewrites_them_in_the_new_form() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b) = two_images(&t.join("layout"));
    let store = t.join("store");
    build(&store, &b, "b");
    build(&store, &a, "a");
    // Make a's manifest one written before the field: same bytes without it.
    let field = r#""artifactType":"application/vnd.puzzle.image.v1","#;
    let index_path = store.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "a")
        .unwrap();
    let hex = |d: &serde_json::Value| d.as_str().unwrap()[7..].to_owned();
    let blobs = store.join("blobs/sha256");
    let new = std::fs::read_to_string(blobs.join(hex(&desc["digest"]))).unwrap();
    assert!(new.contains(field), "{new}");
    let old = new.replace(field, "");
    let digest = puzzle_store::BlobDigest::of(old.as_bytes());
    std::fs::write(blobs.join(digest.hex()), &old).unwrap();
    desc["digest"] = digest.to_string().into();
    desc["size"] = old.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();

    verify_ok(&store);
    // Only the manifest with the field, now named by no image, goes.
    let g = gc(&store, &[]);
    assert_eq!(g.blobs_removed, 1, "{g:?}");
    verify_ok(&store);
    extract(&store, "a", &t.join("xa"));
    // Repacking a rewrites its manifest: with the field again.
    ok(puzzle(&store).args(["rm", "b"]));
    let g = gc(&store, &["--repack-below", "1"]);
    assert_eq!(g.images_rewritten, 1, "{g:?}");
    let a_now = images(&store).into_iter().find(|i| i.name == "a").unwrap();
    let m = std::fs::read_to_string(blobs.join(&a_now.manifest[7..])).unwrap();
    assert!(m.contains(field), "{m}");
    verify_ok(&store);
}
