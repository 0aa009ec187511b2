//! Writing a stored image's tree into a directory, as a container runtime
//! would see it: contents, modes, owners, links, devices, xattrs, mtimes.
//!
//! Every path is created by us under a fresh or empty target, one validated
//! name at a time, with `O_EXCL`/`O_NOFOLLOW`: nothing is written outside the
//! target, whatever the metadata blob says. An extract that fails removes
//! what it wrote, unless asked to keep it ([`ExtractOptions::keep_partial`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use puzzle_chunker::ChunkId;
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

use crate::error::{show_os_path, Error, IoContext, Result};
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

/// How [`extract_with`] works.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtractOptions<'a> {
    /// Keep what was written when the extract fails.
    pub keep_partial: bool,
    /// Stop with [`Error::Interrupted`] once this is set (checked before
    /// each entry and each extent).
    pub cancel: Option<&'a AtomicBool>,
}

/// What became of what a failed extract had written.
#[derive(Debug)]
pub enum Partial {
    /// Nothing was written (the target was refused).
    Nothing,
    /// Removed: the target if the extract created it, else every entry it
    /// created in it (its mode, owner and times put back).
    Removed,
    /// Kept, as asked ([`ExtractOptions::keep_partial`]).
    Kept,
    /// Removing it failed; some of it is left.
    NotRemoved(Error),
}

/// A failed extract: why, and what became of what it wrote.
#[derive(Debug)]
pub struct ExtractError {
    pub error: Error,
    pub partial: Partial,
}

/// How the target was found: created by the extract, or an existing empty
/// directory (with its metadata, to put back).
enum Prepared {
    Created,
    Existing(fs::Metadata),
}

/// Prepares `target`: created if missing, else it must be an empty directory.
fn prepare_target(target: &Path) -> Result<Prepared> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::create_dir(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Target {
                path: target.into(),
                why: format!(
                    "its parent directory {} does not exist; create it first",
                    target.parent().map_or_else(String::new, show_os_path)
                ),
            }),
            r => r.at(target).map(|()| Prepared::Created),
        },
        Err(e) => Err(Error::Io {
            path: target.into(),
            source: e,
        }),
        Ok(m) if !m.is_dir() => Err(Error::Target {
            path: target.into(),
            why: "exists and is not a directory".into(),
        }),
        Ok(m) => {
            if fs::read_dir(target).at(target)?.next().is_some() {
                return Err(Error::Target {
                    path: target.into(),
                    why: "is not empty; give a new or empty directory".into(),
                });
            }
            Ok(Prepared::Existing(m))
        }
    }
}

/// Removes what a failed extract wrote into `target`.
fn remove_partial(target: &Path, prepared: &Prepared) -> Result<()> {
    match prepared {
        Prepared::Created => remove_tree(target),
        Prepared::Existing(before) => {
            for e in fs::read_dir(target).at(target)? {
                let path = e.at(target)?.path();
                remove_tree(&path)?;
            }
            // The root's metadata is applied last; put the old one back.
            use std::os::unix::fs::MetadataExt;
            let uid = Some(rustix::fs::Uid::from_raw(before.uid()));
            let gid = Some(rustix::fs::Gid::from_raw(before.gid()));
            let io = |e: rustix::io::Errno| Error::Io {
                path: target.into(),
                source: e.into(),
            };
            if rustix::process::geteuid().is_root() {
                rustix::fs::chownat(CWD, target, uid, gid, AtFlags::empty()).map_err(io)?;
            }
            rustix::fs::chmod(target, Mode::from_raw_mode(before.mode() & 0o7777)).map_err(io)?;
            let ts = |sec: i64, nsec: i64| Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            };
            let times = Timestamps {
                last_access: ts(before.atime(), before.atime_nsec()),
                last_modification: ts(before.mtime(), before.mtime_nsec()),
            };
            rustix::fs::utimensat(CWD, target, &times, AtFlags::empty()).map_err(io)
        }
    }
}

/// Removes `path` and everything under it, making directories writable
/// first if need be (an extract may have applied read-only modes).
fn remove_tree(path: &Path) -> Result<()> {
    let m = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                path: path.into(),
                source: e,
            })
        }
    };
    if !m.is_dir() {
        return fs::remove_file(path).at(path);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    rustix::fs::chmod(path, Mode::from_raw_mode(0o700))
        .map_err(std::io::Error::from)
        .at(path)?;
    for e in fs::read_dir(path).at(path)? {
        remove_tree(&e.at(path)?.path())?;
    }
    fs::remove_dir(path).at(path)
}

/// Extracts the image whose metadata is `meta` into `target`; on failure,
/// removes what it wrote.
pub fn extract(store: &Store, meta: &MetaBlob<Vec<u8>>, target: &Path) -> Result<ExtractStats> {
    extract_with(store, meta, target, &ExtractOptions::default(), &mut |_| {}).map_err(|e| e.error)
}

/// Extracts the image whose metadata is `meta` into `target` (created if
/// missing, else an empty directory). On failure, what was written is
/// removed unless `opts.keep_partial`; the error says which. `progress` is
/// called with the file-content bytes written so far as they grow; they end
/// at the image's logical size ([`crate::stats::logical_size`]).
pub fn extract_with(
    store: &Store,
    meta: &MetaBlob<Vec<u8>>,
    target: &Path,
    opts: &ExtractOptions<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractStats, Box<ExtractError>> {
    let prepared = prepare_target(target).map_err(|error| {
        Box::new(ExtractError {
            error,
            partial: Partial::Nothing,
        })
    })?;
    extract_into(store, meta, target, opts.cancel, progress).map_err(|error| {
        let partial = if opts.keep_partial {
            Partial::Kept
        } else {
            match remove_partial(target, &prepared) {
                Ok(()) => Partial::Removed,
                Err(e) => Partial::NotRemoved(e),
            }
        };
        Box::new(ExtractError { error, partial })
    })
}

fn extract_into(
    store: &Store,
    meta: &MetaBlob<Vec<u8>>,
    target: &Path,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64),
) -> Result<ExtractStats> {
    let mut cx = Extractor {
        meta,
        cache: ChunkCache::new(store, meta, 32 << 20),
        links: HashMap::new(),
        dirs: Vec::new(),
        stats: ExtractStats::default(),
        is_root: rustix::process::geteuid().is_root(),
        visited: vec![false; meta.inode_count() as usize],
        cancel,
        progress,
    };
    let root = meta.root()?;
    cx.visited[0] = true;
    // Depth-first in sorted-name order: the order file contents were chunked in.
    let mut stack: Vec<(InodeRec, PathBuf, u32)> = vec![(root, target.to_path_buf(), 0)];
    cx.dirs.push((root, target.to_path_buf()));
    while let Some((dir, path, next)) = stack.pop() {
        cx.check_cancel()?;
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
    cancel: Option<&'a AtomicBool>,
    progress: &'p mut dyn FnMut(u64),
}

impl Extractor<'_, '_> {
    fn check_cancel(&self) -> Result<()> {
        match self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }

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
            self.check_cancel()?;
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
