//! Entries whose parent path goes through a symlink (issue 16): placed where
//! `umoci unpack` places them, the symlink resolved inside the image root,
//! in extract, mount and export alike; hostile targets never leave the
//! target.
//!
//! What umoci 0.4.7 does (observed; `;` separates the lower and the upper
//! layer, `usr/lib` exists below unless said):
//!
//! | image | `umoci unpack` | puzzle |
//! |---|---|---|
//! | `lib -> usr/lib` ; `lib/x` | `usr/lib/x` | same |
//! | `lib -> /usr/lib` ; `lib/x` | `usr/lib/x` | same |
//! | `lib -> usr/lib`, no `usr` ; `lib/x` | creates `usr/lib/x` | same |
//! | `a -> b`, `b -> c/d` ; `a/x` | `c/d/x` | same |
//! | `usr/lib64 -> lib` ; `usr/lib64/x` | `usr/lib/x` | same |
//! | `share -> lib/../share` ; `share/x` | `usr/share/x` (`..` after `lib` is followed) | same |
//! | one layer: `lib -> usr/lib`, `lib/x`, `lib/sub/y` | under `usr/lib` | same |
//! | `r -> /` ; `r/etc/x` | `etc/x` | same |
//! | `a/up -> ../../..` ; `a/up/x` | `x` (`..` stops at the root) | same |
//! | `escape -> /../../tmp` ; `escape/evil` | `tmp/evil` | same |
//! | chains of 41 and 255 symlinks ; `c0/x` | resolved | same |
//! | a chain of 256, `a -> b -> a`, `a -> a/b`, `tmp -> /../../tmp` | fails: too many levels of symbolic links | fails naming the entry |
//! | `s -> f`, a file ; `s/x` | fails: mkdir parent: not a directory | fails naming the entry |
//! | `l ->` a 4,096-byte target ; `l/y` | fails (Linux holds no such symlink) | fails naming the entry |
//! | `lib/.wh.old` | removes `usr/lib/old` | same |
//! | `lib/.wh..wh..opq`, `lib/new` | empties `usr/lib`, then `usr/lib/new` | same |
//! | hard link `h` to `lib/old` | `h` links `usr/lib/old` | same |
//! | hard link `lib/h` to `usr/lib/old` | `usr/lib/h` | same |
//! | a whiteout or hard link through `a -> b -> a` | fails | fails naming the entry |
//! | one layer: `lib -> usr/lib`, `usr/lib/x`, `lib/x` | the later in tar order | the later in path order (differs) |
//! | one layer: `lib -> usr/lib`, `usr/lib/n`, hard link `h` to `lib/n` | links | refused (differs) |
//! | `lib -> usr/lib`, `lib/.wh.old` in one layer | removes the lower `usr/lib/old` | keeps it (differs) |
//!
//! The last three depend on tar order within one layer, which a converted
//! layer no longer has (README, "Limitations").

use std::path::Path;

use puzzle_testkit::{bad, layer_tar, umoci_unpack, Compression, Entry, Image};

use crate::util::*;

/// One image: its layer tars, bottom first.
struct Case {
    name: &'static str,
    layers: Vec<Vec<u8>>,
}

/// A case of layers whose entries are written in the order given.
fn case(name: &'static str, layers: Vec<Vec<Entry>>) -> Case {
    Case {
        name,
        layers: layers.iter().map(|l| layer_tar(l)).collect(),
    }
}

fn usr_lib() -> Vec<Entry> {
    vec![
        Entry::dir("usr"),
        Entry::dir("usr/lib"),
        Entry::file("usr/lib/old", "old\n"),
    ]
}

fn with(mut a: Vec<Entry>, b: Vec<Entry>) -> Vec<Entry> {
    a.extend(b);
    a
}

/// A chain `c0 -> c1 -> ... -> c{n} -> d` of `n + 1` symlinks, and `c0/x`.
fn chain(n: usize) -> Vec<Vec<Entry>> {
    let mut lower = vec![Entry::dir("d")];
    for i in 0..n {
        lower.push(Entry::symlink(format!("c{i}"), format!("c{}", i + 1)));
    }
    lower.push(Entry::symlink(format!("c{n}"), "d"));
    vec![lower, vec![Entry::file("c0/x", "end of the chain\n")]]
}

