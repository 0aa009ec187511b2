//! Hostile and broken inputs: a clear one-line error naming the image,
//! layer and entry; a non-zero exit; nothing written outside any target;
//! the store stays usable and lists no partial image. (Writes through a
//! symlink resolve inside the image: symlinks.rs.)

use std::path::Path;

use puzzle_testkit::{bad, Compression, Entry, Image};

use crate::util::*;

fn good_image(layout: &Path) -> String {
    Image::new()
        .layer(
            &[
                Entry::dir("etc"),
                Entry::file("etc/os-release", b"ID=good\n"),
            ],
            Compression::Gzip,
        )
        .write_oci_layout(layout, "good")
        .unwrap();
    format!("oci:{}:good", layout.display())
}

/// Builds `src` as tag `bad`, expecting a failure whose message contains
/// every string of `want`; then checks the store is still usable.
fn expect_failure(t: &Path, store: &Path, src: &str, want: &[&str]) {
    let blobs_before = blobs(store);
    let r = run(puzzle(store).args(["build", src, "--tag", "bad"]));
    assert_eq!(
        r.code, 1,
        "{src}: expected exit 1\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error, got:\n{}", r.stderr);
    assert!(
        lines[0].starts_with("puzzle: error: building bad from "),
        "{}",
        lines[0]
    );
    for w in want {
        assert!(
            lines[0].contains(w),
            "error should mention {w:?}: {}",
            lines[0]
        );
    }
    assert!(r.stdout.is_empty(), "nothing on stdout: {}", r.stdout);
    // No partial image, no new blob, nothing left in tmp/; the next build works.
    assert_eq!(
        blobs(store),
        blobs_before,
        "a failed build left blobs behind"
    );
    if store.join("puzzle.json").exists() {
        assert!(images(store).iter().all(|i| i.name != "bad"));
        let leftovers: Vec<_> = std::fs::read_dir(store.join("tmp")).unwrap().collect();
        assert!(leftovers.is_empty(), "tmp/ not empty: {leftovers:?}");
    }
    let good = good_image(&t.join("good-layout"));
    build(store, &good, "good");
    let x = t.join("x-good");
    let _ = std::fs::remove_dir_all(&x);
    extract(store, "good", &x);
    assert_eq!(
        std::fs::read(x.join("etc/os-release")).unwrap(),
        b"ID=good\n"
    );
}

fn blobs(store: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(store.join("blobs/sha256"))
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn raw_image(
    t: &Path,
    name: &str,
    tar: Vec<u8>,
    c: Compression,
) -> (String, puzzle_testkit::Written) {
    let layout = t.join(name);
    let w = Image::new()
        .layer(&[Entry::file("ok", b"fine")], Compression::Gzip)
        .raw_layer(tar, c)
        .write_oci_layout(&layout, "bad")
        .unwrap();
    (format!("oci:{}:bad", layout.display()), w)
}

#[test]
fn hostile_tar_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "dotdot",
            bad::dotdot_tar(),
            vec!["layer 2", "entry /../escape", "'..'"],
        ),
        (
            "inner-dotdot",
            bad::inner_dotdot_tar(),
            vec!["layer 2", "a/../../escape", "'..'"],
        ),
        (
            "absolute",
            bad::absolute_tar(),
            vec!["layer 2", "/etc/abs", "absolute"],
        ),
        (
            "hardlink",
            bad::hardlink_escape_tar(b"../../etc/passwd"),
            vec!["layer 2", "/passwd", "hard link target"],
        ),
        (
            "hardlink-abs",
            bad::hardlink_escape_tar(b"/etc/passwd"),
            vec!["layer 2", "/passwd", "hard link target"],
        ),
        ("huge", bad::huge_size_tar(), vec!["layer 2", "huge"]),
        (
            "huge-pax",
            bad::huge_pax_size_tar(),
            vec!["layer 2", "huge"],
        ),
        ("checksum", bad::bad_checksum_tar(), vec!["layer 2"]),
    ];
    for (name, tar, want) in cases {
        let (src, _) = raw_image(t, name, tar, Compression::Gzip);
        expect_failure(t, &store, &src, &want);
    }
    // Nothing escaped anywhere near the work dirs.
    for p in ["escape", "etc/abs", "tmp/evil"] {
        assert!(!t.join(p).exists(), "{p} was written");
    }
    assert!(!Path::new("/tmp/evil").exists());
}

