//! `umoci unpack` against the simple reference in `reference.rs`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use puzzle_testkit::{
    all_kinds_image, all_kinds_layers, compare_trees, umoci_unpack, CompareOpts, Compression,
    Entry, Image, CAP_NET_BIND_SERVICE,
};

use crate::have_tool;
use crate::reference::apply_layers;

const STRICT: CompareOpts = CompareOpts {
    dir_mtimes: true,
    mtime_nsec: true,
};

/// Writes `img`, unpacks it with umoci and compares with the reference tree
/// of `layers`.
fn check_against_reference(img: &Image, layers: &[Vec<Entry>]) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let layout = tmp.path().join("layout");
    img.write_oci_layout(&layout, "t")?;
    let rootfs = umoci_unpack(&layout, "t", &tmp.path().join("bundle"))?;
    let expected = tmp.path().join("expected");
    apply_layers(&expected, layers);
    if let Err(d) = compare_trees(&expected, &rootfs, &STRICT) {
        panic!("umoci unpack differs from the reference:\n{d}");
    }
    Ok(())
}

#[test]
fn all_kinds_matches_reference() {
    if !have_tool("umoci") {
        return;
    }
    // umoci 0.4.7 rejects zstd layers ("blob is not correct mediatype"), so
    // the zstd layer is written as gzip here.
    let img = all_kinds_image().map_compression(|_, c| match c {
        Compression::Zstd => Compression::Gzip,
        c => c,
    });
    let layers: Vec<Vec<Entry>> = all_kinds_layers().into_iter().map(|(e, _)| e).collect();
    check_against_reference(&img, &layers).unwrap();
}

/// Spot checks on umoci's own output, so that a property both umoci and the
/// reference dropped would still be noticed.
#[test]
fn umoci_keeps_what_the_comparison_relies_on() {
    if !have_tool("umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let img = all_kinds_image().map_compression(|_, c| match c {
        Compression::Zstd => Compression::Gzip,
        c => c,
    });
    img.write_oci_layout(&layout, "k").unwrap();
    let root = umoci_unpack(&layout, "k", &tmp.path().join("bundle")).unwrap();
    let meta = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(
        xattr::get(root.join("xattr/cap"), "security.capability").unwrap(),
        Some(CAP_NET_BIND_SERVICE.to_vec())
    );
    assert_eq!(
        xattr::get(root.join("xattr/file"), "trusted.puzzle").unwrap(),
        Some(b"t".to_vec())
    );
    assert_eq!(meta("late/nsec").mtime_nsec(), 987_654_321);
    assert_eq!(meta("late").mtime_nsec(), 123_456_789);
    assert_eq!(meta("late/link").mtime_nsec(), 5);
    assert_eq!(
        (meta("").mtime(), meta("").mtime_nsec()),
        (1_600_000_000, 250_000_000)
    );
    assert_eq!(meta("opq").mtime(), 1_600_000_020);
    assert_eq!(meta("dev/null").rdev(), rustix::fs::makedev(1, 3));
    assert!(meta("dev/fifo").file_type().is_fifo());
    assert_eq!(meta("hl/base-link").ino(), meta("hl/base").ino());
    assert_eq!(meta("bin/suid-user").mode() & 0o7777, 0o6711);
    assert_eq!(meta("home/big-ids").uid(), 3_000_000);
    assert!(!root.join("wh/dir-gone").exists() && !root.join("opq/old").exists());
}

#[test]
fn zstd_layers_rejected_or_unpacked_right() {
    if !have_tool("umoci") {
        return;
    }
    let layers = vec![
        vec![Entry::dir("d"), Entry::file("d/f", "zstd\n")],
        vec![Entry::file("g", "gzip\n")],
    ];
    let img = Image::new()
        .layer(&layers[0], Compression::Zstd)
        .layer(&layers[1], Compression::Gzip);
    match check_against_reference(&img, &layers) {
        Ok(()) => {}
        Err(e) => assert!(
            format!("{e:#}").contains("mediatype"),
            "unexpected umoci failure: {e:#}"
        ),
    }
}

#[test]
fn layer_semantics_without_root_entry() {
    if !have_tool("umoci") {
        return;
    }
    // No `./` entry: the root stays 0755 root:root with mtime 0. A whiteout
    // and an opaque marker placed after the layer's new children, in
    // directories the layer does not re-declare: their mtimes stay.
    let layers = vec![
        vec![
            Entry::dir("d").mtime(2000, 0),
            Entry::file("d/f", "1").mtime(1, 0),
            Entry::file("d/g", "1").mtime(1, 0),
            Entry::dir("o").mtime(3000, 5),
            Entry::file("o/old", "1"),
            Entry::dir("o/sub"),
        ],
        vec![
            Entry::whiteout("d/f"),
            Entry::file("o/new", "new"),
            Entry::opaque("o"),
            Entry::file("top", "in the root").mtime(4000, 0),
        ],
    ];
    let img = Image::new()
        .layer(&layers[0], Compression::Gzip)
        .layer(&layers[1], Compression::None);
    check_against_reference(&img, &layers).unwrap();
}