/// Images umoci unpacks: puzzle must give the same tree.
fn resolved_cases() -> Vec<Case> {
    let x = || Entry::file("lib/x", "x\n");
    vec![
        case(
            "lower-relative",
            vec![
                with(usr_lib(), vec![Entry::symlink("lib", "usr/lib")]),
                vec![x()],
            ],
        ),
        case(
            "lower-absolute",
            vec![
                with(usr_lib(), vec![Entry::symlink("lib", "/usr/lib")]),
                vec![x()],
            ],
        ),
        case(
            "lower-dangling",
            vec![vec![Entry::symlink("lib", "usr/lib")], vec![x()]],
        ),
        case(
            "chained",
            vec![
                vec![
                    Entry::symlink("a", "b"),
                    Entry::symlink("b", "c/d"),
                    Entry::dir("c"),
                    Entry::dir("c/d").mode(0o700),
                ],
                vec![Entry::file("a/x", "via a and b\n")],
            ],
        ),
        case(
            "nested-relative",
            vec![
                with(usr_lib(), vec![Entry::symlink("usr/lib64", "lib")]),
                vec![Entry::file("usr/lib64/x", "x\n")],
            ],
        ),
        case(
            "dotdot-after-symlink",
            vec![
                with(
                    usr_lib(),
                    vec![
                        Entry::symlink("lib", "usr/lib"),
                        Entry::symlink("share", "lib/../share"),
                    ],
                ),
                vec![Entry::file("share/x", "x\n")],
            ],
        ),
        case(
            "same-layer",
            vec![with(
                usr_lib(),
                vec![
                    Entry::symlink("lib", "usr/lib"),
                    x(),
                    Entry::dir("lib/sub").mode(0o750),
                    Entry::file("lib/sub/y", "y\n"),
                ],
            )],
        ),
        case(
            "deep-parent",
            vec![
                with(usr_lib(), vec![Entry::symlink("lib", "usr/lib")]),
                vec![Entry::file("lib/a/b/c", "deep\n")],
            ],
        ),
        case(
            "to-root",
            vec![
                vec![Entry::dir("etc"), Entry::symlink("r", "/")],
                vec![Entry::file("r/etc/x", "at the root\n")],
            ],
        ),
        case(
            "dotdot-escape",
            vec![
                vec![Entry::dir("a"), Entry::symlink("a/up", "../../..")],
                vec![Entry::file("a/up/x", "at the root\n")],
            ],
        ),
        case(
            "absolute-escape",
            vec![
                vec![Entry::symlink("escape", "/../../tmp")],
                vec![Entry::file("escape/evil", "inside\n")],
            ],
        ),
        // bad.rs's hostile tars: `link -> /tmp` or `..`, then `link/evil`.
        Case {
            name: "link-to-tmp",
            layers: vec![bad::symlink_escape_tar(b"/tmp")],
        },
        Case {
            name: "link-up",
            layers: vec![bad::symlink_escape_tar(b"..")],
        },
        // Linux gives up after 40 symlinks, umoci after 255.
        case("chain-40", chain(40)),
        case("chain-254", chain(254)),
        case(
            "whiteout-through",
            vec![
                with(
                    usr_lib(),
                    vec![
                        Entry::file("usr/lib/keep", "k\n"),
                        Entry::symlink("lib", "usr/lib"),
                    ],
                ),
                vec![Entry::whiteout("lib/old")],
            ],
        ),
        case(
            "opaque-through",
            vec![
                with(usr_lib(), vec![Entry::symlink("lib", "usr/lib")]),
                vec![Entry::opaque("lib"), Entry::file("lib/new", "n\n")],
            ],
        ),
        case(
            "hardlink-target-through",
            vec![
                with(usr_lib(), vec![Entry::symlink("lib", "usr/lib")]),
                vec![Entry::hardlink("h", "lib/old")],
            ],
        ),
        case(
            "hardlink-path-through",
            vec![
                with(usr_lib(), vec![Entry::symlink("lib", "usr/lib")]),
                vec![Entry::hardlink("lib/h", "usr/lib/old")],
            ],
        ),
        case(
            "replaced-by-symlink",
            vec![
                with(
                    usr_lib(),
                    vec![Entry::dir("lib"), Entry::file("lib/y", "y\n")],
                ),
                vec![Entry::symlink("lib", "usr/lib"), x()],
            ],
        ),
    ]
}

/// Images umoci refuses: puzzle must refuse them too, naming the entry
/// (the second field: a path in the last layer).
fn refused_cases() -> Vec<(Case, &'static str)> {
    let looped = || vec![Entry::symlink("a", "b"), Entry::symlink("b", "a")];
    vec![
        (
            case("loop", vec![looped(), vec![Entry::file("a/x", "x\n")]]),
            "/a/x",
        ),
        (
            case(
                "self-loop",
                vec![
                    vec![Entry::symlink("a", "a/b")],
                    vec![Entry::file("a/x", "x\n")],
                ],
            ),
            "/a/x",
        ),
        (case("chain-255", chain(255)), "/c0/x"),
        (
            // `/tmp` in the root is the symlink itself.
            case(
                "absolute-loop",
                vec![
                    vec![Entry::symlink("tmp", "/../../tmp")],
                    vec![Entry::file("tmp/evil", "x\n")],
                ],
            ),
            "/tmp/evil",
        ),
        (
            case(
                "whiteout-loop",
                vec![looped(), vec![Entry::whiteout("a/x")]],
            ),
            "/a/x",
        ),
        (
            case(
                "hardlink-loop",
                vec![looped(), vec![Entry::hardlink("h", "a/x")]],
            ),
            "/h",
        ),
        (
            case(
                "to-file",
                vec![
                    vec![Entry::file("f", "f\n"), Entry::symlink("s", "f")],
                    vec![Entry::file("s/x", "x\n")],
                ],
            ),
            "/s/x",
        ),
        (
            // Linux holds no symlink target of 4096 bytes or more.
            case(
                "long-target",
                vec![
                    vec![
                        Entry::dir("d"),
                        Entry::symlink("l", format!("d/{}", "x/".repeat(2047))),
                    ],
                    vec![Entry::file("l/y", "y\n")],
                ],
            ),
            "/l/y",
        ),
    ]
}

