//! Frames fetched by lazy mounts, kept in the store (docs/FORMAT.md, "Lazy
//! mounts"): one sparse file per remote pack, `lazy/<hex of its digest>`,
//! as long as the pack, holding the frames fetched so far at their offsets
//! in the pack and holes everywhere else.
//!
//! Which frames a file holds is what the file system says (`SEEK_DATA` and
//! `SEEK_HOLE`); nothing else records it, so there is nothing to keep
//! consistent. That answer is a hint: a frame is always checked (every
//! chunk against its BLAKE3 id) before it is served, and one that fails is
//! punched out and fetched again. Files are written without fsync for the
//! same reason: a frame lost to a crash is only fetched again.
//!
//! With a cap, the bytes held are bounded: past it, files this process has
//! not touched go first (oldest modification first), then the frames it
//! touched, least recently used first. Whatever the cap, a frame is not
//! kept when the file system would be left with less than 256 MiB or 5 %
//! of it free.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use puzzle_store::BlobDigest;
use rustix::fs::{FallocateFlags, SeekFrom};

/// Free bytes a kept frame must leave on the file system...
pub const MIN_FREE: u64 = 256 << 20;
/// ... and the share of its size, in percent.
pub const MIN_FREE_PERCENT: u64 = 5;

/// A frame: its pack and offset in the pack.
pub type FrameKey = (BlobDigest, u64);

/// The `lazy/` directory of a store.
pub struct Kept {
    dir: PathBuf,
    cap: Option<u64>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    files: HashMap<BlobDigest, Arc<File>>,
    /// Bytes the files hold (allocated), as counted at open plus what was
    /// written and minus what was dropped since.
    used: u64,
    /// Frames this process wrote or read: last-use tick and length.
    touched: HashMap<FrameKey, (u64, u64)>,
    /// Tick -> frame, least recently used first.
    order: BTreeMap<u64, FrameKey>,
    tick: u64,
}

/// Where the frames of pack `pack` are kept under `dir`.
pub fn path(dir: &Path, pack: &BlobDigest) -> PathBuf {
    dir.join(pack.hex())
}

/// The kept files under `dir` (`lazy/` of a store): pack, allocated bytes,
/// modification time in seconds. None when there is no such directory.
pub fn list(dir: &Path) -> io::Result<Vec<(BlobDigest, u64, i64)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        let name = e.file_name();
        let Some(pack) = name
            .to_str()
            .and_then(|n| format!("sha256:{n}").parse::<BlobDigest>().ok())
        else {
            continue;
        };
        let m = e.metadata()?;
        out.push((pack, m.blocks() * 512, m.mtime()));
    }
    Ok(out)
}

