//! puzzle's read-only FUSE filesystem over one stored image.
//!
//! - [`ImageFs`]: a [`fuser::Filesystem`] serving one image from its
//!   metadata blob (decompressed into memory, or mapped if stored plain) and
//!   its packs (never the sled index).
//!   FUSE inode numbers are metadata inode indices plus one (the root is 1),
//!   so they are stable and hard links share one inode.
//! - [`ChunkCache`]: decompressed frames (each holding consecutive chunks,
//!   every chunk BLAKE3-checked on first read), a byte-bounded LRU keyed by
//!   pack and frame offset and shared by every open file (and every image
//!   served by one process).
//! - [`Trace`]: the reads of a mount in first-access order
//!   ([`ImageFs::trace`]), for `mount --trace`.
//! - [`mount`]: mounts an [`ImageFs`] with kernel caching on and returns a
//!   [`Mounted`] handle that unmounts on [`Mounted::unmount`] or drop.
//!
//! ```no_run
//! use std::sync::Arc;
//! use puzzle_fuse::{mount, ChunkCache, ImageFs, MountOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = puzzle_store::Store::open("/var/lib/puzzle".as_ref())?;
//! let image = puzzle_store::image::open_mapped(&store, "app:1", true)?;
//! let cache = Arc::new(ChunkCache::new(256 << 20));
//! let log: puzzle_fuse::Log = Arc::new(|line: &str| eprintln!("{line}"));
//! let fs = ImageFs::new(image, Arc::new(store.blob_reader()), cache, log)?;
//! let mounted = mount(fs, "/mnt/app".as_ref(), &MountOptions::default())?;
//! // ... serve until told to stop ...
//! mounted.unmount()?;
//! # Ok(()) }
//! ```

mod cache;
mod fs;

use std::io;
use std::path::{Path, PathBuf};

pub use cache::ChunkCache;
pub use fs::{ImageFs, Trace};

/// Where the filesystem reports problems (a corrupt chunk, a missing pack):
/// one line per call. The library never prints.
pub type Log = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Errors of the filesystem and of mounting it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no inode {0}")]
    NoInode(u64),
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("invalid request")]
    Invalid,
    #[error("no such attribute")]
    NoXattr,
    #[error("buffer too small")]
    Range,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error(transparent)]
    Store(#[from] puzzle_store::Error),
    #[error("mounting on {}", path.display())]
    Mount { path: PathBuf, source: io::Error },
    /// Opening /dev/fuse or mounting on `path` was refused (EACCES/EPERM).
    /// The OS error is part of the message, not a source.
    #[error("{os}: mounting needs root, or read and write access to /dev/fuse")]
    NoPermission { path: PathBuf, os: io::Error },
}

/// The one mapping from errors to what the kernel is told.
pub(crate) fn errno(e: &Error) -> fuser::Errno {
    use fuser::Errno as E;
    match e {
        Error::NoInode(_) | Error::NotFound => E::ENOENT,
        Error::NotDir => E::ENOTDIR,
        Error::IsDir => E::EISDIR,
        Error::Invalid => E::EINVAL,
        Error::NoXattr => E::NO_XATTR,
        Error::Range => E::ERANGE,
        Error::ReadOnly => E::EROFS,
        Error::Store(puzzle_store::Error::Io { source, .. })
        | Error::Mount { source, .. }
        | Error::NoPermission { os: source, .. } => {
            source.raw_os_error().map(E::from_i32).unwrap_or(E::EIO)
        }
        Error::Store(_) => E::EIO,
    }
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Threads serving requests (several reads and lookups at once).
    pub threads: usize,
    /// Shown as the mount's source (`findmnt`, `df`).
    pub fsname: String,
    /// Let other users than the mounting one in (`allow_other`).
    pub allow_other: bool,
    /// Honour setuid and setgid bits (`suid`; the default is `nosuid`).
    pub suid: bool,
    /// Let device nodes act as devices (`dev`; the default is `nodev`).
    pub dev: bool,
    /// Kernel readahead for the mount, in KiB (`/sys/class/bdi/*/read_ahead_kb`),
    /// set after mounting; 0 leaves the kernel default.
    pub read_ahead_kb: u32,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 4,
            fsname: "puzzle".into(),
            allow_other: false,
            suid: false,
            dev: false,
            read_ahead_kb: 1024,
        }
    }
}

/// A live mount. Dropping it unmounts too, but [`Mounted::unmount`] reports errors.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    dir: PathBuf,
}

impl Mounted {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// False once the filesystem stopped being served (for example after an
    /// external `umount`).
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts (if still mounted) and waits for the serving threads.
    pub fn unmount(mut self) -> Result<(), Error> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        if s.guard.is_finished() {
            return s.join().map_err(|source| Error::Mount {
                path: self.dir.clone(),
                source,
            });
        }
        match s.umount_and_join() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Something still uses the tree (an open file, a cwd): detach
                // it now; the kernel drops it when the last user lets go.
                rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH).map_err(
                    |e| Error::Mount {
                        path: self.dir.clone(),
                        source: e.into(),
                    },
                )
            }
            r => r.map_err(|source| Error::Mount {
                path: self.dir.clone(),
                source,
            }),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// Mounts `fs` read-only on `dir` and starts serving it on background threads.
/// Returns once the kernel has accepted the mount.
pub fn mount(fs: ImageFs, dir: &Path, opts: &MountOptions) -> Result<Mounted, Error> {
    use fuser::MountOption as O;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        O::FSName(opts.fsname.clone()),
        O::Subtype("puzzle".into()),
        O::RO,
        O::DefaultPermissions,
        O::NoAtime,
        if opts.suid { O::Suid } else { O::NoSuid },
        if opts.dev { O::Dev } else { O::NoDev },
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = opts.threads > 1;
    let err = |source: io::Error| {
        let path = dir.to_path_buf();
        match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => Error::NoPermission { path, os: source },
            _ => Error::Mount { path, source },
        }
    };
    let session = fuser::spawn_mount(fs, dir, &config).map_err(err)?;
    let mounted = Mounted {
        session: Some(session),
        dir: dir.to_path_buf(),
    };
    if opts.read_ahead_kb > 0 {
        // Best effort: a larger readahead makes the kernel send 1 MiB reads.
        let _ = set_read_ahead(dir, opts.read_ahead_kb);
    }
    Ok(mounted)
}

/// Sets the readahead of the backing device info of the filesystem at `dir`.
fn set_read_ahead(dir: &Path, kb: u32) -> io::Result<()> {
    let st = rustix::fs::stat(dir)?;
    let dev = st.st_dev;
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    std::fs::write(path, format!("{kb}\n"))
}
