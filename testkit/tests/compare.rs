//! `compare_trees` must find every kind of difference: a comparator that
//! cannot fail proves nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use puzzle_testkit::{compare_trees, CompareOpts, Differences, Entry, Field};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};
use tempfile::TempDir;

use crate::reference::apply_layers;

const STRICT: CompareOpts = CompareOpts {
    dir_mtimes: true,
    mtime_nsec: true,
};

fn entries() -> Vec<Entry> {
    vec![
        Entry::file("f", "hello world").mtime(1000, 500),
        Entry::file("g", "other").mtime(1000, 0),
        Entry::dir("d").mtime(2000, 0),
        Entry::file("d/x", "x"),
        Entry::symlink("s", "f"),
        Entry::file("h1", "linked"),
        Entry::hardlink("h2", "h1"),
        Entry::char_dev("c", 1, 3),
        Entry::file("xa", "with xattr").xattr("user.a", "1"),
        Entry::file(b"n\xff", "non-utf-8 name"),
    ]
}

/// Two identical trees: (tempdir, expected, actual).
fn pair() -> (TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let e = tmp.path().join("expected");
    let a = tmp.path().join("actual");
    apply_layers(&e, &[entries()]);
    apply_layers(&a, &[entries()]);
    (tmp, e, a)
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Runs the comparison after `mutate(actual)` and returns the differences.
fn diffs_after(opts: &CompareOpts, mutate: impl FnOnce(&Path)) -> Vec<(Vec<u8>, Field)> {
    let (_tmp, e, a) = pair();
    mutate(&a);
    // Adding or removing names in the root moved its mtime: put it back.
    set_mtime(&a, 0, 0);
    match compare_trees(&e, &a, opts) {
        Ok(()) => Vec::new(),
        Err(Differences(d)) => d.into_iter().map(|d| (d.path, d.field)).collect(),
    }
}

fn one(path: &str, field: Field) -> Vec<(Vec<u8>, Field)> {
    vec![(path.as_bytes().to_vec(), field)]
}

#[test]
fn identical_trees_compare_equal() {
    let (_tmp, e, a) = pair();
    compare_trees(&e, &a, &STRICT).unwrap();
}

#[test]
fn finds_mode() {
    let d = diffs_after(&STRICT, |a| {
        fs::set_permissions(a.join("f"), fs::Permissions::from_mode(0o4644)).unwrap();
    });
    assert_eq!(d, one("f", Field::Mode));
}

#[test]
fn finds_owner() {
    let d = diffs_after(&STRICT, |a| {
        std::os::unix::fs::lchown(a.join("s"), Some(5), Some(6)).unwrap();
    });
    assert_eq!(
        d,
        vec![(b"s".to_vec(), Field::Uid), (b"s".to_vec(), Field::Gid)]
    );
}

#[test]
fn finds_content_of_same_size() {
    let d = diffs_after(&STRICT, |a| {
        fs::write(a.join("f"), "hello World").unwrap();
        set_mtime(&a.join("f"), 1000, 500);
    });
    assert_eq!(d, one("f", Field::Content));
}

#[test]
fn finds_size() {
    let d = diffs_after(&STRICT, |a| {
        fs::write(a.join("g"), "other!").unwrap();
        set_mtime(&a.join("g"), 1000, 0);
    });
    assert_eq!(d, one("g", Field::Size));
}

#[test]
fn finds_symlink_target() {
    let d = diffs_after(&STRICT, |a| {
        let s = a.join("s");
        fs::remove_file(&s).unwrap();
        std::os::unix::fs::symlink("g", &s).unwrap();
        set_mtime(&s, puzzle_testkit::DEFAULT_MTIME as i64, 0);
    });
    assert_eq!(d, one("s", Field::Target));
}

#[test]
fn finds_xattr_value_added_and_removed() {
    let d = diffs_after(&STRICT, |a| {
        xattr::set(a.join("xa"), "user.a", b"2").unwrap();
        xattr::set(a.join("f"), "user.new", b"").unwrap();
        xattr::set(a.join("d"), "trusted.t", b"t").unwrap();
    });
    assert_eq!(
        d,
        vec![
            (b"d".to_vec(), Field::Xattr("trusted.t".into())),
            (b"f".to_vec(), Field::Xattr("user.new".into())),
            (b"xa".to_vec(), Field::Xattr("user.a".into())),
        ]
    );
    let d = diffs_after(&STRICT, |a| {
        xattr::remove(a.join("xa"), "user.a").unwrap();
    });
    assert_eq!(d, one("xa", Field::Xattr("user.a".into())));
}

#[test]
fn finds_broken_and_extra_hard_links() {
    // h2 becomes a copy: same bytes and metadata, different inode.
    let d = diffs_after(&STRICT, |a| {
        let h2 = a.join("h2");
        fs::remove_file(&h2).unwrap();
        fs::copy(a.join("h1"), &h2).unwrap();
        set_mtime(&h2, puzzle_testkit::DEFAULT_MTIME as i64, 0);
    });
    assert_eq!(
        d,
        vec![
            (b"h1".to_vec(), Field::LinkGroup),
            (b"h2".to_vec(), Field::LinkGroup)
        ]
    );
    // g becomes a third name of h1 (same contents needed to isolate the
    // link-group check, so h1 is rewritten in both trees first).
    let (_tmp, e, a) = pair();
    fs::write(a.join("g"), "hello").unwrap();
    fs::write(e.join("g"), "hello").unwrap();
    fs::write(a.join("h1"), "hello").unwrap();
    fs::write(e.join("h1"), "hello").unwrap();
    fs::remove_file(a.join("g")).unwrap();
    fs::hard_link(a.join("h1"), a.join("g")).unwrap();
    for t in [&e, &a] {
        for n in ["g", "h1"] {
            fs::set_permissions(t.join(n), fs::Permissions::from_mode(0o644)).unwrap();
            set_mtime(&t.join(n), 7, 0);
        }
    }
    set_mtime(&a, 0, 0);
    let d = compare_trees(&e, &a, &STRICT).unwrap_err();
    let got: Vec<_> = d
        .iter()
        .map(|d| (d.path.clone(), d.field.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (b"g".to_vec(), Field::LinkGroup),
            (b"h1".to_vec(), Field::LinkGroup),
            (b"h2".to_vec(), Field::LinkGroup),
        ]
    );
}

#[test]
fn finds_rdev() {
    let d = diffs_after(&STRICT, |a| {
        let c = a.join("c");
        fs::remove_file(&c).unwrap();
        let dev = rustix::fs::makedev(1, 5);
        rustix::fs::mknodat(
            CWD,
            &c,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o644),
            dev,
        )
        .unwrap();
        fs::set_permissions(&c, fs::Permissions::from_mode(0o644)).unwrap();
        set_mtime(&c, puzzle_testkit::DEFAULT_MTIME as i64, 0);
    });
    assert_eq!(d, one("c", Field::Rdev));
}

