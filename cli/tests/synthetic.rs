//! Synthetic images covering every entry kind, checked against umoci.

use std::path::Path;

use puzzle_testkit::{
    all_kinds_image, layer_tar_gnu, long_path, umoci_unpack, Compression, Entry, Image,
};

use crate::util::*;

/// The coverage image with its zstd layer as gzip (umoci 0.4 lacks zstd).
fn gzip_only(img: Image) -> Image {
    img.map_compression(|_, c| {
        if c == Compression::Zstd {
            Compression::Gzip
        } else {
            c
        }
    })
}

#[test]
fn all_kinds_extract_matches_umoci_from_every_source_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    all_kinds_image().write_oci_layout(&layout, "all").unwrap();
    gzip_only(all_kinds_image())
        .write_oci_layout(&layout, "all-gz")
        .unwrap();
    all_kinds_image()
        .write_oci_archive(&t.join("all.oci.tar"), "all")
        .unwrap();
    all_kinds_image()
        .write_docker_archive(&t.join("all.docker.tar"), "all:1")
        .unwrap();

    let store = t.join("store");
    let sources = [
        format!("oci:{}:all", layout.display()),
        format!("oci:{}:all-gz", layout.display()),
        format!("oci-archive:{}:all", t.join("all.oci.tar").display()),
        format!("docker-archive:{}", t.join("all.docker.tar").display()),
    ];
    let mut extracted = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let tag = format!("all-{i}");
        let s = build(&store, src, &tag);
        assert_eq!(s.layers, 3, "{src}");
        let out = t.join(format!("x{i}"));
        extract(&store, &tag, &out);
        extracted.push(out);
    }
    // Every source kind gives the same tree.
    for x in &extracted[1..] {
        assert_same_tree(&extracted[0], x);
    }
    if have("umoci") {
        let rootfs = umoci_unpack(&layout, "all-gz", &t.join("bundle")).unwrap();
        for x in &extracted {
            assert_same_tree(&rootfs, x);
        }
    }
}

#[test]
fn gnu_long_names_and_big_files() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let big = puzzle_testkit::pseudo_random(7, 3 << 20);
    let entries = vec![
        Entry::dir("d"),
        Entry::file(format!("d/{}", long_path()), b"long name via GNU L"),
        Entry::symlink("d/longlink", puzzle_testkit::long_target()),
        Entry::file("d/big", &big),
        Entry::file("d/empty", b""),
    ];
    let img = Image::new().raw_layer(layer_tar_gnu(&entries), Compression::Gzip);
    img.write_oci_layout(&layout, "gnu").unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:gnu", layout.display()), "gnu");
    extract(&store, "gnu", &t.join("x"));
    assert_eq!(std::fs::read(t.join("x/d/big")).unwrap(), big);
    if have("umoci") {
        let rootfs = umoci_unpack(&layout, "gnu", &t.join("bundle")).unwrap();
        assert_same_tree(&rootfs, &t.join("x"));
    }
}

fn digests(store: &Path, src: &str, extra: &[&str]) -> (String, String) {
    let s = build_with(store, src, "img", extra);
    (s.manifest, s.metadata)
}

#[test]
fn same_image_gives_identical_digests_in_any_store() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    all_kinds_image().write_oci_layout(&layout, "all").unwrap();
    let src = format!("oci:{}:all", layout.display());
    let a = digests(&t.join("one/store"), &src, &["--threads", "1"]);
    let b = digests(&t.join("two/deeper/store"), &src, &["--threads", "3"]);
    assert_eq!(a, b);
    // And the packs are byte-identical too.
    let list = |s: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(s.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        list(&t.join("one/store")),
        list(&t.join("two/deeper/store"))
    );
    // Rebuilding into the same store reuses every layer and changes nothing.
    let again = build(&t.join("one/store"), &src, "img");
    assert_eq!((again.manifest, again.metadata), a);
    assert_eq!(again.layers_reused, again.layers);
    assert_eq!(again.new_chunk_bytes, 0);
}

/// `n` files of pseudo-random contents: file `i` is named `name(i)`, seeded
/// `seed + i` and `size.0 + i * size.1` bytes long.
fn random_files(
    n: u64,
    seed: u64,
    size: (usize, usize),
    name: impl Fn(u64) -> String,
) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let len = size.0 + i as usize * size.1;
            (name(i), puzzle_testkit::pseudo_random(seed + i, len))
        })
        .collect()
}

