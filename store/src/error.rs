//! The store's error type.

use std::io;
use std::path::PathBuf;

use puzzle_chunker::ChunkId;

/// Everything that can go wrong in the store. Messages are one lowercase line;
/// the CLI adds context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{}: {source}", show_os_path(path))]
    Io { path: PathBuf, source: io::Error },
    #[error("{0} is not a puzzle store (no puzzle.json); build an image into it first")]
    NotAStore(PathBuf),
    #[error("store {path}: {msg}")]
    BadStore { path: PathBuf, msg: String },
    #[error("store uses chunk parameters {stored}, refusing to mix with {requested}")]
    ParamsMismatch { stored: String, requested: String },
    #[error("image {0:?} not found in the store")]
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
    #[error("index database {path}: {source}")]
    Index { path: PathBuf, source: sled::Error },
    #[error("extract target {path}: {why}")]
    Target { path: PathBuf, why: String },
    #[error("{what}: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
