//! The `fuser::Filesystem` over one image. Every callback wraps an inner
//! function returning `Result`, and errors become errno in `crate::errno`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use puzzle_store::blobs::BlobRead;
use puzzle_store::frame::{ChunkBytes, Frame};
use puzzle_store::image::MappedImage;
use puzzle_store::meta::{InodeRec, Kind, MetaBlob};
use puzzle_store::mmap::Mapped;
use puzzle_store::prefetch::{TraceEntry, TraceLog};
use puzzle_store::BlobDigest;

use crate::cache::{ChunkCache, FrameKey};
use crate::{errno, Error, Log};

/// The image never changes while mounted: let the kernel cache everything.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const GEN: Generation = Generation(0);

type Result<T, E = Error> = std::result::Result<T, E>;

/// One stored image, served read-only.
pub struct ImageFs {
    meta: Arc<MetaBlob<Mapped>>,
    /// The image's packs (chunks naming another pack are refused).
    packs: HashSet<BlobDigest>,
    /// Where pack bytes come from.
    blobs: Arc<dyn BlobRead>,
    cache: Arc<ChunkCache>,
    log: Log,
    /// Parent of each directory the kernel has seen, for "..".
    parents: Mutex<HashMap<u32, u32>>,
    /// The image has no xattrs: answer ENOSYS once so the kernel stops asking
    /// (`ls -l` asks twice per file).
    no_xattrs: bool,
    /// The kernel opens files and directories without asking us, with
    /// keep_cache and cache_dir (FUSE_NO_OPEN_SUPPORT / NO_OPENDIR_SUPPORT).
    no_open: bool,
    /// Blocks (4 KiB) of the image's file contents, for `statfs` (`df`);
    /// counted on first use.
    blocks: OnceLock<u64>,
    /// Reads recorded for `mount --trace`, if asked for.
    trace: Option<Arc<Mutex<TraceLog>>>,
    _pin: puzzle_store::layout::Pin,
}

/// The reads of a mount, recorded from [`ImageFs::trace`] on; outlives the
/// filesystem, so it can be written out after unmounting.
#[derive(Clone)]
pub struct Trace {
    log: Arc<Mutex<TraceLog>>,
    meta: Arc<MetaBlob<Mapped>>,
}

impl Trace {
    /// The ranges read so far, in first-access order, each file named by a
    /// path of the image (`mount --trace` writes them with
    /// [`puzzle_store::prefetch::encode`]).
    pub fn entries(&self) -> Result<Vec<TraceEntry>> {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        Ok(log.entries(&self.meta)?)
    }
}

impl ImageFs {
    /// Serves `image`, reading its packs' bytes from `blobs` (a store's
    /// [`puzzle_store::Store::blob_reader`]) and holding its pin for as long
    /// as the filesystem lives so gc leaves its blobs alone.
    pub fn new(
        image: MappedImage,
        blobs: Arc<dyn BlobRead>,
        cache: Arc<ChunkCache>,
        log: Log,
    ) -> Result<Self> {
        let pin = image.pin;
        let packs = image.meta.packs()?.into_iter().collect();
        let no_xattrs = image.meta.xattr_total() == 0;
        Ok(ImageFs {
            no_xattrs,
            meta: Arc::new(image.meta),
            packs,
            blobs,
            cache,
            log,
            parents: Mutex::new(HashMap::new()),
            no_open: false,
            blocks: OnceLock::new(),
            trace: None,
            _pin: pin,
        })
    }

    /// Starts recording which ranges of which files are read (each byte
    /// once, in first-access order); the returned [`Trace`] reads them out.
    pub fn trace(&mut self) -> Trace {
        let log = self.trace.get_or_insert_with(Default::default).clone();
        Trace {
            log,
            meta: self.meta.clone(),
        }
    }

    fn index(ino: INodeNo) -> Result<u32> {
        ino.0
            .checked_sub(1)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or(Error::NoInode(ino.0))
    }

    fn inode(&self, ino: INodeNo) -> Result<InodeRec> {
        let i = Self::index(ino)?;
        if u64::from(i) >= self.meta.inode_count() {
            return Err(Error::NoInode(ino.0));
        }
        Ok(self.meta.inode(i)?)
    }