#[test]
fn entry_order_and_mtimes_do_not_change_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let files = random_files(40, 0, (30_000, 1000), |i| format!("f{i:02}"));
    let sorted: Vec<Entry> = files.iter().map(|(n, c)| Entry::file(n, c)).collect();
    let shuffled: Vec<Entry> = files
        .iter()
        .rev()
        .map(|(n, c)| Entry::file(n, c).mtime(1_800_000_000, 5).owner(1, 1))
        .collect();
    Image::new()
        .layer(&sorted, Compression::Gzip)
        .write_oci_layout(&layout, "a")
        .unwrap();
    Image::new()
        .layer(&shuffled, Compression::None)
        .write_oci_layout(&layout, "b")
        .unwrap();
    let store = t.join("store");
    let a = build(&store, &format!("oci:{}:a", layout.display()), "a");
    assert!(a.new_chunk_bytes > 1_000_000);
    let b = build(&store, &format!("oci:{}:b", layout.display()), "b");
    assert_eq!(b.layers_reused, 0, "a different layer");
    assert_eq!(b.new_chunk_bytes, 0, "same contents, no new chunk data");
    assert_eq!(b.reused_chunk_bytes, a.new_chunk_bytes);
}

/// A layer whose files (sizes and contents, in chunking order) were converted
/// before takes its extents from that layer's record without chunking: the
/// result must equal chunking it, and a record whose chunks are gone must not
/// be used.
#[test]
fn converted_contents_are_reused_exactly_and_only_while_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let files = random_files(30, 100, (5_000, 9_000), |i| format!("d{}/f{i:02}", i % 3));
    let entries = |mtime: u64, rev: bool| -> Vec<Entry> {
        let mut v: Vec<Entry> = (0..3).map(|d| Entry::dir(format!("d{d}"))).collect();
        let mut f: Vec<Entry> = files
            .iter()
            .map(|(n, c)| Entry::file(n, c).mtime(mtime, 0))
            .collect();
        if rev {
            f.reverse();
        }
        v.extend(f);
        v
    };
    for (tag, mtime, rev) in [("a", 1_600_000_000, false), ("b", 1_700_000_000, true)] {
        Image::new()
            .layer(&entries(mtime, rev), Compression::Gzip)
            .write_oci_layout(&layout, tag)
            .unwrap();
    }
    let src = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let store = t.join("store");
    let a = build(&store, &src("a"), "a");
    assert!(a.new_chunk_bytes > 1_000_000);
    let b = build(&store, &src("b"), "b");
    assert_eq!(b.layers_reused, 0, "a different layer");
    assert_eq!((b.new_chunks, b.new_chunk_bytes), (0, 0));
    assert_eq!(
        (b.reused_chunks, b.reused_chunk_bytes),
        (a.new_chunks, a.bytes_chunked)
    );

    // Chunking b for real, in a fresh store, gives the same metadata blob.
    let fresh = build(&t.join("fresh"), &src("b"), "b");
    assert_eq!(fresh.new_chunk_bytes, a.new_chunk_bytes);
    assert_eq!(fresh.metadata, b.metadata);
    extract(&store, "b", &t.join("xb"));
    extract(&t.join("fresh"), "b", &t.join("xf"));
    assert_same_tree(&t.join("xf"), &t.join("xb"));

    // Once the chunks are collected, the earlier record must not be used.
    ok(puzzle(&store).args(["rm", "a", "b"]));
    ok(puzzle(&store).arg("gc"));
    let again = build(&store, &src("b"), "b");
    assert_eq!(again.new_chunk_bytes, a.new_chunk_bytes);
    assert_eq!(again.metadata, b.metadata);
    ok(puzzle(&store).args(["verify", "--full"]));
    extract(&store, "b", &t.join("xa"));
    assert_same_tree(&t.join("xf"), &t.join("xa"));
}

/// Every file's extents in inode order, as (chunk id, offset in the chunk,
/// length): the chunk stream an image's files were cut into.
fn extents(store: &Path, tag: &str) -> Vec<(String, u32, u32)> {
    let s = puzzle_store::Store::open(store).unwrap();
    let img = puzzle_store::image::open(&s, tag).unwrap();
    let mut out = Vec::new();
    for i in 0..img.meta.inode_count() as u32 {
        let ino = img.meta.inode(i).unwrap();
        if ino.kind != puzzle_store::meta::Kind::File {
            continue;
        }
        for x in 0..ino.count() {
            let e = img.meta.extent(&ino, x).unwrap();
            let id = img.meta.chunk(e.chunk).unwrap().id.to_string();
            out.push((id, e.chunk_offset, e.len));
        }
    }
    assert!(out.len() > 60, "{} extents", out.len());
    out
}

