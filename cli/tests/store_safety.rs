//! A store is created only where nothing is lost (issue 15): a foreign OCI
//! layout, a non-empty directory, a file, or a store that lost its
//! puzzle.json are refused and left byte-identical; `init --recover` restores
//! a lost puzzle.json from the manifests; reading commands work on a
//! read-only store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use puzzle_testkit::{Compression, Entry, Image};

use crate::mount::{can_mount, Mount};
use crate::util::*;

fn tiny(layout: &Path, tag: &str, body: &[u8]) -> String {
    Image::new()
        .layer(&[Entry::file("hello", body)], Compression::Gzip)
        .write_oci_layout(layout, tag)
        .unwrap();
    format!("oci:{}:{tag}", layout.display())
}

/// Every file under `dir` with its bytes (symlinks and directories by name).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(root, &p, out);
            } else if ft.is_file() {
                out.insert(rel, std::fs::read(&p).unwrap());
            } else {
                out.insert(rel, b"<other>".to_vec());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The one line a refused command prints, and its exit code.
fn refused(cmd: &mut Command) -> String {
    let r = run(cmd);
    assert_eq!(r.code, 4, "{cmd:?}: {}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", r.stderr);
    lines[0].to_string()
}

#[test]
fn skopeo_layout_as_store_is_refused_and_left_alone() {
    if !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = tiny(&t.join("src"), "one", b"hello\n");
    // A layout written by skopeo, with two tags.
    let lay = t.join("lay");
    for tag in ["a", "b"] {
        let st = Command::new("skopeo")
            .args(["copy", "-q"])
            .arg(&src)
            .arg(format!("oci:{}:{tag}", lay.display()))
            .status()
            .unwrap();
        assert!(st.success());
    }
    let before = snapshot(&lay);
    let line = refused(puzzle(&lay).args(["build", &src, "--tag", "x"]));
    assert_eq!(
        line,
        format!(
            "puzzle: error: {0} is an OCI layout that puzzle did not create, so puzzle will not \
             write to it: pass --store a new or empty directory (`puzzle build oci:{0}:TAG` \
             converts its images)",
            lay.display()
        )
    );
    for args in [&["gc"][..], &["gc", "--dry-run"], &["verify"], &["rm", "a"]] {
        refused(puzzle(&lay).args(args));
    }
    refused(puzzle(&lay).arg("init"));
    assert_eq!(snapshot(&lay), before, "the layout is byte-identical");
}

#[test]
fn non_empty_directory_or_file_is_not_made_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = tiny(&t.join("src"), "one", b"hello\n");
    let other = t.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"mine").unwrap();
    let line = refused(puzzle(&other).args(["build", &src, "--tag", "x"]));
    assert_eq!(
        line,
        format!(
            "puzzle: error: {} is not empty and not a puzzle store: pass --store a new or empty \
             directory, or a puzzle store",
            other.display()
        )
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);

    let file = t.join("file");
    std::fs::write(&file, b"x").unwrap();
    for args in [&["build", &src, "--tag", "x"][..], &["images"], &["init"]] {
        let line = refused(puzzle(&file).args(args));
        assert_eq!(
            line,
            format!(
                "puzzle: error: store {} is not a directory: pass --store a new or empty \
                 directory, or a puzzle store",
                file.display()
            )
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    // A file named lock does not make a directory a store.
    std::fs::write(other.join("lock"), b"").unwrap();
    let line = refused(puzzle(&other).args(["build", &src, "--tag", "x"]));
    assert!(
        line.contains("is not empty and not a puzzle store"),
        "{line}"
    );
    // A store path below a file.
    let line = refused(puzzle(&other.join("notes.txt/sub")).arg("images"));
    assert!(line.contains("is not a directory"), "{line}");

    // An empty directory (a fresh volume's root, with its lost+found) is
    // fine, and so is `init`.
    let empty = t.join("empty");
    std::fs::create_dir_all(empty.join("lost+found")).unwrap();
    build(&empty, &src, "x");
    let fresh = t.join("fresh");
    let r = ok(puzzle(&fresh).args([
        "init",
        "--chunk-avg",
        "16384",
        "--chunk-min",
        "4096",
        "--frame-target",
        "262144",
    ]));
    assert!(r.stderr.contains("16384"), "{}", r.stderr);
    assert!(r.stderr.contains("frames 262144"), "{}", r.stderr);
    // The store keeps its settings: a build without them uses them; other
    // settings given explicitly are refused.
    build(&fresh, &src, "x");
    let r = run(puzzle(&fresh).args([
        "build",
        &src,
        "--tag",
        "y",
        "--zstd-level",
        "9",
        "--frame-target",
        "1048576",
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "puzzle: error: store {} was created with other settings: --zstd-level 9 (the store \
             has 3), --frame-target 1048576 (the store has 262144); leave these options out to \
             use the store's own",
            fresh.display()
        )
    );
    // The store's own settings, given again, are accepted.
    build_with(
        &fresh,
        &src,
        "z",
        &[
            "--chunk-avg",
            "16384",
            "--zstd-level",
            "3",
            "--frame-target",
            "262144",
        ],
    );
}

#[test]
fn lost_puzzle_json_keeps_every_tag_and_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let a = tiny(&t.join("a"), "a", b"first\n");
    let b = tiny(&t.join("b"), "b", b"second\n");
    // A store with non-default settings, so that defaults would be wrong.
    ok(puzzle(&store).args([
        "init",
        "--chunk-avg",
        "16384",
        "--chunk-min",
        "4096",
        "--zstd-level",
        "7",
        "--frame-target",
        "131072",
    ]));
    build(&store, &a, "a:1");
    build(&store, &b, "b:1");
    let config = std::fs::read(store.join("puzzle.json")).unwrap();
    std::fs::remove_file(store.join("puzzle.json")).unwrap();
    let before = snapshot(&store);

    let line = refused(puzzle(&store).args(["build", &a, "--tag", "c:1"]));
    assert_eq!(
        line,
        format!(
            "puzzle: error: {0} is a puzzle store missing its puzzle.json: restore it from the \
             store's manifests with `puzzle init --recover {0}`",
            store.display()
        )
    );
    for args in [&["gc"][..], &["images"], &["init"]] {
        refused(puzzle(&store).args(args));
    }
    assert_eq!(snapshot(&store), before, "nothing written, every tag kept");

    let r = ok(puzzle(&store).args(["init", "--recover"]));
    assert!(r.stderr.contains("from 2 manifest(s)"), "{}", r.stderr);
    assert_eq!(std::fs::read(store.join("puzzle.json")).unwrap(), config);
    let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["a:1", "b:1"]);
    ok(puzzle(&store).arg("verify"));
    build(&store, &a, "c:1");
    // A damaged puzzle.json is refused the same way and recovered the same way.
    std::fs::write(store.join("puzzle.json"), b"").unwrap();
    let line = refused(puzzle(&store).arg("images"));
    assert_eq!(
        line,
        format!(
            "puzzle: error: {0}/puzzle.json is damaged: restore it from the store's manifests \
             with `puzzle init --recover {0}`",
            store.display()
        )
    );
    ok(puzzle(&store).args(["init", "--recover"]));
    assert_eq!(std::fs::read(store.join("puzzle.json")).unwrap(), config);
    // Nothing to recover in a store that has its config.
    let r = run(puzzle(&store).args(["init", "--recover"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to recover"), "{}", r.stderr);
}

/// A read-only bind mount of `src` at `dst`, removed on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(src: &Path, dst: &Path) -> ReadOnly {
        std::fs::create_dir_all(dst).unwrap();
        let st = Command::new("mount")
            .arg("--bind")
            .arg(src)
            .arg(dst)
            .status()
            .unwrap();
        assert!(st.success(), "bind mount");
        let ro = ReadOnly(dst.to_path_buf());
        let st = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dst)
            .status()
            .unwrap();
        assert!(st.success(), "remount read-only");
        ro
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn reading_commands_work_on_a_read_only_store() {
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let src = tiny(&t.join("src"), "one", b"hello\n");
    build(&store, &src, "x:1");
    // Garbage for the dry run to find: an image built and untagged.
    let other = tiny(&t.join("other"), "two", b"goodbye\n");
    build(&store, &other, "gone");
    ok(puzzle(&store).args(["rm", "gone"]));
    let ro = ReadOnly::new(&store, &t.join("ro"));
    let before = snapshot(&store);
    let warn = format!(
        "puzzle: warning: store {} is read-only here, so x:1 is not pinned: a gc run by \
         someone who can write could remove it while in use",
        ro.0.display()
    );

    assert_eq!(images(&ro.0).len(), 1);
    ok(puzzle(&ro.0).args(["stats", "--json"]));
    let r = ok(puzzle(&ro.0).arg("extract").arg("x:1").arg(t.join("out")));
    assert_eq!(r.stderr.lines().next(), Some(warn.as_str()), "{}", r.stderr);
    assert_eq!(std::fs::read(t.join("out/hello")).unwrap(), b"hello\n");
    let r = ok(puzzle(&ro.0).arg("verify"));
    assert!(
        r.stderr.contains("checking a copy of its index"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("0 problem(s)"), "{}", r.stderr);
    let r = run(puzzle(&ro.0).args(["verify", "--rebuild-index"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is read-only here"), "{}", r.stderr);
    // gc plans on a copy of the index: it sees the untagged image's blobs.
    let r = ok(puzzle(&ro.0).args(["gc", "--dry-run", "--json"]));
    assert!(
        r.stderr.contains("planning on a copy of its index"),
        "{}",
        r.stderr
    );
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["data"]["images"], 1, "{v}");
    assert!(v["data"]["blobs_removed"].as_u64().unwrap() >= 3, "{v}");
    // Writers say what is wrong in one line.
    for args in [&["build", &src, "--tag", "y"][..], &["gc"], &["rm", "x:1"]] {
        let r = run(puzzle(&ro.0).args(args));
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.trim_end(),
            format!(
                "puzzle: error: store {} is read-only here: this command writes to it; run it \
                 where the store is writable (images, stats, extract, mount, verify and gc \
                 --dry-run work read-only)",
                ro.0.display()
            )
        );
    }
    {
        let mut m = Mount::new(&ro.0, "x:1", &t.join("mnt"), &[]);
        assert_eq!(std::fs::read(m.dir.join("hello")).unwrap(), b"hello\n");
        m.umount();
    }
    assert_eq!(snapshot(&store), before, "nothing written to the store");
}

#[test]
fn another_user_reads_a_store_they_cannot_write() {
    use std::os::unix::fs::PermissionsExt;
    if !rustix::process::geteuid().is_root() {
        assert!(!require_tools(), "this test needs root (to run as nobody)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = t.join("store");
    let src = tiny(&t.join("src"), "one", b"hello\n");
    build(&store, &src, "x:1");
    let out = t.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    let nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_puzzle"))
            .arg("--store")
            .arg(&store)
            .arg("--no-progress")
            .args(args)
            .env_remove("PUZZLE_STORE");
        c
    };
    let r = ok(&mut nobody(&["images", "--json"]));
    assert!(r.stdout.contains("\"x:1\""), "{}", r.stdout);
    ok(&mut nobody(&["stats"]));
    ok(&mut nobody(&["verify"]));
    let r = ok(nobody(&["extract", "x:1"]).arg(out.join("tree")));
    assert!(r.stderr.contains("is not pinned"), "{}", r.stderr);
    assert_eq!(std::fs::read(out.join("tree/hello")).unwrap(), b"hello\n");
}