impl Kept {
    /// The kept frames under `dir`, created if missing, holding at most
    /// `cap` bytes (when given).
    pub fn open(dir: PathBuf, cap: Option<u64>) -> io::Result<Kept> {
        fs::create_dir_all(&dir)?;
        let used = list(&dir)?.iter().map(|f| f.1).sum();
        Ok(Kept {
            dir,
            cap,
            inner: Mutex::new(Inner {
                used,
                ..Inner::default()
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes held by all kept files.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The open file of `pack`, opened (and created `size` bytes long, all
    /// hole, when `create`) if need be; None if there is none.
    fn file(&self, pack: &BlobDigest, create: Option<u64>) -> io::Result<Option<Arc<File>>> {
        if let Some(f) = self.lock().files.get(pack) {
            return Ok(Some(f.clone()));
        }
        let p = path(&self.dir, pack);
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(create.is_some())
            .truncate(false)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(size) = create {
            if f.metadata()?.len() != size {
                f.set_len(size)?;
            }
        }
        let f = Arc::new(f);
        Ok(Some(self.lock().files.entry(*pack).or_insert(f).clone()))
    }

    /// Whether the file system holds data for all of `off..off + len` of
    /// `pack` (a hint: see the module docs).
    pub fn has(&self, pack: &BlobDigest, off: u64, len: u64) -> bool {
        let Ok(Some(f)) = self.file(pack, None) else {
            return false;
        };
        let data = rustix::fs::seek(&*f, SeekFrom::Data(off));
        let hole = rustix::fs::seek(&*f, SeekFrom::Hole(off));
        matches!((data, hole), (Ok(d), Ok(h)) if d == off && h >= off + len)
    }

    /// Reads `buf.len()` bytes of `pack` at `off`, whether kept or not
    /// (holes read as zeros).
    pub fn read_raw(&self, pack: &BlobDigest, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = self
            .file(pack, None)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        f.read_exact_at(buf, off)
    }

    /// Reads `buf.len()` bytes of `pack` at `off`; false if nothing is kept
    /// there.
    pub fn read(&self, pack: &BlobDigest, off: u64, buf: &mut [u8]) -> io::Result<bool> {
        if !self.has(pack, off, buf.len() as u64) {
            return Ok(false);
        }
        let Some(f) = self.file(pack, None)? else {
            return Ok(false);
        };
        f.read_exact_at(buf, off)?;
        self.touch((*pack, off), buf.len() as u64, 0);
        Ok(true)
    }

    /// Keeps a checked frame of `pack` (`size` bytes long) at `off`, then
    /// drops what is over the cap (never this frame). A frame that would
    /// leave the file system with less than [`MIN_FREE`] bytes, or less
    /// than [`MIN_FREE_PERCENT`] % of its size, free is not kept (lazy
    /// mounts never fill the disk): returns false.
    pub fn write(&self, pack: &BlobDigest, size: u64, off: u64, bytes: &[u8]) -> io::Result<bool> {
        if let Ok(st) = rustix::fs::statvfs(&self.dir) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            let floor = MIN_FREE.max(total / 100 * MIN_FREE_PERCENT);
            if free < floor.saturating_add(bytes.len() as u64) {
                return Ok(false);
            }
        }
        let f = self
            .file(pack, Some(size))?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        f.write_all_at(bytes, off)?;
        let len = bytes.len() as u64;
        self.touch((*pack, off), len, len);
        self.enforce_cap(&(*pack, off));
        Ok(true)
    }

    /// Punches out a frame (one that failed its check, or evicted).
    pub fn forget(&self, pack: &BlobDigest, off: u64, len: u64) {
        if let Ok(Some(f)) = self.file(pack, None) {
            let _ = rustix::fs::fallocate(
                &*f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                off,
                len,
            );
        }
        let mut g = self.lock();
        if let Some((tick, held)) = g.touched.remove(&(*pack, off)) {
            g.order.remove(&tick);
            g.used = g.used.saturating_sub(held);
        }
    }

    /// Marks a frame used now; `added` bytes were written for it.
    fn touch(&self, key: FrameKey, len: u64, added: u64) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        inner.used += added;
        if let Some((old, _)) = inner.touched.insert(key, (tick, len)) {
            inner.order.remove(&old);
        }
        inner.order.insert(tick, key);
    }

    /// Drops kept bytes until they fit the cap: files nobody here touched
    /// first (oldest first), then frames, least recently used first.
    fn enforce_cap(&self, protect: &FrameKey) {
        let Some(cap) = self.cap else { return };
        if self.used() <= cap {
            return;
        }
        let mine: std::collections::HashSet<BlobDigest> =
            self.lock().touched.keys().map(|k| k.0).collect();
        let mut others: Vec<(BlobDigest, u64, i64)> = list(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|f| !mine.contains(&f.0))
            .collect();
        others.sort_by_key(|f| f.2);
        for (pack, held, _) in others {
            if self.used() <= cap {
                return;
            }
            if fs::remove_file(path(&self.dir, &pack)).is_ok() {
                let mut g = self.lock();
                g.files.remove(&pack);
                g.used = g.used.saturating_sub(held);
            }
        }
        loop {
            let victim = {
                let g = self.lock();
                if g.used <= cap {
                    return;
                }
                g.order
                    .values()
                    .find(|k| *k != protect)
                    .map(|k| (*k, g.touched[k].1))
            };
            let Some(((pack, off), len)) = victim else {
                return;
            };
            self.forget(&pack, off, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8) -> BlobDigest {
        BlobDigest::of(&[n])
    }

    #[test]
    fn a_written_frame_is_found_and_a_hole_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let k = Kept::open(tmp.path().join("lazy"), None).unwrap();
        let p = pack(1);
        let size = 1 << 20;
        assert!(!k.has(&p, 0, 10));
        let frame = vec![7u8; 40_000];
        k.write(&p, size, 409_600, &frame).unwrap();
        assert!(k.has(&p, 409_600, 40_000));
        assert!(!k.has(&p, 0, 4096), "a hole before the frame");
        assert!(!k.has(&p, 409_600, 200_000), "runs past the frame");
        let mut buf = vec![0u8; 40_000];
        assert!(k.read(&p, 409_600, &mut buf).unwrap());
        assert_eq!(buf, frame);
        assert!(!k.read(&p, 0, &mut buf).unwrap());
        assert_eq!(fs::metadata(path(k.dir(), &p)).unwrap().len(), size);
        k.forget(&p, 409_600, 40_000);
        assert!(!k.has(&p, 409_600, 40_000), "punched out");
        // Another process opening the directory sees what was kept.
        k.write(&p, size, 0, &frame).unwrap();
        let again = Kept::open(tmp.path().join("lazy"), None).unwrap();
        assert!(again.has(&p, 0, 40_000));
        assert!(again.used() >= 40_000);
    }

    #[test]
    fn the_cap_drops_untouched_files_then_the_least_recently_used_frames() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lazy");
        let old = Kept::open(dir.clone(), None).unwrap();
        old.write(&pack(9), 1 << 20, 0, &vec![1u8; 100_000])
            .unwrap();
        drop(old);
        let k = Kept::open(dir.clone(), Some(250_000)).unwrap();
        let (a, b) = (pack(1), pack(2));
        k.write(&a, 1 << 20, 0, &vec![2u8; 100_000]).unwrap();
        k.write(&a, 1 << 20, 200_704, &vec![3u8; 100_000]).unwrap();
        // Over the cap: the file nobody here touched goes first.
        assert!(!path(&dir, &pack(9)).exists());
        assert!(k.has(&a, 0, 100_000) && k.has(&a, 200_704, 100_000));
        // Reading the first frame makes the second the least recently used.
        let mut buf = vec![0u8; 100_000];
        assert!(k.read(&a, 0, &mut buf).unwrap());
        k.write(&b, 1 << 20, 0, &vec![4u8; 100_000]).unwrap();
        assert!(k.has(&a, 0, 100_000), "recently read");
        assert!(!k.has(&a, 200_704, 100_000), "least recently used: dropped");
        assert!(k.has(&b, 0, 100_000), "just written: never dropped");
        assert!(k.used() <= 250_000 + 8192, "{}", k.used());
    }
}
