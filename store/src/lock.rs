//! The store's writer lock, pins, and the space reserve.
//!
//! - [`StoreLock`]: one writer at a time (`STORE/lock`, an exclusive
//!   `flock`; the holder writes its PID there). Taking it empties `tmp/`,
//!   which only lock holders write to.
//! - [`Pin`]: a shared `flock` on `pins/<manifest hex>` that keeps an image
//!   safe from gc while it is read.
//! - `STORE/reserve`: [`RESERVE_BYTES`] held back so that rm, gc and verify
//!   have room on a full disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::digest::BlobDigest;
use crate::error::{Error, IoContext, Result};
use crate::layout::{ImageRef, Store};

/// Size of `reserve`, the space a writer gets back on a full disk: enough
/// to open and flush the index and rewrite `index.json`, so that `rm` and
/// `gc` work when the disk is full (docs/FORMAT.md, "Store layout").
pub const RESERVE_BYTES: u64 = 8 << 20;
const RESERVE_FILE: &str = "reserve";

/// Keeps an image's manifest (and so every blob it references) safe from
/// `gc` while held: a shared `flock` on `pins/<manifest hex>`. Mounts and
/// extracts hold one; gc treats every pin it cannot lock exclusively as a root.
/// On a store this process cannot write (a read-only mount, another user's
/// store) no pin file can be made: the pin is then not held
/// ([`Pin::is_held`]), and a gc run by someone who can write is not held off.
#[derive(Debug)]
pub struct Pin {
    pub manifest: BlobDigest,
    _file: Option<File>,
}

impl Pin {
    /// False when the store could not be written to take the pin.
    pub fn is_held(&self) -> bool {
        self._file.is_some()
    }
}

/// Holds the store's writer lock until dropped. Dropping it first puts
/// the store's `reserve` back if it is missing, as large as the disk
/// allows up to [`RESERVE_BYTES`].
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    root: PathBuf,
    waited: Duration,
    tmp: TmpFiles,
    released: Option<u64>,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Best effort: without room, the next writer tries again.
        let _ = restore_reserve(&self.root);
    }
}

impl StoreLock {
    /// The bytes free on the store's filesystem when the lock was taken,
    /// if they were below [`RESERVE_BYTES`] and the store's `reserve` was
    /// deleted to give this writer room.
    pub fn released_reserve(&self) -> Option<u64> {
        self.released
    }

    /// How long taking the lock waited for another writer.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// What `tmp/` held when the lock was taken: left by a writer that
    /// crashed, and removed unless [`LockOptions::keep_tmp`].
    pub fn tmp(&self) -> TmpFiles {
        self.tmp
    }
}

/// Files found in `tmp/` (directories count their contents).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TmpFiles {
    pub files: u64,
    pub bytes: u64,
}

/// How long [`Store::lock_with`] waits before it reports the wait.
pub const LOCK_REPORT_AFTER: Duration = Duration::from_secs(1);

/// How [`Store::lock_with`] takes the writer lock.
#[derive(Default)]
pub struct LockOptions<'a> {
    /// Leave what is in `tmp/` (it is still measured): for a dry run.
    pub keep_tmp: bool,
    /// Called once when another process still holds the lock after
    /// [`LOCK_REPORT_AFTER`], with the holder's PID if it recorded one.
    pub on_wait: Option<&'a mut dyn FnMut(Option<u32>)>,
    /// Waiting gives up with [`Error::Interrupted`] once this is set.
    pub cancel: Option<&'a AtomicBool>,
    /// Delete the store's `reserve` when less than [`RESERVE_BYTES`] is
    /// free, to have room on a full disk: for commands that free space or
    /// only check (rm, gc, verify), never for one that adds data (a build
    /// that used it could fill the disk with no reserve left for `rm`).
    pub use_reserve: bool,
}

impl Store {
    /// Takes the writer lock, waiting for other writers. Only lock holders
    /// write to `tmp/`, so whatever is there now is left by a writer that
    /// crashed: it is removed.
    pub fn lock(&self) -> Result<StoreLock> {
        self.lock_with(LockOptions::default())
    }