/// While a layer is read, files whose contents a converted layer holds are
/// not spooled. A twin in another tar order then spools only what came before
/// its first sampled file; a near twin (one file changed) is chunked with the
/// files not spooled read back from the packs, and must come out exactly as
/// chunking it from scratch.
#[test]
fn files_already_stored_are_not_spooled() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    // A file of 1 MiB or more is always sampled. In the other tar order it
    // comes first and the next entry breaks the sorted order, so it is the
    // only file spooled before the rest are known. `ymid` spans several
    // chunks; `zlink` links to a file that is not spooled.
    let big = puzzle_testkit::pseudo_random(5, 1_500_000);
    let mid = puzzle_testkit::pseudo_random(6, 700_000);
    let files = random_files(60, 200, (3_000, 1_700), |i| format!("d{}/f{i:02}", i % 4));
    let entries = |sorted: bool, change: Option<usize>| -> Vec<Entry> {
        let mut named: Vec<(String, Entry)> = vec![("zbig".into(), Entry::file("zbig", &big))];
        named.push(("ymid".into(), Entry::file("ymid", &mid)));
        named.extend((0..4).map(|d| (format!("d{d}"), Entry::dir(format!("d{d}")))));
        named.extend(files.iter().enumerate().map(|(i, (n, c))| {
            let e = match change {
                Some(j) if j == i => Entry::file(n, puzzle_testkit::pseudo_random(999, c.len())),
                _ => Entry::file(n, c),
            };
            (n.clone(), e)
        }));
        if sorted {
            named.sort_by(|x, y| x.0.cmp(&y.0));
        } else {
            named[1..].reverse();
        }
        named.push(("zlink".into(), Entry::hardlink("zlink", "d3/f59")));
        named.into_iter().map(|(_, e)| e).collect()
    };
    let images = [
        ("a", entries(true, None)),
        ("twin", entries(false, None)),
        ("near", entries(false, Some(30))),
    ];
    for (tag, e) in &images {
        Image::new()
            .layer(e, Compression::Gzip)
            .write_oci_layout(&layout, tag)
            .unwrap();
    }
    let src = |tag: &str| format!("oci:{}:{tag}", layout.display());
    let store = t.join("store");
    let a = build(&store, &src("a"), "a");
    assert_eq!(a.bytes_spooled, a.bytes_chunked, "nothing known yet");

    let twin = build(&store, &src("twin"), "twin");
    assert_eq!(twin.bytes_chunked, a.bytes_chunked);
    assert_eq!(twin.bytes_spooled, big.len() as u64, "only the first file");
    assert_eq!(twin.new_chunk_bytes, 0);

    let near = build(&store, &src("near"), "near");
    let changed = files[30].1.len() as u64;
    assert_eq!(near.bytes_spooled, big.len() as u64 + changed);
    assert!(near.new_chunk_bytes > 0 && near.new_chunk_bytes < a.new_chunk_bytes / 4);
    // The same extents as chunking the near twin in a store of its own.
    let fresh = build(&t.join("fresh"), &src("near"), "near");
    assert_eq!(fresh.bytes_spooled, fresh.bytes_chunked);
    assert_eq!(extents(&store, "near"), extents(&t.join("fresh"), "near"));
    ok(puzzle(&store).args(["verify", "--full"]));
    for (tag, dir) in [("twin", "xt"), ("near", "xn")] {
        extract(&store, tag, &t.join(dir));
    }
    extract(&t.join("fresh"), "near", &t.join("xf"));
    assert_same_tree(&t.join("xf"), &t.join("xn"));
    extract(&store, "a", &t.join("xa"));
    assert_same_tree(&t.join("xa"), &t.join("xt"));
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(t.join(p)).unwrap().ino();
    assert_eq!(ino("xt/zlink"), ino("xt/d3/f59"));

    // Once their layers' records go, so do the samples naming them.
    let sample = || {
        let s = puzzle_store::Store::open(&store).unwrap();
        let index = puzzle_store::index::ChunkIndex::open(&s).unwrap();
        let big = puzzle_store::tree::FileDigest::of(&big);
        index.sample(&big).unwrap()
    };
    assert!(sample().is_some());
    ok(puzzle(&store).args(["rm", "a", "twin", "near"]));
    ok(puzzle(&store).arg("gc"));
    assert_eq!(sample(), None);
}

/// Which name of a hard-link group carries the data depends on the tar
/// writer's directory walk; it must not move content in the chunk stream.
#[test]
fn hard_link_data_owner_does_not_change_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let data = puzzle_testkit::pseudo_random(3, 300_000);
    let around = |n: &str, s| Entry::file(n, puzzle_testkit::pseudo_random(s, 200_000));
    let first = [
        Entry::dir("a"),
        Entry::dir("b"),
        around("a/0", 10),
        Entry::file("a/x", &data),
        around("a/z", 11),
        Entry::hardlink("b/y", "a/x"),
    ];
    let second = [
        Entry::dir("b"),
        Entry::file("b/y", &data),
        Entry::dir("a"),
        around("a/z", 11),
        Entry::hardlink("a/x", "b/y"),
        around("a/0", 10),
    ];
    Image::new()
        .layer(&first, Compression::Gzip)
        .write_oci_layout(&layout, "one")
        .unwrap();
    Image::new()
        .layer(&second, Compression::Gzip)
        .write_oci_layout(&layout, "two")
        .unwrap();
    let store = t.join("store");
    let one = build(&store, &format!("oci:{}:one", layout.display()), "one");
    let two = build(&store, &format!("oci:{}:two", layout.display()), "two");
    assert!(one.new_chunk_bytes >= 700_000);
    assert_eq!(two.new_chunk_bytes, 0);
    extract(&store, "one", &t.join("x1"));
    extract(&store, "two", &t.join("x2"));
    assert_same_tree(&t.join("x1"), &t.join("x2"));
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(t.join(p)).unwrap().ino();
    assert_eq!(ino("x2/a/x"), ino("x2/b/y"));
}

