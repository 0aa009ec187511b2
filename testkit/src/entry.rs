//! Layer entries and the layer tar writer.

use crate::raw::{typeflag, Magic, RawHeader, TarBuilder};

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Regular file with its contents.
    File(Vec<u8>),
    /// Directory.
    Dir,
    /// Symbolic link with its target.
    Symlink(Vec<u8>),
    /// Hard link to another path of the image (as written in the tar).
    HardLink(Vec<u8>),
    /// Character device (major, minor).
    CharDev(u32, u32),
    /// Block device (major, minor).
    BlockDev(u32, u32),
    /// FIFO.
    Fifo,
}

/// One tar entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Raw path bytes, may be non-UTF-8, normally without a leading `/`.
    /// Written verbatim (a directory gets a trailing `/` if it has none).
    pub path: Vec<u8>,
    /// What the entry is.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// Modification time, seconds.
    pub mtime: u64,
    /// Nanoseconds of the modification time, written as a PAX `mtime` when
    /// non-zero.
    pub mtime_nsec: u32,
    /// Extended attributes, written as PAX `SCHILY.xattr.NAME` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Default mtime of the convenience constructors (2023-11-14T22:13:20Z).
pub const DEFAULT_MTIME: u64 = 1_700_000_000;

impl Entry {
    /// An entry with the given kind, owner root, mode 0644 (0755 for
    /// directories, 0777 for symlinks), mtime [`DEFAULT_MTIME`].
    pub fn new(path: impl AsRef<[u8]>, kind: Kind) -> Self {
        let mode = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink(_) => 0o777,
            _ => 0o644,
        };
        Entry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }

    /// A regular file.
    pub fn file(path: impl AsRef<[u8]>, contents: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::File(contents.as_ref().to_vec()))
    }

    /// A directory.
    pub fn dir(path: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::Dir)
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::Symlink(target.as_ref().to_vec()))
    }

    /// A hard link `path` to the archive path `target`.
    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::HardLink(target.as_ref().to_vec()))
    }

    /// A character device.
    pub fn char_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::CharDev(major, minor))
    }

    /// A block device.
    pub fn block_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::BlockDev(major, minor))
    }

    /// A FIFO.
    pub fn fifo(path: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::Fifo)
    }

    /// The whiteout deleting `path` from lower layers: an empty file
    /// `.wh.NAME` in the parent directory of `path`.
    pub fn whiteout(path: impl AsRef<[u8]>) -> Self {
        let path = trim_slashes(path.as_ref());
        let (dir, name) = match path.iter().rposition(|&c| c == b'/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => (&path[..0], path),
        };
        let mut p = dir.to_vec();
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(name);
        Self::file(p, b"")
    }

    /// The opaque marker `DIR/.wh..wh..opq`: hides everything lower layers
    /// put in `dir`. Place it right after the directory's own entry.
    pub fn opaque(dir: impl AsRef<[u8]>) -> Self {
        let dir = trim_slashes(dir.as_ref());
        let mut p = dir.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh..wh..opq");
        Self::file(p, b"")
    }

    /// Sets the permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Sets owner and group.
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the modification time.
    pub fn mtime(mut self, sec: u64, nsec: u32) -> Self {
        self.mtime = sec;
        self.mtime_nsec = nsec;
        self
    }

    /// Adds an extended attribute.
    pub fn xattr(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.xattrs.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// The path as written in the tar (directories end in `/`).
    pub fn tar_path(&self) -> Vec<u8> {
        let mut p = self.path.clone();
        if self.kind == Kind::Dir && !p.ends_with(b"/") {
            p.push(b'/');
        }
        p
    }
}

fn trim_slashes(p: &[u8]) -> &[u8] {
    let end = p.iter().rposition(|&c| c != b'/').map_or(0, |i| i + 1);
    &p[..end]
}

/// How names longer than the 100-byte tar fields are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LongNames {
    /// PAX `path` / `linkpath` records (POSIX.1-2001), what Go and Docker write.
    #[default]
    Pax,
    /// GNU `././@LongLink` entries (`L` / `K`), what GNU tar writes.
    Gnu,
}

