//! Writing a stored image's tree into a directory, as a container runtime
//! would see it: contents, modes, owners, links, devices, xattrs, mtimes.
//!
//! Every path is created by us under a fresh or empty target, one validated
//! name at a time, with `O_EXCL`/`O_NOFOLLOW`: nothing is written outside the
//! target, whatever the metadata blob says.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use puzzle_chunker::ChunkId;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

use crate::error::{Error, IoContext, Result};
use crate::frame::{ChunkBytes, FrameReader};
use crate::layout::Store;
use crate::meta::{InodeRec, Kind, MetaBlob};

/// What an extract wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Reads an image's chunks for extraction: files are extracted in about the
/// order their contents were chunked, so a few recent frames catch almost
/// every reuse.
pub struct ChunkCache<'a> {
    meta: &'a MetaBlob<Vec<u8>>,
    frames: FrameReader<'a>,
}

impl<'a> ChunkCache<'a> {
    /// A reader keeping up to `capacity` bytes of decompressed frames.
    pub fn new(store: &'a Store, meta: &'a MetaBlob<Vec<u8>>, capacity: usize) -> Self {
        ChunkCache {
            meta,
            frames: FrameReader::new(store, capacity),
        }
    }

    /// The checked bytes of chunk `chunk` of the image.
    pub fn get(&mut self, chunk: u32) -> Result<ChunkBytes> {
        let rec = self.meta.chunk(chunk)?;
        self.frames.chunk(&rec.id, &rec.loc)
    }

    /// The id of chunk `i` of the image (for messages).
    pub fn id(&self, chunk: u32) -> Option<ChunkId> {
        self.meta.chunk(chunk).ok().map(|c| c.id)
    }
}

