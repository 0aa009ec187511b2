//! A mount as a container root (issue 16): `..` of every directory names
//! its parent in readdir, and a chroot into a `--suid` mount runs an
//! image's setuid-root program with effective uid 0 (without `--suid`, not).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use puzzle_testkit::{Compression, Entry, Image};

use crate::mount::{can_mount, Mount};
use crate::util::*;

/// Reads each directory given with getdents64 and prints the inode of its
/// `..` entry, one per line: what readdir says, not what a stat of `..`
/// says (which `ls -i` may report instead).
const DOTDOT: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(1 << 16)
for d in sys.argv[1:]:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    found = None
    while found is None:
        n = libc.syscall(217, fd, buf, len(buf))
        if n <= 0:
            break
        pos = 0
        while pos < n:
            ino, _, reclen, _ = struct.unpack_from("QqHB", buf.raw, pos)
            name = buf.raw[pos + 19 : pos + reclen].split(b"\0", 1)[0]
            if name == b"..":
                found = ino
            pos += reclen
    os.close(fd)
    print(found)
"#;

/// The inode readdir lists for `..` in each of `dirs`.
fn dotdot_inos(dirs: &[PathBuf]) -> Vec<u64> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(DOTDOT)
        .args(dirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("no .. entry: {l}")))
        .collect()
}

/// Every directory under `root`, symlinks not followed, parents first.
fn dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(&out[i])
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.path())
            .collect();
        subs.sort();
        out.extend(subs);
        i += 1;
    }
    out
}

#[test]
fn dotdot_of_every_directory_names_its_parent() {
    let Some(corpus) = corpus() else { return };
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    build(&store, &format!("oci:{}:base", corpus.display()), "base");
    let m = Mount::new(&store, "base", &t.join("mnt"), &[]);
    let all = dirs(&m.dir);
    assert!(all.len() > 100, "only {} directories", all.len());
    let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
    let got = dotdot_inos(&all);
    // The root's `..` is the root: the image has nothing above it.
    assert_eq!(got[0], ino(&m.dir), "the root's ..");
    let mut inodes = BTreeSet::new();
    for (d, got) in all[1..].iter().zip(&got[1..]) {
        let parent = d.parent().unwrap();
        assert_eq!(*got, ino(parent), "{}/..", d.display());
        inodes.insert(ino(parent));
    }
    assert!(inodes.len() > 10, "the parents are more than a few");
}

/// `bin` and the shared libraries and loader it needs (as `ldd` lists
/// them), as image entries at their paths; each file mode 0755.
fn with_libraries(bins: &[&str]) -> Vec<Entry> {
    let mut paths = BTreeSet::new();
    for bin in bins {
        paths.insert(PathBuf::from(bin));
        let out = Command::new("ldd").arg(bin).output().unwrap();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next(),
                None => l.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                paths.insert(PathBuf::from(p));
            }
        }
    }
    let mut entries = Vec::new();
    let mut dirs_made = BTreeSet::new();
    for p in &paths {
        let rel = p.strip_prefix("/").unwrap();
        for a in rel.ancestors().skip(1) {
            if !a.as_os_str().is_empty() && dirs_made.insert(a.to_path_buf()) {
                entries.push(Entry::dir(a.to_str().unwrap()).mode(0o755));
            }
        }
        let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        entries.push(Entry::file(rel.to_str().unwrap(), bytes).mode(0o755));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries
}

#[test]
fn a_chroot_into_a_suid_mount_runs_setuid_programs_as_root() {
    if !can_mount() || !have("ldd") || !have("chroot") || !have("setpriv") {
        assert!(!require_tools(), "needs ldd, chroot and setpriv");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::set_permissions(t, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The host's setpriv and id with their libraries, and a setuid-root
    // copy of id: the image is a root filesystem they run in.
    let mut entries = with_libraries(&["/usr/bin/setpriv", "/usr/bin/id"]);
    let id = std::fs::read("/usr/bin/id").unwrap();
    entries.push(Entry::file("usr/bin/id-suid", id).mode(0o4755).owner(0, 0));
    let layout = t.join("layout");
    Image::new()
        .layer(&entries, Compression::Gzip)
        .write_oci_layout(&layout, "root")
        .unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:root", layout.display()), "root");
    let in_chroot = |root: &Path| {
        let out = Command::new("chroot")
            .arg(root)
            .args(["/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534"])
            .args(["--clear-groups", "/usr/bin/id-suid"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chroot {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let suid = Mount::new(
        &store,
        "root",
        &t.join("suid"),
        &["--allow-other", "--suid"],
    );
    let out = in_chroot(&suid.dir);
    assert!(
        out.contains("uid=65534") && out.contains("euid=0"),
        "--suid: {out}"
    );
    let plain = Mount::new(&store, "root", &t.join("plain"), &["--allow-other"]);
    let out = in_chroot(&plain.dir);
    assert!(
        out.contains("uid=65534") && !out.contains("euid="),
        "nosuid: {out}"
    );
}
