//! A deliberately simple "apply layers to a directory", written straight
//! from the entries (no tar parsing), to check `umoci unpack` against.
//!
//! Semantics, as the OCI image spec and umoci define them:
//! - the root starts as mode 0755, owner 0:0, mtime 0 (the epoch) unless a
//!   layer has a `./` entry, whose metadata it then takes;
//! - `.wh.NAME` deletes NAME (a whole subtree) from the layers below;
//! - `DIR/.wh..wh..opq` deletes the children of DIR that this layer did not
//!   create;
//! - an entry replaces what is at its path, except that a directory entry
//!   over an existing directory only updates the directory's metadata;
//! - a hard link is a second name for the target's inode: its own header
//!   metadata is not applied;
//! - a directory's mtime is the one of its last entry, whatever happens to
//!   its children afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use puzzle_testkit::{Entry, Kind};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

/// `./a/b/` -> `a/b`; `./` -> `` (the root).
fn clean(p: &[u8]) -> Vec<u8> {
    let mut p = p;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    if p == b"." {
        p = b"";
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    p.to_vec()
}

fn join(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

/// Splits `a/b/c` into (`a/b`, `c`) and `c` into (``, `c`).
fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&c| c == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&rel[..0], rel),
    }
}

fn child(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

fn set_mtime(p: &Path, sec: u64, nsec: u32) {
    let t = Timespec {
        tv_sec: sec as i64,
        tv_nsec: nsec.into(),
    };
    let ts = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

/// Owner first (chown clears setuid bits and file capabilities), then mode,
/// then xattrs (replacing any the path had), then mtime.
fn apply_metadata(p: &Path, e: &Entry) {
    std::os::unix::fs::lchown(p, Some(e.uid as u32), Some(e.gid as u32)).unwrap();
    if !matches!(e.kind, Kind::Symlink(_)) {
        fs::set_permissions(p, fs::Permissions::from_mode(e.mode)).unwrap();
    }
    for name in xattr::list(p).unwrap() {
        xattr::remove(p, name).unwrap();
    }
    for (name, value) in &e.xattrs {
        xattr::set(p, name, value).unwrap();
    }
    set_mtime(p, e.mtime, e.mtime_nsec);
}

/// Applies `layers` in order to a new directory `root`.
pub fn apply_layers(root: &Path, layers: &[Vec<Entry>]) {
    fs::create_dir(root).unwrap();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    // Last entry of every directory; the root's stands in if no `./`.
    let mut dirs: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    dirs.insert(Vec::new(), Entry::dir("./").mtime(0, 0));

    for layer in layers {
        let mut created: BTreeSet<Vec<u8>> = BTreeSet::new();
        for e in layer {
            let rel = clean(&e.path);
            let (parent, name) = split(&rel);
            if name == b".wh..wh..opq" {
                for de in fs::read_dir(join(root, parent)).unwrap() {
                    let de = de.unwrap();
                    let c = child(parent, de.file_name().as_bytes());
                    if !created.contains(&c) {
                        remove_any(&de.path());
                    }
                }
                continue;
            }
            if let Some(hidden) = name.strip_prefix(b".wh.") {
                remove_any(&join(root, &child(parent, hidden)));
                continue;
            }
            let p = join(root, &rel);
            created.insert(rel.clone());
            if let Ok(m) = fs::symlink_metadata(&p) {
                if !(m.is_dir() && e.kind == Kind::Dir) {
                    remove_any(&p);
                }
            }
            match &e.kind {
                Kind::File(data) => fs::write(&p, data).unwrap(),
                Kind::Dir => {
                    if !p.exists() {
                        fs::create_dir(&p).unwrap();
                    }
                    dirs.insert(rel.clone(), e.clone());
                }
                Kind::Symlink(t) => std::os::unix::fs::symlink(OsStr::from_bytes(t), &p).unwrap(),
                Kind::HardLink(t) => {
                    fs::hard_link(join(root, &clean(t)), &p).unwrap();
                    continue;
                }
                Kind::CharDev(ma, mi) | Kind::BlockDev(ma, mi) => {
                    let ft = if matches!(e.kind, Kind::CharDev(..)) {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    let dev = rustix::fs::makedev(*ma, *mi);
                    rustix::fs::mknodat(CWD, &p, ft, Mode::from_raw_mode(0o600), dev).unwrap();
                }
                Kind::Fifo => {
                    rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                        .unwrap();
                }
            }
            apply_metadata(&p, e);
        }
    }

    // Creating and deleting children moved directory mtimes: restore them.
    for (rel, e) in &dirs {
        let p = join(root, rel);
        // Skip directories deleted or replaced by a non-directory later.
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            set_mtime(&p, e.mtime, e.mtime_nsec);
        }
    }
}