fn check_name(name: &[u8], dir: &Path) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Error::Corrupt {
            what: "metadata blob".into(),
            why: format!(
                "invalid name {:?} in {}",
                String::from_utf8_lossy(name),
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Prepares `target`: created if missing, else it must be an empty directory.
fn prepare_target(target: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir(target).at(target),
        Err(e) => Err(Error::Io {
            path: target.into(),
            source: e,
        }),
        Ok(m) if !m.is_dir() => Err(Error::Target {
            path: target.into(),
            why: "exists and is not a directory".into(),
        }),
        Ok(_) => {
            if fs::read_dir(target).at(target)?.next().is_some() {
                return Err(Error::Target {
                    path: target.into(),
                    why: "is not empty".into(),
                });
            }
            Ok(())
        }
    }
}

/// Extracts the image whose metadata is `meta` into `target`.
pub fn extract(store: &Store, meta: &MetaBlob<Vec<u8>>, target: &Path) -> Result<ExtractStats> {
    extract_with_progress(store, meta, target, &mut |_| {})
}

/// [`extract`], calling `progress` with the file-content bytes written so
/// far as they grow; they end at the image's logical size
/// ([`crate::stats::logical_size`]).
pub fn extract_with_progress(
    store: &Store,
    meta: &MetaBlob<Vec<u8>>,
    target: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractStats> {
    prepare_target(target)?;
    let mut cx = Extractor {
        meta,
        cache: ChunkCache::new(store, meta, 32 << 20),
        links: HashMap::new(),
        dirs: Vec::new(),
        stats: ExtractStats::default(),
        is_root: rustix::process::geteuid().is_root(),
        visited: vec![false; meta.inode_count() as usize],
        progress,
    };
    let root = meta.root()?;
    cx.visited[0] = true;
    // Depth-first in sorted-name order: the order file contents were chunked in.
    let mut stack: Vec<(InodeRec, PathBuf, u32)> = vec![(root, target.to_path_buf(), 0)];
    cx.dirs.push((root, target.to_path_buf()));
    while let Some((dir, path, next)) = stack.pop() {
        if next >= dir.count() {
            continue;
        }
        stack.push((dir, path.clone(), next + 1));
        let (name, ino) = meta.dirent(&dir, next)?;
        check_name(name, &path)?;
        let child_path = path.join(OsStr::from_bytes(name));
        let child = meta.inode(ino)?;
        if child.kind == Kind::Dir {
            if std::mem::replace(&mut cx.visited[ino as usize], true) {
                return Err(Error::Corrupt {
                    what: "metadata blob".into(),
                    why: format!("directory inode {ino} is reachable twice"),
                });
            }
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&child_path)
                .at(&child_path)?;
            cx.dirs.push((child, child_path.clone()));
            stack.push((child, child_path, 0));
        } else {
            cx.entry(&child, &child_path)?;
        }
        cx.stats.entries += 1;
    }
    // Directory metadata last, deepest first: adding children changes mtimes
    // and a read-only mode would stop us writing into them.
    for (dir, path) in cx.dirs.iter().rev() {
        cx.apply_meta(dir, path, None)?;
    }
    Ok(cx.stats)
}

struct Extractor<'a, 'p> {
    meta: &'a MetaBlob<Vec<u8>>,
    cache: ChunkCache<'a>,
    links: HashMap<u32, PathBuf>,
    dirs: Vec<(InodeRec, PathBuf)>,
    stats: ExtractStats,
    is_root: bool,
    visited: Vec<bool>,
    progress: &'p mut dyn FnMut(u64),
}

impl Extractor<'_, '_> {
    fn entry(&mut self, ino: &InodeRec, path: &Path) -> Result<()> {
        if ino.nlink > 1 {
            if let Some(first) = self.links.get(&ino.ino) {
                return fs::hard_link(first, path).at(path);
            }
            self.links.insert(ino.ino, path.to_path_buf());
        }
        match ino.kind {
            Kind::File => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(path)
                    .at(path)?;
                self.write_content(ino, &mut f, path)?;
                self.stats.files += 1;
                self.apply_meta(ino, path, Some(&f))
            }
            Kind::Symlink => {
                let target = self.meta.symlink_target(ino)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(target), path).at(path)?;
                self.apply_meta(ino, path, None)
            }
            Kind::CharDev | Kind::BlockDev | Kind::Fifo => {
                let (ft, dev) = match ino.kind {
                    Kind::CharDev => (FileType::CharacterDevice, ino.rdev()),
                    Kind::BlockDev => (FileType::BlockDevice, ino.rdev()),
                    _ => (FileType::Fifo, (0, 0)),
                };
                let dev = rustix::fs::makedev(dev.0, dev.1);
                rustix::fs::mknodat(CWD, path, ft, Mode::from_raw_mode(0o600), dev)
                    .map_err(std::io::Error::from)
                    .at(path)?;
                self.apply_meta(ino, path, None)
            }
            Kind::Dir => unreachable!("directories are handled by the walk"),
        }
    }

    fn write_content(&mut self, ino: &InodeRec, f: &mut File, path: &Path) -> Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let mut written = 0u64;
        for i in 0..ino.count() {
            let e = self.meta.extent(ino, i)?;
            let data = self.cache.get(e.chunk)?;
            let start = e.chunk_offset as usize;
            let slice = start
                .checked_add(e.len as usize)
                .and_then(|end| data.get(start..end))
                .ok_or_else(|| Error::Corrupt {
                    what: "metadata blob".into(),
                    why: format!(
                        "extent {i} of {} reaches past chunk {}",
                        path.display(),
                        self.cache
                            .id(e.chunk)
                            .map(|c| c.to_string())
                            .unwrap_or_default()
                    ),
                })?;
            w.write_all(slice).at(path)?;
            written += slice.len() as u64;
            (self.progress)(self.stats.bytes + written);
        }
        w.flush().at(path)?;
        if written != ino.size {
            return Err(Error::Corrupt {
                what: "metadata blob".into(),
                why: format!(
                    "{} has {written} bytes of extents for size {}",
                    path.display(),
                    ino.size
                ),
            });
        }
        self.stats.bytes += written;
        Ok(())
    }

    /// Owner, then mode (chown clears setuid bits), xattrs, then mtime.
    fn apply_meta(&self, ino: &InodeRec, path: &Path, file: Option<&File>) -> Result<()> {
        let io = |e: rustix::io::Errno| Error::Io {
            path: path.into(),
            source: e.into(),
        };
        if self.is_root {
            let uid = Some(rustix::fs::Uid::from_raw(ino.uid));
            let gid = Some(rustix::fs::Gid::from_raw(ino.gid));
            match file {
                Some(f) => rustix::fs::fchown(f, uid, gid),
                None => rustix::fs::chownat(CWD, path, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
            }
            .map_err(io)?;
        }
        if ino.kind != Kind::Symlink {
            let mode = Mode::from_raw_mode(ino.mode);
            match file {
                Some(f) => rustix::fs::fchmod(f, mode),
                None => rustix::fs::chmod(path, mode),
            }
            .map_err(io)?;
        }
        for (name, value) in self.meta.xattrs(ino)? {
            let name = OsStr::from_bytes(name);
            let r = match file {
                Some(f) => xattr::FileExt::set_xattr(f, name, value),
                None => xattr::set(path, name, value),
            };
            r.map_err(|source| Error::Io {
                path: path.into(),
                source: std::io::Error::new(
                    source.kind(),
                    format!("setting xattr {}: {source}", name.to_string_lossy()),
                ),
            })?;
        }
        let mtime = Timespec {
            tv_sec: ino.mtime,
            tv_nsec: ino.mtime_nsec.min(999_999_999).into(),
        };
        let times = Timestamps {
            last_access: mtime,
            last_modification: mtime,
        };
        match file {
            Some(f) => rustix::fs::futimens(f, &times),
            None => rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW),
        }
        .map_err(io)
    }
}