/// A ustar header block (no tar crate in this crate's dependencies).
fn ustar_header(name: &[u8], typeflag: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[148..156].copy_from_slice(b"        ");
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A PAX record the tar reader would hold whole in memory is refused after a
/// bounded read, naming the entry before it.
#[test]
fn huge_pax_record_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let mut tar = puzzle_testkit::layer_tar(&[Entry::file("first", b"1")]);
    // Drop the end-of-archive blocks, then append a 64 MiB PAX header.
    while tar.len() >= 512 && tar[tar.len() - 512..].iter().all(|&b| b == 0) {
        tar.truncate(tar.len() - 512);
    }
    let len: u64 = 64 << 20;
    tar.extend_from_slice(&ustar_header(b"PaxHeaders/huge", b'x', len));
    let record = format!("{len} comment=");
    tar.extend_from_slice(record.as_bytes());
    tar.resize(tar.len() + len as usize - record.len() - 1, b'a');
    tar.push(b'\n');
    tar.extend_from_slice(&puzzle_testkit::layer_tar(&[Entry::file("after", b"2")]));
    let (src, _) = raw_image(t, "huge-pax-record", tar, Compression::Gzip);
    expect_failure(
        t,
        &store,
        &src,
        &["layer 2", "entry after /first", "8 MiB of tar headers"],
    );
}

#[test]
fn damaged_layouts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let tar = puzzle_testkit::layer_tar(&[Entry::file(
        "data",
        puzzle_testkit::pseudo_random(1, 200_000),
    )]);

    // A blob whose digest does not match.
    let (src, w) = raw_image(t, "corrupt", tar.clone(), Compression::Gzip);
    bad::corrupt_blob(&t.join("corrupt"), &w.layer_digests[1]).unwrap();
    expect_failure(t, &store, &src, &["layer 2", &w.layer_digests[1]]);

    // A truncated blob (shorter than its descriptor says).
    let (src, w) = raw_image(t, "truncated", tar.clone(), Compression::Gzip);
    bad::truncate_blob(&t.join("truncated"), &w.layer_digests[1], 1000).unwrap();
    expect_failure(t, &store, &src, &["layer 2", &w.layer_digests[1]]);

    // A truncated gzip stream whose descriptor matches its bytes.
    let gz = Compression::Gzip.compress(&tar);
    let (src, _) = raw_image(
        t,
        "truncated-gzip",
        gz[..gz.len() / 2].to_vec(),
        Compression::None,
    );
    expect_failure(t, &store, &src, &["layer 2"]);

    // A manifest naming a missing blob.
    let (src, w) = raw_image(t, "missing", tar.clone(), Compression::Gzip);
    bad::remove_blob(&t.join("missing"), &w.layer_digests[1]).unwrap();
    expect_failure(t, &store, &src, &[&w.layer_digests[1]]);

    // A missing config.
    let (src, w) = raw_image(t, "noconfig", tar.clone(), Compression::Gzip);
    bad::remove_blob(&t.join("noconfig"), &w.config_digest).unwrap();
    expect_failure(t, &store, &src, &[&w.config_digest]);

    // A malformed index.json.
    let (src, _) = raw_image(t, "index", tar.clone(), Compression::Gzip);
    bad::write_malformed_index(&t.join("index")).unwrap();
    expect_failure(t, &store, &src, &["index.json"]);

    // A source that does not exist, and an unknown tag.
    expect_failure(
        t,
        &store,
        &format!("oci:{}:bad", t.join("nope").display()),
        &["nope"],
    );
    let (src, _) = raw_image(t, "tagless", tar, Compression::Gzip);
    expect_failure(t, &store, &src.replace(":bad", ":other"), &["other"]);
}
