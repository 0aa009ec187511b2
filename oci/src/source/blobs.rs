//! Where an image's files and blobs live (a directory or a tar archive), and
//! reading small verified blobs (manifests, configs) from there.

use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::error::{Error, Result};

use super::{
    archive::{open_range, Member, TarIndex},
    digest::{Sha256Digest, VerifyingReader},
};

/// Largest JSON document (index.json, manifest, config) we read into memory.
pub(crate) const MAX_JSON: u64 = 4 << 20;

/// An OCI image layout, on disk or inside a tar archive.
#[derive(Clone)]
pub(crate) enum Store {
    Dir(PathBuf),
    Archive(Arc<TarIndex>),
}

/// Where one blob's bytes are; cheap to clone, opened on demand.
#[derive(Clone, Debug)]
pub(crate) enum BlobLoc {
    File(PathBuf),
    Member { archive: PathBuf, member: Member },
}

impl BlobLoc {
    /// The file the bytes come from, for error messages.
    pub(crate) fn path(&self) -> &Path {
        match self {
            BlobLoc::File(p) => p,
            BlobLoc::Member { archive, .. } => archive,
        }
    }

    /// A raw reader over the blob's bytes.
    pub(crate) fn open(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            BlobLoc::File(path) => {
                let f = File::open(path).map_err(|e| Error::io(path, e))?;
                Ok(Box::new(f))
            }
            BlobLoc::Member { archive, member } => open_range(archive, *member),
        }
    }

    /// A reader that checks the bytes against `digest` and `size` while streaming.
    pub(crate) fn open_verified(
        &self,
        what: String,
        digest: Sha256Digest,
        size: u64,
    ) -> Result<VerifyingReader> {
        Ok(VerifyingReader::new(
            self.open()?,
            what,
            self.path().to_owned(),
            digest,
            size,
        ))
    }
}

/// Reads a whole small file, refusing anything over `limit` bytes.
/// `Ok(None)` if the file does not exist.
pub(crate) fn read_small_file(path: &Path, what: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > limit {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size: len,
            limit,
        });
    }
    let mut buf = Vec::with_capacity(len as usize);
    // The file may grow after the check: never read past the limit.
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(Some(buf))
}

/// Turns an error out of a reader back into ours, naming `path` for plain I/O errors.
pub(crate) fn io_to_error(e: io::Error, path: &Path) -> Error {
    Error::from_io(e).unwrap_or_else(|e| Error::io(path, e))
}

impl Store {
    /// Describes the store in messages (e.g. "oci:./img" is given by the caller;
    /// this is only the location).
    pub(crate) fn location(&self) -> String {
        match self {
            Store::Dir(p) => p.display().to_string(),
            Store::Archive(idx) => idx.path().display().to_string(),
        }
    }

    /// Reads a small top-level file such as `index.json`. `None` if absent.
    pub(crate) fn read_file(&self, name: &str, what: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Dir(dir) => read_small_file(&dir.join(name), what, MAX_JSON),
            Store::Archive(idx) => idx.read_small(name, what, MAX_JSON),
        }
    }

    /// Whether a blob is present, without opening it.
    pub(crate) fn has_blob(&self, digest: &Sha256Digest) -> bool {
        match self {
            Store::Dir(dir) => blob_path(dir, digest).is_file(),
            Store::Archive(idx) => idx.get(&blob_name(digest)).is_some(),
        }
    }

    /// Locates a blob. Fails with [`Error::BlobMissing`] if absent and, when the
    /// stored size is known up front, with [`Error::SizeMismatch`] if it differs.
    pub(crate) fn blob(&self, digest: &Sha256Digest, size: u64, what: &str) -> Result<BlobLoc> {
        let missing = || Error::BlobMissing {
            digest: digest.to_string(),
            location: self.location(),
        };
        let (loc, actual) = match self {
            Store::Dir(dir) => {
                let path = blob_path(dir, digest);
                let meta = match std::fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(e) => return Err(Error::io(&path, e)),
                };
                if !meta.is_file() {
                    return Err(Error::Invalid(format!(
                        "{what}: {} is not a regular file",
                        path.display()
                    )));
                }
                (BlobLoc::File(path), meta.len())
            }
            Store::Archive(idx) => {
                let member = idx.get(&blob_name(digest)).ok_or_else(missing)?;
                let loc = BlobLoc::Member {
                    archive: idx.path().to_owned(),
                    member,
                };
                (loc, member.size)
            }
        };
        if actual != size {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected: size,
                actual,
            });
        }
        Ok(loc)
    }

    /// Reads a whole small blob (manifest, index, config), verified against its
    /// digest and size. The size is checked against [`MAX_JSON`] before reading.
    pub(crate) fn read_blob(
        &self,
        digest: &Sha256Digest,
        size: u64,
        what: &str,
    ) -> Result<Vec<u8>> {
        read_verified_small(&self.blob(digest, size, what)?, digest, size, what)
    }
}

/// Reads a small blob whole through a [`VerifyingReader`].
pub(crate) fn read_verified_small(
    loc: &BlobLoc,
    digest: &Sha256Digest,
    size: u64,
    what: &str,
) -> Result<Vec<u8>> {
    if size > MAX_JSON {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size,
            limit: MAX_JSON,
        });
    }
    let mut reader = loc.open_verified(what.to_owned(), *digest, size)?;
    let mut buf = Vec::with_capacity(size as usize);
    reader
        .read_to_end(&mut buf)
        .map_err(|e| io_to_error(e, loc.path()))?;
    Ok(buf)
}

/// `blobs/sha256/<hex>`; the hex comes from a validated digest, so it is a
/// plain file name.
pub(crate) fn blob_name(digest: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn blob_path(dir: &Path, digest: &Sha256Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}