    /// [`Store::lock`], reporting a long wait and giving up when cancelled
    /// (see [`LockOptions`]). The holder's PID is written to the lock file,
    /// so a process waiting for it can say whom it waits for.
    pub fn lock_with(&self, mut opts: LockOptions<'_>) -> Result<StoreLock> {
        let path = self.root().join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        let started = Instant::now();
        let mut reported = false;
        let mut nap = Duration::from_millis(1);
        // Polled rather than blocking in flock, so that a cancel is seen
        // and the wait can be reported while it lasts.
        let waited = loop {
            match file.try_lock() {
                Ok(()) => break started.elapsed(),
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::Io { path, source: e }),
            }
            if opts.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) {
                return Err(Error::Interrupted);
            }
            if !reported && started.elapsed() >= LOCK_REPORT_AFTER {
                reported = true;
                if let Some(f) = opts.on_wait.as_mut() {
                    f(lock_holder(&path));
                }
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(20));
        };
        // Written over the previous PID before the file is cut to length,
        // so no new block is needed on a full disk; the PID is only
        // informative, so a disk with no room at all does not stop us.
        let pid = format!("{}\n", std::process::id());
        match file
            .write_all_at(pid.as_bytes(), 0)
            .and_then(|()| file.set_len(pid.len() as u64))
        {
            Err(e) if !is_out_of_space_io(&e) => return Err(Error::Io { path, source: e }),
            _ => {}
        }
        let tmp = self.clean_tmp(opts.keep_tmp)?;
        // On a (nearly) full disk, the reserve gives this writer room to
        // open the index and rewrite index.json; it comes back when the
        // lock is dropped, if there is room for it then.
        let reserve = self.root().join(RESERVE_FILE);
        let released = match self.free_bytes() {
            Some(free) if opts.use_reserve && free < RESERVE_BYTES && reserve.exists() => {
                fs::remove_file(&reserve).at(&reserve)?;
                Some(free)
            }
            _ => None,
        };
        Ok(StoreLock {
            _file: file,
            root: self.root().to_path_buf(),
            waited,
            tmp,
            released,
        })
    }

    /// Bytes free to this process on the store's filesystem, if known.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(self.root())
    }

    /// Measures `tmp/` and, unless `keep`, empties it.
    fn clean_tmp(&self, keep: bool) -> Result<TmpFiles> {
        let dir = self.tmp_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir).at(&dir)?;
                return Ok(TmpFiles::default());
            }
            Err(e) => {
                return Err(Error::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        let mut found = TmpFiles::default();
        for e in rd {
            let e = e.at(&dir)?;
            let path = e.path();
            let is_dir = e.file_type().at(&path)?.is_dir();
            tmp_usage(&path, is_dir, &mut found);
            if keep {
                continue;
            }
            let r = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io { path, source: e })
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// Resolves `name` and pins its manifest so that gc cannot remove it:
    /// pin first, then check the tag still names that manifest (a gc or a
    /// rebuild may have moved it in between; then try again). gc reads
    /// `index.json` and the pins under the writer lock, and checks pins again
    /// before deleting, so a manifest that is still tagged once pinned is safe.
    pub fn pin_image(&self, name: &str) -> Result<(ImageRef, Pin)> {
        let mut r = self.resolve(name)?;
        loop {
            let pin = self.pin(&r.manifest.digest)?;
            let now = self.resolve(name)?;
            if now.manifest.digest == r.manifest.digest {
                return Ok((r, pin));
            }
            drop(pin);
            r = now;
        }
    }

    /// Pins `manifest` until the returned [`Pin`] is dropped (see [`Pin`]).
    pub fn pin(&self, manifest: &BlobDigest) -> Result<Pin> {
        let unheld = Pin {
            manifest: *manifest,
            _file: None,
        };
        let dir = self.root().join("pins");
        match fs::create_dir_all(&dir) {
            Err(e) if is_read_only(&e) => return Ok(unheld),
            r => r.at(&dir)?,
        }
        let path = dir.join(manifest.hex());
        // `pinned()` may unlink a pin file it found unheld between our open
        // and our lock: then we hold an orphan inode. Retry until the file we
        // locked is the one at the path.
        loop {
            let f = match open_lock(&path, false) {
                Err(Error::Io { source, .. }) if is_read_only(&source) => return Ok(unheld),
                r => r?,
            };
            let held = f.metadata().at(&path)?;
            match fs::metadata(&path) {
                Ok(now) if same_file(&now, &held) => {
                    return Ok(Pin {
                        manifest: *manifest,
                        _file: Some(f),
                    })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Io { path, source: e }),
            }
        }
    }

    /// Manifests pinned by a live process right now. Stale pin files (no
    /// holder) are removed on the way.
    pub fn pinned(&self) -> Result<Vec<BlobDigest>> {
        let dir = self.root().join("pins");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.at(&dir)?;
            let Some(d) = e.file_name().to_str().and_then(BlobDigest::from_hex) else {
                continue;
            };
            let path = e.path();
            let f = match OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                Err(_) => continue,
            };
            match f.try_lock() {
                Ok(()) => {
                    // Nobody holds it: stale. Remove while we hold the lock.
                    let _ = fs::remove_file(&path);
                }
                Err(std::fs::TryLockError::WouldBlock) => out.push(d),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::Io { path, source: e }),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The errors that mean "this process cannot write here" (a read-only
/// mount, or a directory owned by someone else).
pub(crate) fn is_read_only(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS | libc::EACCES | libc::EPERM)
    )
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_out_of_space_io(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// Bytes free to this process on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Puts `root/reserve` back if it is missing: [`RESERVE_BYTES`], or what
/// the disk has left if that is less (allocated, not sparse). Made in
/// `tmp/` and renamed, so a reserve cut short is never in place (the caller
/// holds the writer lock).
fn restore_reserve(root: &Path) -> std::io::Result<()> {
    let dest = root.join(RESERVE_FILE);
    if dest.exists() {
        return Ok(());
    }
    let len = free_bytes(root).unwrap_or(0).min(RESERVE_BYTES) & !0xfff;
    if len == 0 {
        return Ok(());
    }
    let tmp = tempfile::Builder::new()
        .prefix("reserve-")
        .tempfile_in(root.join("tmp"))?;
    match rustix::fs::fallocate(tmp.as_file(), rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
            // Written out where fallocate is not supported.
            let zeros = vec![0u8; 64 << 10];
            let mut f = tmp.as_file();
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64);
                f.write_all(&zeros[..n as usize])?;
                left -= n;
            }
        }
        Err(e) => return Err(e.into()),
    }
    tmp.persist(&dest).map_err(|e| e.error)?;
    Ok(())
}

/// The PID the writer lock's holder recorded in `path`, if any.
pub(crate) fn lock_holder(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Adds the files under `path` (a file, or a directory when `is_dir`) to
/// `found`; what vanishes meanwhile is not counted.
fn tmp_usage(path: &Path, is_dir: bool, found: &mut TmpFiles) {
    if !is_dir {
        if let Ok(m) = fs::symlink_metadata(path) {
            found.files += 1;
            found.bytes += m.len();
        }
        return;
    }
    let Ok(rd) = fs::read_dir(path) else { return };
    for e in rd.flatten() {
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        tmp_usage(&e.path(), is_dir, found);
    }
}

pub(crate) fn lock_file(root: &Path, exclusive: bool) -> Result<File> {
    open_lock(&root.join("lock"), exclusive)
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

/// Opens (creating) `path` and takes an flock on it, waiting for it.
fn open_lock(path: &Path, exclusive: bool) -> Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at(path)?;
    if exclusive { f.lock() } else { f.lock_shared() }.at(path)?;
    Ok(f)
}