    fn attr(&self, r: &InodeRec) -> FileAttr {
        let (kind, size, blocks) = match r.kind {
            Kind::File => (FileType::RegularFile, r.size, r.size.div_ceil(512)),
            Kind::Dir => (FileType::Directory, 4096, 8),
            Kind::Symlink => (FileType::Symlink, r.size, 0),
            Kind::CharDev => (FileType::CharDevice, 0, 0),
            Kind::BlockDev => (FileType::BlockDevice, 0, 0),
            Kind::Fifo => (FileType::NamedPipe, 0, 0),
        };
        let (major, minor) = r.rdev();
        let mtime = time(r.mtime, r.mtime_nsec);
        FileAttr {
            ino: INodeNo(u64::from(r.ino) + 1),
            size,
            blocks,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm: (r.mode & 0o7777) as u16,
            nlink: r.nlink,
            uid: r.uid,
            gid: r.gid,
            rdev: encode_dev(major, minor),
            blksize: 4096,
            flags: 0,
        }
    }

    fn dir(&self, ino: INodeNo) -> Result<InodeRec> {
        let d = self.inode(ino)?;
        if d.kind != Kind::Dir {
            return Err(Error::NotDir);
        }
        Ok(d)
    }

    fn note_parent(&self, child: &InodeRec, parent: u32) {
        if child.kind == Kind::Dir {
            let mut p = self.parents.lock().unwrap_or_else(|e| e.into_inner());
            p.insert(child.ino, parent);
        }
    }

    fn parent_of(&self, dir: u32) -> u32 {
        let p = self.parents.lock().unwrap_or_else(|e| e.into_inner());
        p.get(&dir).copied().unwrap_or(0)
    }

    fn lookup_inner(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        let dir = self.dir(parent)?;
        let child = self
            .meta
            .lookup(&dir, name.as_bytes())?
            .ok_or(Error::NotFound)?;
        let rec = self.meta.inode(child)?;
        self.note_parent(&rec, dir.ino);
        Ok(self.attr(&rec))
    }

    /// The entries of a directory from position `from`: ".", "..", then the
    /// stored entries in name order. Positions are stable, so offsets are too.
    fn entries(
        &self,
        dir: &InodeRec,
        from: u64,
        mut add: impl FnMut(u64, &[u8], &InodeRec) -> bool,
    ) -> Result<()> {
        let total = u64::from(dir.count()) + 2;
        for pos in from..total {
            let (name, rec): (&[u8], InodeRec) = match pos {
                0 => (b".", *dir),
                1 => (b"..", self.meta.inode(self.parent_of(dir.ino))?),
                _ => {
                    let (name, ino) = self.meta.dirent(dir, (pos - 2) as u32)?;
                    let rec = self.meta.inode(ino)?;
                    self.note_parent(&rec, dir.ino);
                    (name, rec)
                }
            };
            if add(pos + 1, name, &rec) {
                break;
            }
        }
        Ok(())
    }

    fn read_inner(&self, ino: INodeNo, offset: u64, size: u32) -> Result<Vec<u8>> {
        let file = self.inode(ino)?;
        match file.kind {
            Kind::File => {}
            Kind::Dir => return Err(Error::IsDir),
            _ => return Err(Error::Invalid),
        }
        if offset >= file.size {
            return Ok(Vec::new());
        }
        let end = file.size.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity((end - offset) as usize);
        let Some(mut i) = self.meta.find_extent(&file, offset)? else {
            return Ok(out);
        };
        self.prefetch(&file, i, end)?;
        let mut pos = offset;
        while pos < end {
            let e = self.meta.extent(&file, i)?;
            i += 1;
            if e.len == 0 {
                continue;
            }
            let data = self.chunk(e.chunk)?;
            let within = pos - e.file_offset;
            let n = (u64::from(e.len) - within).min(end - pos) as usize;
            let start = e.chunk_offset as usize + within as usize;
            let bytes = data.get(start..start + n).ok_or_else(|| {
                Error::Store(puzzle_store::Error::Corrupt {
                    what: "metadata blob".into(),
                    why: format!("extent of inode {} is outside its chunk", file.ino),
                })
            })?;
            out.extend_from_slice(bytes);
            pos += n as u64;
        }
        if let Some(t) = &self.trace {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            t.record(file.ino, offset, end - offset);
        }
        Ok(out)
    }

