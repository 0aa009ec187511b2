//! The crate's one error type.
//!
//! Every variant names the object involved (a path, a blob digest, a file in an
//! image). `Display` is one lowercase line *without* the underlying cause: the
//! cause is returned by [`std::error::Error::source`], so print the whole chain
//! (anyhow's `{:#}`) to see it.
//!
//! Errors raised inside a [`Read`](std::io::Read) implementation (see
//! [`crate::source::LayerReader`]) travel wrapped in an [`io::Error`];
//! [`Error::from_io`] gets them back.

use std::{io, path::PathBuf};

/// Errors of puzzle-oci.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on `path` failed.
    #[error("i/o error on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A JSON document (`what`, e.g. "index.json of oci:./img") did not parse.
    #[error("parsing {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// The content of `what` does not hash to its expected digest.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    /// The content of `what` does not have its expected size in bytes.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },

    /// `what` is larger than we are willing to hold in memory.
    #[error("{what} is too large: {size} bytes, limit {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },

    /// A blob referenced by a manifest or index is absent from `location`.
    #[error("blob {digest} is missing from {location}")]
    BlobMissing { digest: String, location: String },

    /// A file named by an archive's own manifest is absent from the archive.
    #[error("{} has no member {name}", archive.display())]
    MemberMissing { archive: PathBuf, name: String },

    /// A tag, reference or platform was not found; the message lists what was there.
    #[error("{0}")]
    NotFound(String),

    /// Malformed input that parsed, or a malformed argument.
    #[error("{0}")]
    Invalid(String),

    /// Valid input that this crate does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A compressed layer stream (`what`) is corrupt or truncated.
    #[error("decompressing {what}")]
    Decompress {
        what: String,
        #[source]
        source: io::Error,
    },

    /// A tar entry of a layer (`entry`, a path) is refused.
    #[error("entry {entry}: {why}")]
    Entry { entry: String, why: String },

    /// The layer's tar stream itself is malformed at `at`.
    #[error("tar stream at {at}")]
    Tar {
        at: String,
        #[source]
        source: io::Error,
    },

    /// Storing a converted layer failed.
    #[error(transparent)]
    Store(#[from] puzzle_store::Error),

    /// Converting layer `number` (from 1, in the image) failed.
    #[error("layer {number} ({digest})")]
    Layer {
        number: usize,
        digest: String,
        #[source]
        source: Box<Error>,
    },

    /// A build was stopped ([`crate::build::BuildOptions::cancel`]).
    #[error("interrupted")]
    Cancelled,
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Recovers an [`Error`] that travelled inside an [`io::Error`] (as returned by
    /// [`crate::source::LayerReader`]'s `read`, possibly through a tar parser).
    /// Gives the `io::Error` back unchanged when it does not carry one.
    pub fn from_io(err: io::Error) -> std::result::Result<Error, io::Error> {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            match err.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(inner)) => Ok(*inner),
                // Unreachable after the `is` check above; keep a sane fallback anyway.
                Some(Err(other)) => Err(io::Error::other(other)),
                None => Err(io::Error::other("error vanished")),
            }
        } else {
            Err(err)
        }
    }

    /// Whether this comes from a full disk (or quota).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::Io { source, .. } => puzzle_store::layout::is_out_of_space_io(source),
            Error::Store(e) => e.is_out_of_space(),
            Error::Layer { source, .. } => source.is_out_of_space(),
            _ => false,
        }
    }

    /// The closest `io::ErrorKind` for wrapping this error in an `io::Error`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            Error::Io { source, .. } => source.kind(),
            Error::BlobMissing { .. } | Error::MemberMissing { .. } | Error::NotFound(_) => {
                io::ErrorKind::NotFound
            }
            Error::Unsupported(_) => io::ErrorKind::Unsupported,
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// A copy of this error, for readers that must report one failure more than
    /// once. Causes that cannot be cloned are rebuilt from their kind and message.
    pub(crate) fn duplicate(&self) -> Error {
        fn copy_io(e: &io::Error) -> io::Error {
            io::Error::new(e.kind(), e.to_string())
        }
        match self {
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: copy_io(source),
            },
            Error::Json { what, source } => Error::Invalid(format!("parsing {what}: {source}")),
            Error::DigestMismatch {
                what,
                expected,
                actual,
            } => Error::DigestMismatch {
                what: what.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            Error::SizeMismatch {
                what,
                expected,
                actual,
            } => Error::SizeMismatch {
                what: what.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::TooLarge { what, size, limit } => Error::TooLarge {
                what: what.clone(),
                size: *size,
                limit: *limit,
            },
            Error::BlobMissing { digest, location } => Error::BlobMissing {
                digest: digest.clone(),
                location: location.clone(),
            },
            Error::MemberMissing { archive, name } => Error::MemberMissing {
                archive: archive.clone(),
                name: name.clone(),
            },
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::Invalid(m) => Error::Invalid(m.clone()),
            Error::Unsupported(m) => Error::Unsupported(m.clone()),
            Error::Decompress { what, source } => Error::Decompress {
                what: what.clone(),
                source: copy_io(source),
            },
            Error::Entry { entry, why } => Error::Entry {
                entry: entry.clone(),
                why: why.clone(),
            },
            Error::Tar { at, source } => Error::Tar {
                at: at.clone(),
                source: copy_io(source),
            },
            Error::Store(e) => Error::Invalid(format!("store: {}", puzzle_store::error::line(e))),
            Error::Layer {
                number,
                digest,
                source,
            } => Error::Layer {
                number: *number,
                digest: digest.clone(),
                source: Box::new(source.duplicate()),
            },
            Error::Cancelled => Error::Cancelled,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(err.io_kind(), err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_io_round_trips() {
        let e = Error::DigestMismatch {
            what: "layer 0 sha256:aa".into(),
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        };
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
        assert!(io.to_string().contains("sha256:aa"));
        match Error::from_io(io) {
            Ok(Error::DigestMismatch { actual, .. }) => assert_eq!(actual, "sha256:bb"),
            other => panic!("unexpected {other:?}"),
        }
        let plain = io::Error::new(io::ErrorKind::UnexpectedEof, "short");
        assert!(Error::from_io(plain).is_err());
    }

    #[test]
    fn messages_are_one_line() {
        let errs = [
            Error::io("/x/index.json", io::Error::other("boom")),
            Error::BlobMissing {
                digest: "sha256:ab".into(),
                location: "oci:./img".into(),
            },
            Error::SizeMismatch {
                what: "config sha256:ab".into(),
                expected: 3,
                actual: 4,
            },
            Error::Unsupported("registry sources".into()),
        ];
        for e in errs {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            assert!(s.chars().next().is_some_and(|c| !c.is_uppercase()), "{s}");
            let d = e.duplicate().to_string();
            assert_eq!(s, d);
        }
    }
}