fn write(c: &Case, layout: &Path) {
    let mut img = Image::new();
    for l in &c.layers {
        img = img.raw_layer(l.clone(), Compression::Gzip);
    }
    img.write_oci_layout(layout, c.name).unwrap();
}

/// Every resolved case extracts, mounts and exports as `umoci unpack`
/// unpacks it, and nothing is written outside the target.
#[test]
fn symlinked_parents_resolve_as_umoci_does() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (layout, store, out) = (t.join("layout"), t.join("store"), t.join("out"));
    for d in ["x", "umoci", "again"] {
        std::fs::create_dir_all(out.join(d)).unwrap();
    }
    let mount = crate::mount::can_mount();
    let umoci = have("umoci");
    for c in resolved_cases() {
        write(&c, &layout);
        build(
            &store,
            &format!("oci:{}:{}", layout.display(), c.name),
            c.name,
        );
        let x = out.join("x").join(c.name);
        extract(&store, c.name, &x);
        if !umoci {
            continue;
        }
        let rootfs = umoci_unpack(&layout, c.name, &out.join("umoci").join(c.name)).unwrap();
        assert_same_tree(&rootfs, &x);
        if mount {
            let mut m =
                crate::mount::Mount::new(&store, c.name, &out.join("mnt").join(c.name), &[]);
            assert_same_tree(&rootfs, &m.dir);
            m.umount();
        }
        // The export's layers apply as the originals did.
        let exported = out.join("export");
        ok(puzzle(&store).arg("export").arg(c.name).arg(format!(
            "oci:{}:{}",
            exported.display(),
            c.name
        )));
        let again = umoci_unpack(&exported, c.name, &out.join("again").join(c.name)).unwrap();
        assert_same_tree(&rootfs, &again);
    }
    // The escapes landed inside the image.
    let x = out.join("x");
    for (case, inside) in [
        ("to-root", "etc/x"),
        ("dotdot-escape", "x"),
        ("absolute-escape", "tmp/evil"),
        ("link-to-tmp", "tmp/evil"),
        ("link-up", "evil"),
        ("lower-relative", "usr/lib/x"),
        ("chained", "c/d/x"),
    ] {
        assert!(x.join(case).join(inside).is_file(), "{case}: no {inside}");
    }
    let mut top: Vec<_> = std::fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["layout", "out", "store"],
        "written next to the targets"
    );
    for outside in ["/tmp/evil", "/x", "/evil"] {
        assert!(!Path::new(outside).exists(), "{outside} was written");
    }
}

/// What umoci refuses (symlink loops, over 255 symlinks, a parent that is
/// a file) puzzle refuses in one line naming the entry.
#[test]
fn unresolvable_parents_are_refused_as_umoci_refuses_them() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (layout, store) = (t.join("layout"), t.join("store"));
    let umoci = have("umoci");
    for (c, entry) in refused_cases() {
        write(&c, &layout);
        let r = run(puzzle(&store).args(["build", "--tag", c.name]).arg(format!(
            "oci:{}:{}",
            layout.display(),
            c.name
        )));
        assert_eq!(r.code, 1, "{}: {}", c.name, r.stderr);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}: {}", c.name, r.stderr);
        assert!(
            lines[0].contains("layer 2 (sha256:"),
            "{}: {}",
            c.name,
            lines[0]
        );
        assert!(
            lines[0].contains(&format!("entry {entry}: ")),
            "{}: {}",
            c.name,
            lines[0]
        );
        let why = match c.name {
            "to-file" => "parent /f is not a directory",
            "long-target" => "target is over 4095 bytes",
            _ => "more than 255 symlinks",
        };
        assert!(lines[0].contains(why), "{}: {}", c.name, lines[0]);
        if umoci {
            let bundle = t.join("umoci").join(c.name);
            assert!(
                umoci_unpack(&layout, c.name, &bundle).is_err(),
                "{}: umoci unpacks it",
                c.name
            );
        }
    }
    assert!(!Path::new("/tmp/evil").exists());
}
