//! Converting a layer tar into a [`Layer`]: metadata kept apart, file
//! contents chunked as one stream in sorted-path order.
//!
//! Two phases:
//! 1. [`spool`](fn@spool) parses the tar, normalizes paths, turns whiteouts into explicit
//!    deletions, and copies regular-file bytes to a temp file. The caller then
//!    checks the layer's digests ([`crate::source::LayerReader::finish`]).
//! 2. [`Spooled::chunk`] reads the spooled contents back in sorted-path order,
//!    cuts them with FastCDC, and hands every chunk to the store's writer.
//!
//! A tar whose entries already come in sorted-path order (as reproducible
//! image builders write them) spools its files in chunking order, so another
//! thread can chunk the spool while it grows ([`spool_live`],
//! [`LiveSpool::chunk`]) and phase 2 has nothing left to read. Either way the
//! writer keeps nothing unless the build finishes, so chunks stored before a
//! layer's digests were checked are dropped with the build if they fail.
//!
//! Entry order and tar-header noise (mtimes, uid names, PAX padding) never
//! change the chunk stream, only the metadata.
//!
//! [`Layer`]: puzzle_store::tree::Layer

use puzzle_store::tree::{Extent, FileDigest, Meta, Node};

use crate::error::Error;

mod entry;
mod finish;
mod links;
mod live;
mod parse;
mod spool;
#[cfg(test)]
mod tests;

pub use live::{LiveSpool, LIVE_LAG};
pub use parse::{spool, spool_live, HOLD_FILE};
pub use spool::SpoolMeter;

use spool::SpoolFile;

/// Counts from converting one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerCounts {
    /// Tar entries read.
    pub entries: u64,
    /// Regular files (after dropping duplicate paths).
    pub files: u64,
    /// Bytes of regular-file contents.
    pub file_bytes: u64,
    /// Bytes written to the spool: file contents, less files found stored
    /// ([`KnownFiles`](puzzle_store::known::KnownFiles)), plus any a later
    /// entry of the same path superseded.
    pub spooled_bytes: u64,
}

/// An entry waiting for its contents to be chunked.
enum Pending {
    Node {
        node: Node,
        meta: Meta,
    },
    File {
        source: Source,
        size: u64,
        digest: FileDigest,
        meta: Meta,
    },
    Link(LinkTo),
}

/// Where a file's bytes wait to be chunked.
enum Source {
    /// At this offset of the spool file.
    Spool(u64),
    /// Already stored: the extents of a converted layer's file with the same
    /// contents ([`KnownFiles`](puzzle_store::known::KnownFiles)). `at`:
    /// where it was spooled before it was found stored (the space is given
    /// back, see [`SpoolOut::release`](spool::SpoolOut::release));
    /// `None` if it never was.
    Stored {
        at: Option<u64>,
        extents: Vec<Extent>,
    },
}

/// Where a path was defined in a layer's entries (indexes in tar order).
struct Seen {
    /// Its latest definition.
    latest: usize,
    /// Its latest definition as something other than a directory, which
    /// removes what the layer put under that path before.
    nondir: Option<usize>,
}

/// What a hard link names.
enum LinkTo {
    /// While parsing: the entry (index in tar order) its target named when
    /// the link was read.
    Entry(usize),
    /// After grouping: the path in this layer that carries the data.
    Path(Vec<u8>),
    /// A path this layer had not defined when the link was read: an entry
    /// of the lower layers.
    Lower(Vec<u8>),
}

/// A parsed layer whose file contents sit in a temp file.
pub struct Spooled {
    spool: SpoolFile,
    /// Bytes in the spool file (superseded files included).
    spool_len: u64,
    /// Ranges of files found stored whose space is given back once the
    /// chunking side is done with them ([`Spooled::chunk`]).
    unreleased: Vec<(u64, u64)>,
    entries: Vec<(Vec<u8>, Pending)>,
    whiteouts: Vec<Vec<u8>>,
    opaques: Vec<Vec<u8>>,
    pub counts: LayerCounts,
}

fn entry_err(path: &[u8], why: impl Into<String>) -> Error {
    Error::Entry {
        entry: puzzle_store::error::show_path(path),
        why: why.into(),
    }
}