#[test]
fn finds_mtime_seconds_and_nanoseconds() {
    let d = diffs_after(&STRICT, |a| set_mtime(&a.join("f"), 1001, 500));
    assert_eq!(d, one("f", Field::Mtime));
    let d = diffs_after(&STRICT, |a| set_mtime(&a.join("s"), 1, 0));
    assert_eq!(d, one("s", Field::Mtime));

    let nsec_only = |a: &Path| set_mtime(&a.join("f"), 1000, 501);
    assert_eq!(diffs_after(&STRICT, nsec_only), one("f", Field::Mtime));
    let seconds = CompareOpts {
        dir_mtimes: true,
        mtime_nsec: false,
    };
    assert_eq!(diffs_after(&seconds, nsec_only), vec![]);
}

#[test]
fn directory_mtimes_only_when_asked() {
    let touch_dir = |a: &Path| set_mtime(&a.join("d"), 2001, 0);
    assert_eq!(diffs_after(&STRICT, touch_dir), one("d", Field::Mtime));
    let no_dirs = CompareOpts {
        dir_mtimes: false,
        mtime_nsec: true,
    };
    assert_eq!(diffs_after(&no_dirs, touch_dir), vec![]);
    // The root is a directory like the others.
    let (_tmp, e, a) = pair();
    set_mtime(&a, 5, 0);
    let d = compare_trees(&e, &a, &STRICT).unwrap_err();
    assert!(d.has(b"", &Field::Mtime) && d.len() == 1, "{d}");
    assert!(d
        .to_string()
        .contains(".: mtime: expected 0.000000000, actual 5.000000000"));
}

#[test]
fn finds_type_missing_and_extra_without_listing_descendants() {
    let d = diffs_after(&STRICT, |a| {
        fs::remove_file(a.join("g")).unwrap();
        fs::create_dir(a.join("g")).unwrap();
        fs::write(a.join("g/inside"), "").unwrap();
        fs::remove_dir_all(a.join("d")).unwrap();
        fs::write(a.join("new"), "").unwrap();
    });
    assert_eq!(
        d,
        vec![
            (b"d".to_vec(), Field::Missing),
            (b"g".to_vec(), Field::Type),
            (b"new".to_vec(), Field::Extra),
        ]
    );
}

#[test]
fn non_utf8_paths_are_compared_and_shown() {
    let (_tmp, e, a) = pair();
    use std::os::unix::ffi::OsStrExt;
    let p = a.join(std::ffi::OsStr::from_bytes(b"n\xff"));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let d = compare_trees(&e, &a, &STRICT).unwrap_err();
    assert!(d.has(b"n\xff", &Field::Mode));
    let shown = d.to_string();
    assert!(
        shown.contains("n\\xff: mode: expected 0644, actual 0600"),
        "{shown}"
    );
}

#[test]
fn display_lists_the_first_fifty() {
    let (_tmp, e, a) = pair();
    for i in 0..60 {
        fs::write(a.join(format!("extra{i:02}")), "").unwrap();
    }
    set_mtime(&a, 0, 0);
    let d = compare_trees(&e, &a, &STRICT).unwrap_err();
    assert_eq!(d.len(), 60);
    let shown = d.to_string();
    assert!(shown.starts_with("60 differences"), "{shown}");
    assert!(shown.contains("extra49: extra: expected nothing, actual file"));
    assert!(!shown.contains("extra50"));
    assert!(shown.contains("... and 10 more"));
}