    /// Decompresses the uncached frames of extents `first..` up to file
    /// offset `end` on two threads, so one large cold read uses both cores.
    /// Failures are left for the caller's own pass to report.
    fn prefetch(&self, file: &InodeRec, first: u32, end: u64) -> Result<()> {
        let mut missing: Vec<u32> = Vec::new();
        let mut wanted: HashMap<BlobDigest, Vec<(u64, u64)>> = HashMap::new();
        let mut last: Option<FrameKey> = None;
        let mut i = first;
        while i < file.count() {
            let e = self.meta.extent(file, i)?;
            if e.file_offset >= end {
                break;
            }
            let loc = self.meta.chunk(e.chunk)?.loc;
            let key = (loc.pack, loc.offset);
            if last != Some(key) && !self.cache.contains(&key) {
                missing.push(e.chunk);
                wanted
                    .entry(loc.pack)
                    .or_default()
                    .push((loc.offset, u64::from(loc.clen)));
            }
            last = Some(key);
            i += 1;
        }
        if missing.len() < 2 {
            return Ok(());
        }
        // A remote source fetches the frames of one read together.
        for (pack, ranges) in &wanted {
            self.blobs.want(pack, ranges);
        }
        let (a, b) = missing.split_at(missing.len() / 2);
        std::thread::scope(|s| {
            s.spawn(|| a.iter().for_each(|&c| drop(self.chunk(c))));
            b.iter().for_each(|&c| drop(self.chunk(c)));
        });
        Ok(())
    }

    /// Chunk `i` of the image, from a cached frame or its frame decompressed,
    /// checked against its id.
    fn chunk(&self, i: u32) -> Result<ChunkBytes> {
        let rec = self.meta.chunk(i)?;
        let key = (rec.loc.pack, rec.loc.offset);
        let r = match self.cache.get(&key) {
            Some(f) => f.chunk_bytes(&rec.id, &rec.loc).map_err(Error::Store),
            None => self.load(i, &rec).and_then(|f| {
                let f = Arc::new(f);
                let bytes = f.chunk_bytes(&rec.id, &rec.loc)?;
                // Only a frame that gave a good chunk is kept.
                self.cache.insert(key, f);
                Ok(bytes)
            }),
        };
        if let Err(e) = &r {
            (self.log)(&format!(
                "puzzle-fuse: read error: {}",
                puzzle_store::error::line(e)
            ));
        }
        r
    }

    fn load(&self, i: u32, rec: &puzzle_store::meta::ChunkRec) -> Result<Frame> {
        if !self.packs.contains(&rec.loc.pack) {
            return Err(Error::Store(puzzle_store::Error::Corrupt {
                what: "metadata blob".into(),
                why: format!("chunk {i} names an unlisted pack"),
            }));
        }
        Ok(Frame::read(self.blobs.as_ref(), &rec.id, &rec.loc)?)
    }

    fn xattr_inner(&self, ino: INodeNo, name: &OsStr, size: u32) -> Result<XattrReply> {
        let r = self.inode(ino)?;
        let xs = self.meta.xattrs(&r)?;
        let (_, v) = xs
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .ok_or(Error::NoXattr)?;
        sized(v.to_vec(), size)
    }

    fn listxattr_inner(&self, ino: INodeNo, size: u32) -> Result<XattrReply> {
        let r = self.inode(ino)?;
        let mut names = Vec::new();
        for (n, _) in self.meta.xattrs(&r)? {
            names.extend_from_slice(n);
            names.push(0);
        }
        sized(names, size)
    }
}

enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

fn sized(v: Vec<u8>, size: u32) -> Result<XattrReply> {
    if size == 0 {
        Ok(XattrReply::Size(v.len() as u32))
    } else if v.len() > size as usize {
        Err(Error::Range)
    } else {
        Ok(XattrReply::Data(v))
    }
}

