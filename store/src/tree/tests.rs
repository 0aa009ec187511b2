//! Unit tests of the layer model and flattening.

use super::*;

fn file(path: &str, size: u64) -> LayerEntry {
    LayerEntry::Node {
        path: path.into(),
        node: Node::File {
            size,
            extents: vec![],
            digest: FileDigest::default(),
        },
        meta: Meta::default(),
    }
}
fn dir(path: &str, mode: u32) -> LayerEntry {
    LayerEntry::Node {
        path: path.into(),
        node: Node::Dir,
        meta: Meta {
            mode,
            ..Meta::default()
        },
    }
}
fn symlink(path: &str, target: &str) -> LayerEntry {
    LayerEntry::Node {
        path: path.into(),
        node: Node::Symlink(target.into()),
        meta: Meta::default(),
    }
}
fn layer(mut entries: Vec<LayerEntry>, wh: &[&str], opq: &[&str]) -> Layer {
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    Layer {
        entries,
        whiteouts: wh.iter().map(|s| s.as_bytes().to_vec()).collect(),
        opaques: opq.iter().map(|s| s.as_bytes().to_vec()).collect(),
    }
}
fn size(t: &Tree, p: &str) -> Option<u64> {
    match &t.inodes[t.lookup(p.as_bytes())?].kind {
        InodeKind::File { size, .. } => Some(*size),
        _ => None,
    }
}

#[test]
fn normalize() {
    assert_eq!(normalize_path(b"./a//b/./c/").unwrap(), b"a/b/c");
    assert_eq!(normalize_path(b"./").unwrap(), b"");
    assert_eq!(normalize_path(b".").unwrap(), b"");
    assert!(normalize_path(b"/etc/passwd").is_err());
    assert!(normalize_path(b"a/../../b").is_err());
    assert!(normalize_path(b"..").is_err());
    assert_eq!(normalize_path(b"a/..b").unwrap(), b"a/..b");
}

#[test]
fn whiteouts_opaques_and_replacement() {
    let mut t = Tree::new();
    t.apply(&layer(
        vec![
            dir("d", 0o755),
            file("d/x", 1),
            file("d/y", 2),
            dir("o", 0o700),
            file("o/old", 3),
            file("f", 4),
            dir("g", 0o755),
            file("g/inner", 5),
        ],
        &[],
        &[],
    ))
    .unwrap();
    t.apply(&layer(
        vec![
            file("o/new", 6),
            file("d/y", 7),
            dir("f", 0o711),
            file("f/z", 8),
            file("g", 9),
        ],
        &["d/x"],
        &["o"],
    ))
    .unwrap();
    assert_eq!(size(&t, "d/x"), None);
    assert_eq!(size(&t, "d/y"), Some(7));
    assert_eq!(size(&t, "o/old"), None, "opaque hides lower children");
    assert_eq!(
        size(&t, "o/new"),
        Some(6),
        "opaque keeps same-layer children"
    );
    assert_eq!(t.inodes[t.lookup(b"o").unwrap()].meta.mode, 0o700);
    assert_eq!(size(&t, "f/z"), Some(8), "file replaced by dir");
    assert_eq!(size(&t, "g"), Some(9), "dir replaced by file");
    assert_eq!(t.lookup(b"g/inner"), None);
    // Whiteout of a whole directory.
    t.apply(&layer(vec![], &["f"], &[])).unwrap();
    assert_eq!(t.lookup(b"f"), None);
    assert_eq!(t.lookup(b"f/z"), None);
    // A whiteout of something absent is harmless.
    t.apply(&layer(vec![], &["nope/x"], &[])).unwrap();
}