/// Writes `entries` in the given order as an uncompressed tar, long names as
/// PAX records.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    layer_tar_with(entries, LongNames::Pax)
}

/// Writes `entries` in the given order as an uncompressed tar, long names as
/// GNU `L`/`K` entries. Nanosecond mtimes, large ids and xattrs still use PAX
/// records (GNU tar does the same with `--xattrs`).
pub fn layer_tar_gnu(entries: &[Entry]) -> Vec<u8> {
    layer_tar_with(entries, LongNames::Gnu)
}

/// Writes `entries` with the chosen long-name encoding.
pub fn layer_tar_with(entries: &[Entry], long: LongNames) -> Vec<u8> {
    let mut tb = TarBuilder::new();
    for e in entries {
        write_entry(&mut tb, e, long);
    }
    tb.finish()
}

const OCTAL_ID_MAX: u64 = 0o7777777;

pub(crate) fn write_entry(tb: &mut TarBuilder, e: &Entry, long: LongNames) {
    let magic = match long {
        LongNames::Pax => Magic::Ustar,
        LongNames::Gnu => Magic::Gnu,
    };
    let name = e.tar_path();
    let (flag, linkname, data, dev): (u8, &[u8], &[u8], (u32, u32)) = match &e.kind {
        Kind::File(d) => (typeflag::REG, b"", d, (0, 0)),
        Kind::Dir => (typeflag::DIR, b"", b"", (0, 0)),
        Kind::Symlink(t) => (typeflag::SYM, t, b"", (0, 0)),
        Kind::HardLink(t) => (typeflag::LNK, t, b"", (0, 0)),
        Kind::CharDev(a, b) => (typeflag::CHR, b"", b"", (*a, *b)),
        Kind::BlockDev(a, b) => (typeflag::BLK, b"", b"", (*a, *b)),
        Kind::Fifo => (typeflag::FIFO, b"", b"", (0, 0)),
    };

    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let binary = std::str::from_utf8(&name).is_err() || std::str::from_utf8(linkname).is_err();
    if long == LongNames::Pax {
        if binary && (name.len() > 100 || linkname.len() > 100) {
            pax.push((b"hdrcharset".to_vec(), b"BINARY".to_vec()));
        }
        if name.len() > 100 {
            pax.push((b"path".to_vec(), name.clone()));
        }
        if linkname.len() > 100 {
            pax.push((b"linkpath".to_vec(), linkname.to_vec()));
        }
    }
    if e.mtime_nsec != 0 {
        let v = format!("{}.{:09}", e.mtime, e.mtime_nsec);
        pax.push((b"mtime".to_vec(), v.into_bytes()));
    }
    if e.uid > OCTAL_ID_MAX {
        pax.push((b"uid".to_vec(), e.uid.to_string().into_bytes()));
    }
    if e.gid > OCTAL_ID_MAX {
        pax.push((b"gid".to_vec(), e.gid.to_string().into_bytes()));
    }
    for (k, v) in &e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k.as_bytes());
        pax.push((key, v.clone()));
    }

    if long == LongNames::Gnu {
        if linkname.len() > 100 {
            tb.gnu_long(typeflag::GNU_LONGLINK, linkname);
        }
        if name.len() > 100 {
            tb.gnu_long(typeflag::GNU_LONGNAME, &name);
        }
    }
    if !pax.is_empty() {
        tb.pax(&pax, magic);
    }
    tb.header(&RawHeader {
        name,
        mode: e.mode & 0o7777,
        uid: e.uid.min(OCTAL_ID_MAX),
        gid: e.gid.min(OCTAL_ID_MAX),
        size: data.len() as u64,
        mtime: e.mtime,
        typeflag: flag,
        linkname: linkname.to_vec(),
        devmajor: dev.0,
        devminor: dev.1,
        magic,
    });
    if !data.is_empty() {
        tb.data(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_and_opaque_names() {
        assert_eq!(Entry::whiteout("a/b/c").path, b"a/b/.wh.c");
        assert_eq!(Entry::whiteout("c/").path, b".wh.c");
        assert_eq!(Entry::opaque("a/b/").path, b"a/b/.wh..wh..opq");
    }
}