/// Builds `img`, extracts it and compares with `umoci unpack`; returns the
/// extracted tree's directory (inside `t`).
fn matches_umoci(t: &Path, name: &str, img: Image) -> std::path::PathBuf {
    let layout = t.join(format!("{name}-layout"));
    img.write_oci_layout(&layout, name).unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:{name}", layout.display()), name);
    let out = t.join(format!("{name}-x"));
    extract(&store, name, &out);
    if have("umoci") {
        let rootfs = umoci_unpack(&layout, name, &t.join(format!("{name}-bundle"))).unwrap();
        assert_same_tree(&rootfs, &out);
    }
    out
}

/// Hard links name what their target path held at that point of the tar,
/// like umoci: later entries at the target path replace only that name.
#[test]
fn hard_links_follow_tar_order() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();

    // One layer: `a`="X", `b` -> `a`, then `a`="Y": b keeps "X".
    let x = matches_umoci(
        t,
        "same-layer",
        Image::new().layer(
            &[
                Entry::file("a", b"X"),
                Entry::hardlink("b", "a"),
                Entry::file("a", b"Y"),
            ],
            Compression::Gzip,
        ),
    );
    assert_eq!(std::fs::read(x.join("b")).unwrap(), b"X");
    assert_eq!(std::fs::read(x.join("a")).unwrap(), b"Y");

    // Two layers: `b` -> lower `a`, then a new `a`: b keeps the lower data.
    let x = matches_umoci(
        t,
        "lower",
        Image::new()
            .layer(&[Entry::file("a", b"old")], Compression::Gzip)
            .layer(
                &[Entry::hardlink("b", "a"), Entry::file("a", b"new")],
                Compression::Gzip,
            ),
    );
    assert_eq!(std::fs::read(x.join("b")).unwrap(), b"old");
    assert_eq!(std::fs::read(x.join("a")).unwrap(), b"new");

    // `b` -> lower `a`, then `.wh.a`: b keeps the data, a is gone.
    let x = matches_umoci(
        t,
        "whiteout",
        Image::new()
            .layer(&[Entry::file("a", b"kept")], Compression::Gzip)
            .layer(
                &[Entry::hardlink("b", "a"), Entry::whiteout("a")],
                Compression::Gzip,
            ),
    );
    assert_eq!(std::fs::read(x.join("b")).unwrap(), b"kept");
    assert!(!x.join("a").exists());

    // A link group whose data name is replaced keeps one inode for the rest.
    let x = matches_umoci(
        t,
        "group",
        Image::new().layer(
            &[
                Entry::dir("d"),
                Entry::file("d/m", b"X"),
                Entry::hardlink("d/z", "d/m"),
                Entry::hardlink("d/c", "d/z"),
                Entry::file("d/m", b"Y"),
                Entry::hardlink("d/n", "d/m"),
            ],
            Compression::Gzip,
        ),
    );
    assert_eq!(std::fs::read(x.join("d/c")).unwrap(), b"X");
    assert_eq!(ino(&x.join("d/c")), ino(&x.join("d/z")));
    assert_eq!(ino(&x.join("d/m")), ino(&x.join("d/n")));
    assert_ne!(ino(&x.join("d/c")), ino(&x.join("d/m")));
}

/// Tar order: a later non-directory at a path replaces the directory the
/// layer put there before, with everything under it (umoci does the same).
#[test]
fn later_file_replaces_directory_of_same_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let x = matches_umoci(
        t,
        "dir-then-file",
        Image::new()
            .layer(
                &[Entry::dir("d"), Entry::file("d/low", b"l")],
                Compression::Gzip,
            )
            .layer(
                &[
                    Entry::dir("d"),
                    Entry::file("d/x", b"x"),
                    Entry::hardlink("keep", "d/x"),
                    Entry::file("d", b"file"),
                ],
                Compression::Gzip,
            ),
    );
    assert_eq!(std::fs::read(x.join("d")).unwrap(), b"file");
    assert_eq!(std::fs::read(x.join("keep")).unwrap(), b"x");
}