#[test]
fn hard_links_across_layers() {
    let mut t = Tree::new();
    t.apply(&layer(vec![file("a", 5)], &[], &[])).unwrap();
    t.apply(&layer(
        vec![LayerEntry::HardLink {
            path: b"b/link".to_vec(),
            target: b"a".to_vec(),
        }],
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(t.lookup(b"a"), t.lookup(b"b/link"));
    // Removing one name keeps the other.
    t.apply(&layer(vec![], &["a"], &[])).unwrap();
    assert_eq!(size(&t, "b/link"), Some(5));
    let err = Tree::new()
        .apply(&layer(
            vec![LayerEntry::HardLink {
                path: b"x".to_vec(),
                target: b"missing".to_vec(),
            }],
            &[],
            &[],
        ))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn lower_links_name_the_lower_tree() {
    let lower_link = |p: &str, t: &str| LayerEntry::LowerLink {
        path: p.into(),
        target: t.into(),
    };
    let mut t = Tree::new();
    t.apply(&layer(vec![file("a", 3), file("w", 4)], &[], &[]))
        .unwrap();
    // `b` -> lower `a` then a new `a`; `c` -> lower `w` then `.wh.w`.
    t.apply(&layer(
        vec![lower_link("b", "a"), file("a", 5), lower_link("c", "w")],
        &["w", "b"],
        &[],
    ))
    .unwrap();
    assert_eq!(size(&t, "a"), Some(5));
    assert_eq!(size(&t, "b"), Some(3), "b keeps the lower a");
    assert_ne!(t.lookup(b"a"), t.lookup(b"b"));
    assert_eq!(size(&t, "c"), Some(4), "c keeps the whited-out w");
    assert_eq!(t.lookup(b"w"), None);
    // In-layer links see this layer's entries.
    t.apply(&layer(
        vec![
            file("n", 6),
            LayerEntry::HardLink {
                path: b"m".to_vec(),
                target: b"n".to_vec(),
            },
        ],
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(t.lookup(b"m"), t.lookup(b"n"));
    // A lower link to something absent below is an error.
    let err = Tree::new()
        .apply(&layer(vec![lower_link("x", "y"), file("y", 1)], &[], &[]))
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn parents_through_symlinks_resolve_inside_the_root() {
    let lower = || {
        let mut t = Tree::new();
        t.apply(&layer(
            vec![
                dir("usr", 0o755),
                dir("usr/lib", 0o755),
                file("usr/lib/old", 1),
                file("usr/lib/keep", 2),
                symlink("lib", "usr/lib"),
                symlink("abs", "/usr/lib"),
                symlink("up", "../.."),
            ],
            &[],
            &[],
        ))
        .unwrap();
        t
    };
    let mut t = lower();
    t.apply(&layer(
        vec![
            file("lib/x", 3),
            file("abs/y", 4),
            file("up/etc/passwd", 5),
            file("lib/new/deep", 6),
            LayerEntry::LowerLink {
                path: b"lib/h".to_vec(),
                target: b"abs/keep".to_vec(),
            },
        ],
        &["lib/old"],
        &[],
    ))
    .unwrap();
    assert_eq!(size(&t, "usr/lib/x"), Some(3));
    assert_eq!(size(&t, "usr/lib/y"), Some(4));
    assert_eq!(size(&t, "etc/passwd"), Some(5), "`..` stops at the root");
    assert_eq!(size(&t, "usr/lib/new/deep"), Some(6));
    assert_eq!(t.lookup(b"usr/lib/old"), None, "whiteout through lib");
    assert_eq!(t.lookup(b"usr/lib/h"), t.lookup(b"usr/lib/keep"));
    assert!(matches!(
        t.inodes[t.lookup(b"lib").unwrap()].kind,
        InodeKind::Symlink(_)
    ));
    // An opaque marker through a symlink clears where it leads.
    let mut t = lower();
    t.apply(&layer(vec![file("lib/n", 7)], &[], &["lib"]))
        .unwrap();
    assert_eq!(t.lookup(b"usr/lib/keep"), None);
    assert_eq!(size(&t, "usr/lib/n"), Some(7));
    // The same layer's symlink serves as a parent too.
    let mut t = Tree::new();
    t.apply(&layer(
        vec![symlink("l", "/etc"), file("l/passwd", 1)],
        &[],
        &[],
    ))
    .unwrap();
    assert_eq!(size(&t, "etc/passwd"), Some(1));
}

#[test]
fn unresolvable_parents_are_refused_naming_the_entry() {
    let mut t = Tree::new();
    t.apply(&layer(
        vec![
            symlink("a", "b"),
            symlink("b", "a"),
            file("f", 1),
            symlink("s", "f"),
        ],
        &[],
        &[],
    ))
    .unwrap();
    let err = |t: &Tree, l: Layer| t.clone().apply(&l).unwrap_err().to_string();
    let e = err(&t, layer(vec![file("a/x", 1)], &[], &[]));
    assert!(
        e.contains("/a/x") && e.contains("more than 255 symlinks"),
        "{e}"
    );
    let e = err(&t, layer(vec![], &["a/x"], &[]));
    assert!(
        e.contains("/a/x") && e.contains("more than 255 symlinks"),
        "{e}"
    );
    let e = err(&t, layer(vec![], &[], &["b"]));
    assert!(
        e.contains("/b") && e.contains("more than 255 symlinks"),
        "{e}"
    );
    let link = LayerEntry::LowerLink {
        path: b"h".to_vec(),
        target: b"b/f".to_vec(),
    };
    let e = err(&t, layer(vec![link], &[], &[]));
    assert!(
        e.contains("/h") && e.contains("more than 255 symlinks"),
        "{e}"
    );
    let e = err(&t, layer(vec![file("s/x", 1)], &[], &[]));
    assert!(
        e.contains("/s/x") && e.contains("parent /f is not a directory"),
        "{e}"
    );
    let e = err(&t, layer(vec![file("f/x", 1)], &[], &[]));
    assert!(e.contains("parent /f is not a directory"), "{e}");
}

#[test]
fn a_directory_replaced_is_no_parent_any_more() {
    // Entries out of sorted order (no spooled layer has them so, a
    // record could): the parent found for a/b/x must not serve a/b/y
    // after a/b became a file; the same at the top level, where no
    // parent is walked to.
    for entries in [
        vec![file("a/b/x", 1), file("a/b", 2), file("a/b/y", 3)],
        vec![file("a/x", 1), file("a", 2), file("a/y", 3)],
    ] {
        let unsorted = Layer {
            entries,
            whiteouts: Vec::new(),
            opaques: Vec::new(),
        };
        let err = Tree::new().apply(&unsorted).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
    // Sorted siblings share their parent.
    let mut t = Tree::new();
    let siblings = (0..50).map(|i| file(&format!("d/e/f{i:02}"), i)).collect();
    t.apply(&layer(siblings, &[], &[])).unwrap();
    assert_eq!(size(&t, "d/e/f07"), Some(7));
    assert_eq!(t.children(t.lookup(b"d/e").unwrap()).unwrap().len(), 50);
}

#[test]
fn implicit_parents_and_order() {
    let mut t = Tree::new();
    t.apply(&layer(vec![file("a/b/c", 1), file("z", 1)], &[], &[]))
        .unwrap();
    let a = t.lookup(b"a").unwrap();
    assert_eq!(t.inodes[a].meta.mode, 0o755);
    let order = t.order();
    assert_eq!(order[0], Tree::ROOT);
    assert_eq!(order.len(), 5);
}

#[test]
fn record_round_trip() {
    let l = layer(
        vec![file("a", 3), symlink("s", "a"), dir("d", 0o1777)],
        &["w"],
        &["d"],
    );
    assert_eq!(Layer::from_record(&l.to_record()).unwrap(), l);
    assert!(Layer::from_record(&[9, 1, 2]).is_err());
    // A version-2 record (links not split by kind) is refused, not misread.
    let mut old = l.to_record();
    old[0] = 2;
    assert!(Layer::from_record(&old).is_err());
    // A version-3 record (plain postcard) is refused too.
    let mut v3 = vec![3];
    v3.extend(postcard::to_stdvec(&l).unwrap());
    assert!(Layer::from_record(&v3).is_err());
    assert!(Layer::from_record(&[]).is_err());
    // A damaged frame is an error, not a panic.
    let mut cut = l.to_record();
    cut.truncate(cut.len() - 3);
    assert!(Layer::from_record(&cut).is_err());
}