fn time(secs: i64, nsec: u32) -> SystemTime {
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec))))
        .unwrap_or(UNIX_EPOCH)
}

/// The kernel's `new_encode_dev`: how FUSE carries rdev in 32 bits.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

impl fuser::Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        use fuser::InitFlags as F;
        // Each is optional: ask for what the kernel offers.
        for flag in [
            F::FUSE_DO_READDIRPLUS,
            F::FUSE_READDIRPLUS_AUTO,
            F::FUSE_CACHE_SYMLINKS,
            F::FUSE_PARALLEL_DIROPS,
            F::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(flag);
        }
        // Opens cost a round trip each (find opens every directory); the
        // kernel can skip them and assume keep_cache/cache_dir itself.
        self.no_open = config
            .add_capabilities(F::FUSE_NO_OPEN_SUPPORT | F::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_inner(parent, name) {
            Ok(a) => reply.entry(&TTL, &a, GEN),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.inode(ino) {
            Ok(r) => reply.attr(&TTL, &self.attr(&r)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.inode(ino).and_then(|r| {
            if r.kind != Kind::Symlink {
                return Err(Error::Invalid);
            }
            Ok(self.meta.symlink_target(&r)?)
        });
        match r {
            Ok(t) => reply.data(t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            // The mount is read-only: the kernel refuses writes before this.
            return reply.error(fuser::Errno::ENOSYS);
        }
        let r = self.inode(ino).and_then(|r| {
            if flags.acc_mode() != OpenAccMode::O_RDONLY
                || flags.0 & (libc::O_TRUNC | libc::O_APPEND) != 0
            {
                return Err(Error::ReadOnly);
            }
            if r.kind == Kind::Dir {
                return Err(Error::IsDir);
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_inner(ino, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_open {
            return reply.error(fuser::Errno::ENOSYS);
        }
        match self.dir(ino) {
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.dir(ino).and_then(|dir| {
            self.entries(&dir, offset, |next, name, rec| {
                let kind = self.attr(rec).kind;
                reply.add(
                    INodeNo(u64::from(rec.ino) + 1),
                    next,
                    kind,
                    OsStr::from_bytes(name),
                )
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.dir(ino).and_then(|dir| {
            self.entries(&dir, offset, |next, name, rec| {
                let attr = self.attr(rec);
                reply.add(attr.ino, next, OsStr::from_bytes(name), &TTL, &attr, GEN)
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The image's size as `df` shows it: its file contents in 4 KiB
        // blocks, and its inodes, none of them free (read-only).
        let blocks = *self.blocks.get_or_init(|| {
            puzzle_store::stats::logical_size(&self.meta)
                .map_or(0, |(_, bytes)| bytes.div_ceil(4096))
        });
        reply.statfs(blocks, 0, 0, self.meta.inode_count(), 0, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.no_xattrs {
            return reply.error(fuser::Errno::ENOSYS);
        }
        match self.xattr_inner(ino, name, size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if self.no_xattrs {
            return reply.error(fuser::Errno::ENOSYS);
        }
        match self.listxattr_inner(ino, size) {
            Ok(XattrReply::Size(n)) => reply.size(n),
            Ok(XattrReply::Data(d)) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.inode(ino) {
            Ok(_) if mask.contains(fuser::AccessFlags::W_OK) => {
                reply.error(errno(&Error::ReadOnly))
            }
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(errno(&Error::ReadOnly));
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&Error::ReadOnly));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&Error::ReadOnly));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_encode_like_the_kernel() {
        // /dev/null 1:3, a large minor, and the split-minor layout.
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(
            encode_dev(8, 0x12345),
            0x12345 & 0xff | 8 << 8 | (0x12300 << 12)
        );
    }

    #[test]
    fn times_before_the_epoch() {
        assert_eq!(
            time(-1, 500),
            UNIX_EPOCH - Duration::from_nanos(999_999_500)
        );
        assert_eq!(time(5, 7), UNIX_EPOCH + Duration::new(5, 7));
    }
}
