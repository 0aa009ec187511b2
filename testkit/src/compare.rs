//! Comparing two directory trees field by field.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What [`compare_trees`] checks besides the always-checked fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompareOpts {
    /// Compare directory mtimes too (non-directories are always compared).
    pub dir_mtimes: bool,
    /// Compare the nanoseconds of mtimes, not only the seconds.
    pub mtime_nsec: bool,
}

impl Default for CompareOpts {
    /// Everything compared.
    fn default() -> Self {
        CompareOpts {
            dir_mtimes: true,
            mtime_nsec: true,
        }
    }
}

/// Which property of a path differs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// The path exists only in the expected tree (its descendants are not
    /// listed separately).
    Missing,
    /// The path exists only in the actual tree (descendants not listed).
    Extra,
    /// File type (descendants of a directory on one side are not listed).
    Type,
    /// Permission bits (07777).
    Mode,
    /// Owner id.
    Uid,
    /// Group id.
    Gid,
    /// Size of a regular file or symlink.
    Size,
    /// Regular file contents.
    Content,
    /// Symlink target.
    Target,
    /// Device number.
    Rdev,
    /// One extended attribute, by name.
    Xattr(String),
    /// The set of paths sharing this path's inode.
    LinkGroup,
    /// Modification time.
    Mtime,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Missing => f.write_str("missing"),
            Field::Extra => f.write_str("extra"),
            Field::Type => f.write_str("type"),
            Field::Mode => f.write_str("mode"),
            Field::Uid => f.write_str("uid"),
            Field::Gid => f.write_str("gid"),
            Field::Size => f.write_str("size"),
            Field::Content => f.write_str("content"),
            Field::Target => f.write_str("target"),
            Field::Rdev => f.write_str("rdev"),
            Field::Xattr(n) => write!(f, "xattr {n}"),
            Field::LinkGroup => f.write_str("link group"),
            Field::Mtime => f.write_str("mtime"),
        }
    }
}

/// One difference between the trees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// Path relative to the tree roots, raw bytes; empty for the root.
    pub path: Vec<u8>,
    /// What differs.
    pub field: Field,
    /// The expected value, rendered for humans.
    pub expected: String,
    /// The actual value, rendered for humans.
    pub actual: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            ".".to_string()
        } else {
            show_bytes(&self.path)
        };
        write!(
            f,
            "{path}: {}: expected {}, actual {}",
            self.field, self.expected, self.actual
        )
    }
}

/// Every difference found by [`compare_trees`], in path order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Differences(pub Vec<Difference>);

impl Differences {
    /// The differences.
    pub fn iter(&self) -> std::slice::Iter<'_, Difference> {
        self.0.iter()
    }

    /// Number of differences.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some difference is `field` at `path`.
    pub fn has(&self, path: impl AsRef<[u8]>, field: &Field) -> bool {
        let path = path.as_ref();
        self.0.iter().any(|d| d.path == path && &d.field == field)
    }
}

const SHOWN: usize = 50;

impl fmt::Display for Differences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} differences between the trees", self.0.len())?;
        for d in self.0.iter().take(SHOWN) {
            writeln!(f, "  {d}")?;
        }
        if self.0.len() > SHOWN {
            writeln!(f, "  ... and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for Differences {}

/// Renders bytes as UTF-8 where valid, `\xNN` elsewhere.
pub fn show_bytes(b: &[u8]) -> String {
    let mut s = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                s.extend(c.escape_default());
            } else {
                s.push(c);
            }
        }
        for x in chunk.invalid() {
            s.push_str(&format!("\\x{x:02x}"));
        }
    }
    s
}

struct Node {
    abs: PathBuf,
    meta: Metadata,
}

fn walk(root: &Path) -> io::Result<BTreeMap<Vec<u8>, Node>> {
    let mut out = BTreeMap::new();
    let meta = fs::symlink_metadata(root)?;
    let is_dir = meta.is_dir();
    out.insert(
        Vec::new(),
        Node {
            abs: root.to_path_buf(),
            meta,
        },
    );
    if is_dir {
        walk_dir(root, &[], &mut out)?;
    }
    Ok(out)
}

