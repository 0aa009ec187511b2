//! The store's error type.

use std::io;
use std::path::PathBuf;

use puzzle_chunker::ChunkId;

/// Everything that can go wrong in the store. Messages are one lowercase line
/// without the underlying cause, which [`std::error::Error::source`] returns
/// (print the chain, as [`line`] or anyhow's `{:#}` do, to see it); the CLI
/// adds context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}", show_os_path(path))]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "no puzzle store at {}: build an image into it, `puzzle init` it, or pass --store DIR (or set PUZZLE_STORE) to use another",
        show_os_path(.0)
    )]
    NotAStore(PathBuf),
    #[error("store {path}: {msg}")]
    BadStore { path: PathBuf, msg: String },
    #[error("store uses chunk parameters {stored}, refusing to mix with {requested}")]
    ParamsMismatch { stored: String, requested: String },
    #[error("image {0:?} not found in the store; `puzzle images` lists the stored images")]
    ImageNotFound(String),
    /// Stopped on request (a signal), before anything was kept.
    #[error("interrupted")]
    Interrupted,
    #[error("invalid image name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("chunk {0} is not in the store")]
    ChunkNotFound(ChunkId),
    #[error("chunk {id} in pack {pack} is corrupt: {why}")]
    CorruptChunk {
        id: ChunkId,
        pack: String,
        why: String,
    },
    #[error("blob {digest} is missing")]
    BlobMissing { digest: String },
    #[error("blob {digest} is corrupt: {why}")]
    CorruptBlob { digest: String, why: String },
    #[error("corrupt {what}: {why}")]
    Corrupt { what: String, why: String },
    #[error("entry {path}: {why}")]
    BadEntry { path: String, why: String },
    #[error("index database {path}")]
    Index { path: PathBuf, source: sled::Error },
    #[error("extract target {path}: {why}")]
    Target { path: PathBuf, why: String },
    #[error("{what}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    /// A directory puzzle will not open or create a store in.
    #[error("{}", unusable_message(path, *why))]
    Unusable { path: PathBuf, why: Unusable },
}

/// Why a directory cannot be a store (see `Error::Unusable`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unusable {
    /// The path exists and is not a directory.
    NotADirectory,
    /// An OCI layout that puzzle did not create.
    ForeignLayout,
    /// A puzzle store whose `puzzle.json` is gone.
    ConfigLost,
    /// A directory with other contents.
    NotEmpty,
    /// `puzzle.json` is there but does not parse.
    ConfigDamaged,
    /// `puzzle.json` is there: nothing to recover.
    HasConfig,
}

fn unusable_message(path: &std::path::Path, why: Unusable) -> String {
    let p = show_os_path(path);
    match why {
        Unusable::NotADirectory => format!(
            "store {p} is not a directory: pass --store a new or empty directory, or a puzzle store"
        ),
        Unusable::ForeignLayout => format!(
            "{p} is an OCI layout that puzzle did not create, so puzzle will not write to it: \
             pass --store a new or empty directory (`puzzle build oci:{p}:TAG` converts its images)"
        ),
        Unusable::ConfigLost => format!(
            "{p} is a puzzle store missing its puzzle.json: \
             restore it from the store's manifests with `puzzle init --recover {p}`"
        ),
        Unusable::ConfigDamaged => format!(
            "{p}/puzzle.json is damaged: \
             restore it from the store's manifests with `puzzle init --recover {p}`"
        ),
        Unusable::NotEmpty => format!(
            "{p} is not empty and not a puzzle store: \
             pass --store a new or empty directory, or a puzzle store"
        ),
        Unusable::HasConfig => {
            format!("{p} already has its puzzle.json: nothing to recover")
        }
    }
}

impl Error {
    /// Whether this failed because the disk (or the user's quota) is full.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => crate::layout::is_out_of_space_io(source),
            Error::Index {
                source: sled::Error::Io(e),
                ..
            } => crate::layout::is_out_of_space_io(e),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `e` and each of its causes, `: `-separated: the one-line message of an
/// error kept as text (a `verify` problem, a log line).
pub fn line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Attach a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

/// A filesystem path for a one-line message: control characters escaped.
pub fn show_os_path(p: &std::path::Path) -> String {
    let s = p.to_string_lossy();
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.into_owned()
    }
}

/// Lossy, escaped rendering of a raw path for messages.
pub fn show_path(p: &[u8]) -> String {
    let s = String::from_utf8_lossy(p);
    if s.starts_with('/') {
        s.escape_debug().to_string()
    } else {
        format!("/{}", s.escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_printed_once() {
        // ENOTDIR
        let os = || io::Error::from_raw_os_error(20);
        let e = Error::Io {
            path: "/x/puzzle.json".into(),
            source: os(),
        };
        assert_eq!(line(&e), format!("/x/puzzle.json: {}", os()));
        let e = Error::Json {
            what: "puzzle.json".into(),
            source: serde_json::from_slice::<u8>(b"x").unwrap_err(),
        };
        let l = line(&e);
        assert_eq!(l.matches("expected value").count(), 1, "{l}");
    }
}