fn walk_dir(dir: &Path, rel: &[u8], out: &mut BTreeMap<Vec<u8>, Node>) -> io::Result<()> {
    for de in fs::read_dir(dir)? {
        let de = de?;
        let abs = de.path();
        let mut r = rel.to_vec();
        if !r.is_empty() {
            r.push(b'/');
        }
        r.extend_from_slice(de.file_name().as_bytes());
        let meta = fs::symlink_metadata(&abs)?;
        let is_dir = meta.is_dir();
        out.insert(
            r.clone(),
            Node {
                abs: abs.clone(),
                meta,
            },
        );
        if is_dir {
            walk_dir(&abs, &r, out)?;
        }
    }
    Ok(())
}

fn type_name(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_file() {
        "file"
    } else if t.is_dir() {
        "dir"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() {
        "char device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// Paths sharing an inode with `path`, for every non-directory with more
/// than one link, keyed by path.
fn link_groups(tree: &BTreeMap<Vec<u8>, Node>) -> BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut by_inode: BTreeMap<(u64, u64), BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (p, n) in tree {
        if !n.meta.is_dir() && n.meta.nlink() > 1 {
            by_inode
                .entry((n.meta.dev(), n.meta.ino()))
                .or_default()
                .insert(p.clone());
        }
    }
    let mut out = BTreeMap::new();
    for group in by_inode.into_values() {
        for p in &group {
            out.insert(p.clone(), group.clone());
        }
    }
    out
}

fn show_group(g: Option<&BTreeSet<Vec<u8>>>, p: &[u8]) -> String {
    let single;
    let g = match g {
        Some(g) => g,
        None => {
            single = BTreeSet::from([p.to_vec()]);
            &single
        }
    };
    let names: Vec<String> = g.iter().map(|p| show_bytes(p)).collect();
    format!("{{{}}}", names.join(", "))
}

fn xattrs(p: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    // A filesystem without xattr support (a puzzle mount of an image with no
    // xattrs) has none.
    let names = match xattr::list(p) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(out),
        r => r?,
    };
    for name in names {
        // A value can vanish between list and get; treat it as absent.
        if let Some(v) = xattr::get(p, &name)? {
            out.insert(name.to_string_lossy().into_owned(), v);
        }
    }
    Ok(out)
}

/// Position of the first differing byte, or `None` if the files are equal.
fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = File::open(a)?;
    let mut fb = File::open(b)?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(pos + i as u64));
        }
        if na != nb {
            return Ok(Some(pos + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        pos += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn show_mtime(m: &Metadata, nsec: bool) -> String {
    if nsec {
        format!("{}.{:09}", m.mtime(), m.mtime_nsec())
    } else {
        m.mtime().to_string()
    }
}

fn show_dev(rdev: u64) -> String {
    format!(
        "{},{}",
        rustix::fs::major(rdev as rustix::fs::Dev),
        rustix::fs::minor(rdev as rustix::fs::Dev)
    )
}

fn has_pruned_ancestor(pruned: &BTreeSet<Vec<u8>>, p: &[u8]) -> bool {
    p.iter()
        .enumerate()
        .filter(|&(_, &c)| c == b'/')
        .any(|(i, _)| pruned.contains(&p[..i]))
        || (!p.is_empty() && pruned.contains(&Vec::new()))
}

/// Walks both trees with `lstat` (never following symlinks) and compares,
/// path by path: file type, permission bits (07777), uid, gid, size (files
/// and symlinks), contents (streamed), symlink target, device numbers, every
/// listable xattr, hard-link groups (paths sharing an inode must be the same
/// set in both trees), and mtime for non-directories (directories too if
/// `opts.dir_mtimes`; nanoseconds if `opts.mtime_nsec`). The roots are
/// compared like any other directory.
///
/// I/O errors while reading either tree are reported as panics: this is a
/// test helper, and an unreadable tree is a broken test.
pub fn compare_trees(
    expected: &Path,
    actual: &Path,
    opts: &CompareOpts,
) -> Result<(), Differences> {
    let te = walk(expected).unwrap_or_else(|e| panic!("walk {}: {e}", expected.display()));
    let ta = walk(actual).unwrap_or_else(|e| panic!("walk {}: {e}", actual.display()));
    let ge = link_groups(&te);
    let ga = link_groups(&ta);

    let mut diffs = Vec::new();
    let mut pruned: BTreeSet<Vec<u8>> = BTreeSet::new();
    let paths: BTreeSet<&Vec<u8>> = te.keys().chain(ta.keys()).collect();
    for p in paths {
        if has_pruned_ancestor(&pruned, p) {
            continue;
        }
        let mut push = |field: Field, expected: String, actual: String| {
            diffs.push(Difference {
                path: p.clone(),
                field,
                expected,
                actual,
            })
        };
        let (e, a) = match (te.get(p), ta.get(p)) {
            (Some(e), Some(a)) => (e, a),
            (Some(e), None) => {
                push(Field::Missing, type_name(&e.meta).into(), "nothing".into());
                pruned.insert(p.clone());
                continue;
            }
            (None, Some(a)) => {
                push(Field::Extra, "nothing".into(), type_name(&a.meta).into());
                pruned.insert(p.clone());
                continue;
            }
            (None, None) => unreachable!("path came from one of the trees"),
        };
        let (me, ma) = (&e.meta, &a.meta);
        if type_name(me) != type_name(ma) {
            push(Field::Type, type_name(me).into(), type_name(ma).into());
            pruned.insert(p.clone());
            continue;
        }
        let ft = me.file_type();
        if me.mode() & 0o7777 != ma.mode() & 0o7777 {
            push(
                Field::Mode,
                format!("{:04o}", me.mode() & 0o7777),
                format!("{:04o}", ma.mode() & 0o7777),
            );
        }
        if me.uid() != ma.uid() {
            push(Field::Uid, me.uid().to_string(), ma.uid().to_string());
        }
        if me.gid() != ma.gid() {
            push(Field::Gid, me.gid().to_string(), ma.gid().to_string());
        }
        if (ft.is_file() || ft.is_symlink()) && me.size() != ma.size() {
            push(Field::Size, me.size().to_string(), ma.size().to_string());
        }
        if ft.is_file() && me.size() == ma.size() {
            let at = first_difference(&e.abs, &a.abs)
                .unwrap_or_else(|err| panic!("compare {}: {err}", show_bytes(p)));
            if let Some(off) = at {
                push(
                    Field::Content,
                    "same bytes".into(),
                    format!("first difference at byte {off}"),
                );
            }
        }
        if ft.is_symlink() {
            let le = fs::read_link(&e.abs).expect("readlink expected");
            let la = fs::read_link(&a.abs).expect("readlink actual");
            if le != la {
                push(
                    Field::Target,
                    show_bytes(le.as_os_str().as_bytes()),
                    show_bytes(la.as_os_str().as_bytes()),
                );
            }
        }
        if (ft.is_char_device() || ft.is_block_device()) && me.rdev() != ma.rdev() {
            push(Field::Rdev, show_dev(me.rdev()), show_dev(ma.rdev()));
        }
        let xe = xattrs(&e.abs).unwrap_or_else(|err| panic!("xattrs {}: {err}", e.abs.display()));
        let xa = xattrs(&a.abs).unwrap_or_else(|err| panic!("xattrs {}: {err}", a.abs.display()));
        let names: BTreeSet<&String> = xe.keys().chain(xa.keys()).collect();
        for n in names {
            let (ve, va) = (xe.get(n), xa.get(n));
            if ve != va {
                let show = |v: Option<&Vec<u8>>| match v {
                    Some(v) => format!("\"{}\"", v.escape_ascii()),
                    None => "absent".to_string(),
                };
                push(Field::Xattr(n.clone()), show(ve), show(va));
            }
        }
        if !ft.is_dir() && ge.get(p) != ga.get(p) {
            // A path alone in one tree has no entry: normalize to {p}.
            let single = BTreeSet::from([p.clone()]);
            if ge.get(p).unwrap_or(&single) != ga.get(p).unwrap_or(&single) {
                push(
                    Field::LinkGroup,
                    show_group(ge.get(p), p),
                    show_group(ga.get(p), p),
                );
            }
        }
        if !ft.is_dir() || opts.dir_mtimes {
            let differ =
                me.mtime() != ma.mtime() || (opts.mtime_nsec && me.mtime_nsec() != ma.mtime_nsec());
            if differ {
                push(
                    Field::Mtime,
                    show_mtime(me, opts.mtime_nsec),
                    show_mtime(ma, opts.mtime_nsec),
                );
            }
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Differences(diffs))
    }
}
