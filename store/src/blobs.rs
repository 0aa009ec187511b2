//! Reading blob bytes: the one seam between the read path (chunks, frames,
//! extract, verify, gc, the mount) and where blobs live.
//!
//! [`BlobRead`] reads byte ranges of a blob by digest. [`LocalBlobs`] reads
//! a store's `blobs/` files; a remote source (a registry answering HTTP
//! Range requests) implements the same trait, and [`MemBlobs`] holds blobs
//! in memory for tests and embedders. Every implementation must pass
//! [`conformance::check`].

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::digest::BlobDigest;
use crate::error::{Error, Result};

/// Reads byte ranges of blobs by digest. Shared between threads.
///
/// Errors: [`Error::BlobMissing`] for a blob the source does not have;
/// [`Error::CorruptBlob`] naming the blob for one that ends before a range
/// does; [`Error::Io`] (or the source's own) for anything else.
pub trait BlobRead: Send + Sync {
    /// The blob's size in bytes.
    fn size(&self, digest: &BlobDigest) -> Result<u64>;

    /// Fills `buf` with the blob's bytes from `offset` on.
    fn read_at(&self, digest: &BlobDigest, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Fills each buffer with the blob's bytes from its offset: the ranges
    /// of several frames of one pack. A remote source fetches neighbouring
    /// ranges in one request; by default they are read one by one.
    fn read_ranges(&self, digest: &BlobDigest, ranges: &mut [(u64, &mut [u8])]) -> Result<()> {
        for (offset, buf) in ranges.iter_mut() {
            self.read_at(digest, *offset, buf)?;
        }
        Ok(())
    }

    /// Says that the ranges `(offset, len)` of a blob are about to be read
    /// (the frames of one large read): a remote source may start fetching
    /// them together now. Waits for nothing; by default does nothing.
    fn want(&self, _digest: &BlobDigest, _ranges: &[(u64, u64)]) {}
}

/// The error for a blob that ends before a read does.
pub fn short_blob(digest: &BlobDigest, offset: u64, want: usize, size: u64) -> Error {
    Error::CorruptBlob {
        digest: digest.to_string(),
        why: format!("it is {size} bytes long, reading {want} bytes at {offset} runs past its end"),
    }
}

/// Most blob files [`LocalBlobs`] keeps open; past that, the least recently
/// opened is closed. An image's packs number in the hundreds at most.
const OPEN_FILES: usize = 256;

/// The blobs of a local store (`blobs/sha256/`), read through files kept
/// open.
pub struct LocalBlobs {
    dir: PathBuf,
    open: Mutex<OpenFiles>,
}

/// Open files, and the order they were opened in (oldest first).
type OpenFiles = (HashMap<BlobDigest, Arc<File>>, Vec<BlobDigest>);

impl LocalBlobs {
    /// The blobs under `dir` (a store's `blobs/sha256`).
    pub fn new(dir: PathBuf) -> Self {
        LocalBlobs {
            dir,
            open: Mutex::new((HashMap::new(), Vec::new())),
        }
    }

    fn path(&self, digest: &BlobDigest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The open file of `digest`, opened now if it is not.
    pub fn file(&self, digest: &BlobDigest) -> Result<Arc<File>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.0.get(digest) {
            return Ok(f.clone());
        }
        let f = Arc::new(open_blob_file(&self.path(digest), digest)?);
        if open.1.len() >= OPEN_FILES {
            let old = open.1.remove(0);
            open.0.remove(&old);
        }
        open.0.insert(*digest, f.clone());
        open.1.push(*digest);
        Ok(f)
    }
}

/// Opens the blob file at `path`: [`Error::BlobMissing`] if it is not there.
pub(crate) fn open_blob_file(path: &std::path::Path, digest: &BlobDigest) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::BlobMissing {
                digest: digest.to_string(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

impl BlobRead for LocalBlobs {
    fn size(&self, digest: &BlobDigest) -> Result<u64> {
        let f = self.file(digest)?;
        f.metadata().map(|m| m.len()).map_err(|e| Error::Io {
            path: self.path(digest),
            source: e,
        })
    }

    fn read_at(&self, digest: &BlobDigest, offset: u64, buf: &mut [u8]) -> Result<()> {
        let f = self.file(digest)?;
        match f.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let size = f.metadata().map_or(0, |m| m.len());
                Err(short_blob(digest, offset, buf.len(), size))
            }
            Err(e) => Err(Error::Io {
                path: self.path(digest),
                source: e,
            }),
        }
    }
}

/// Blobs held in memory, for tests and embedders.
#[derive(Default)]
pub struct MemBlobs {
    blobs: HashMap<BlobDigest, Vec<u8>>,
    /// Every range asked for, in order: (blob, offset, length).
    pub reads: Mutex<Vec<(BlobDigest, u64, usize)>>,
}

impl MemBlobs {
    pub fn new() -> Self {
        MemBlobs::default()
    }

    /// Adds a blob under its own digest; returns the digest.
    pub fn add(&mut self, bytes: Vec<u8>) -> BlobDigest {
        let d = BlobDigest::of(&bytes);
        self.blobs.insert(d, bytes);
        d
    }

    /// Adds `bytes` under `digest`, which need not be theirs (a damaged or
    /// short blob).
    pub fn insert(&mut self, digest: BlobDigest, bytes: Vec<u8>) {
        self.blobs.insert(digest, bytes);
    }

    fn get(&self, digest: &BlobDigest) -> Result<&[u8]> {
        self.blobs
            .get(digest)
            .map(Vec::as_slice)
            .ok_or_else(|| Error::BlobMissing {
                digest: digest.to_string(),
            })
    }
}

impl BlobRead for MemBlobs {
    fn size(&self, digest: &BlobDigest) -> Result<u64> {
        Ok(self.get(digest)?.len() as u64)
    }

    fn read_at(&self, digest: &BlobDigest, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = self.get(digest)?;
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((*digest, offset, buf.len()));
        let range = usize::try_from(offset)
            .ok()
            .and_then(|s| Some(s..s.checked_add(buf.len())?))
            .filter(|r| r.end <= bytes.len())
            .ok_or_else(|| short_blob(digest, offset, buf.len(), bytes.len() as u64))?;
        buf.copy_from_slice(&bytes[range]);
        Ok(())
    }
}

/// The behaviour every [`BlobRead`] must have, as one check a test of each
/// implementation runs.
pub mod conformance {
    use super::*;

    /// The blobs [`check`] expects the source to hold: `(digest, bytes)`;
    /// the last one is listed under a digest the source must not have.
    pub fn blobs() -> Vec<(BlobDigest, Vec<u8>)> {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let small = b"a small blob".to_vec();
        let empty = Vec::new();
        let missing = b"not there".to_vec();
        [big, small, empty, missing]
            .into_iter()
            .map(|b| (BlobDigest::of(&b), b))
            .collect()
    }

    /// Checks `source`, which holds every blob of [`blobs`] but the last.
    /// Panics, saying what is wrong, on the first departure.
    pub fn check(source: &dyn BlobRead) {
        let all = blobs();
        let (missing, present) = all.split_last().expect("blobs");
        for (d, bytes) in present {
            assert_eq!(
                source.size(d).expect("size"),
                bytes.len() as u64,
                "size of {d}"
            );
            // Whole, empty, first and last byte, and a middle range.
            let len = bytes.len();
            let mut cuts = vec![(0, len), (0, 0), (len, 0)];
            if len > 0 {
                cuts.extend([(0, 1), (len - 1, 1), (len / 3, len / 2)]);
            }
            for (off, n) in cuts {
                let mut buf = vec![0xee; n];
                source
                    .read_at(d, off as u64, &mut buf)
                    .expect("a range inside");
                assert!(buf == bytes[off..off + n], "bytes {off}+{n} of {d}");
            }
            // Batched: out of order, overlapping, neighbouring.
            let spots: Vec<(usize, usize)> = if len >= 4 {
                vec![
                    (len / 2, len / 4),
                    (0, len / 4),
                    (len / 8, len / 2),
                    (len / 4, len / 4),
                ]
            } else {
                vec![(0, len), (0, 0)]
            };
            let mut bufs: Vec<Vec<u8>> = spots.iter().map(|&(_, n)| vec![0xee; n]).collect();
            let mut ranges: Vec<(u64, &mut [u8])> = spots
                .iter()
                .zip(bufs.iter_mut())
                .map(|(&(off, _), b)| (off as u64, b.as_mut_slice()))
                .collect();
            source.read_ranges(d, &mut ranges).expect("batched ranges");
            for ((off, n), b) in spots.iter().zip(&bufs) {
                assert!(
                    b[..] == bytes[*off..off + n],
                    "batched bytes {off}+{n} of {d}"
                );
            }
            // Past the end: a short blob, named, never a short read.
            for (off, n) in [(len, 1), (len.saturating_sub(1), 2), (len + 10, 1)] {
                let mut buf = vec![0; n];
                match source.read_at(d, off as u64, &mut buf) {
                    Err(Error::CorruptBlob { digest, .. }) => {
                        assert_eq!(digest, d.to_string(), "the short blob is named")
                    }
                    other => panic!("reading {off}+{n} of {d} ({len} bytes): {other:?}"),
                }
            }
            let mut one = [0u8; 1];
            let mut past = vec![0u8; 2];
            let mut ranges: Vec<(u64, &mut [u8])> =
                vec![(0, &mut one[..0]), (len as u64, past.as_mut_slice())];
            assert!(
                matches!(
                    source.read_ranges(d, &mut ranges),
                    Err(Error::CorruptBlob { .. })
                ),
                "a batch with a range past the end of {d} fails"
            );
        }
        let d = &missing.0;
        assert!(
            matches!(source.size(d), Err(Error::BlobMissing { .. })),
            "size of a missing blob"
        );
        let mut buf = [0u8; 4];
        assert!(
            matches!(
                source.read_at(d, 0, &mut buf),
                Err(Error::BlobMissing { .. })
            ),
            "reading a missing blob"
        );
        let mut ranges: Vec<(u64, &mut [u8])> = vec![(0, &mut buf[..])];
        assert!(
            matches!(
                source.read_ranges(d, &mut ranges),
                Err(Error::BlobMissing { .. })
            ),
            "batched reads of a missing blob"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_blobs_conform() {
        let mut m = MemBlobs::new();
        let all = conformance::blobs();
        for (_, b) in &all[..all.len() - 1] {
            m.add(b.clone());
        }
        conformance::check(&m);
    }

    #[test]
    fn local_blobs_conform() {
        let dir = tempfile::tempdir().unwrap();
        let all = conformance::blobs();
        for (d, b) in &all[..all.len() - 1] {
            std::fs::write(dir.path().join(d.hex()), b).unwrap();
        }
        conformance::check(&LocalBlobs::new(dir.path().to_path_buf()));
    }

    /// The check itself catches a source that reads short or invents bytes.
    #[test]
    fn the_check_catches_a_source_that_pads_short_reads() {
        struct Padding(MemBlobs);
        impl BlobRead for Padding {
            fn size(&self, d: &BlobDigest) -> Result<u64> {
                self.0.size(d)
            }
            fn read_at(&self, d: &BlobDigest, off: u64, buf: &mut [u8]) -> Result<()> {
                let size = self.0.size(d)?;
                let n = (size.saturating_sub(off) as usize).min(buf.len());
                buf.fill(0);
                self.0.read_at(d, off, &mut buf[..n])
            }
        }
        let mut m = MemBlobs::new();
        let all = conformance::blobs();
        for (_, b) in &all[..all.len() - 1] {
            m.add(b.clone());
        }
        let caught = std::panic::catch_unwind(|| conformance::check(&Padding(m)));
        assert!(caught.is_err(), "a padding source passed the check");
    }

    #[test]
    fn local_blobs_keep_a_bounded_number_of_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalBlobs::new(dir.path().to_path_buf());
        let mut digests = Vec::new();
        for i in 0..OPEN_FILES + 3 {
            let b = i.to_le_bytes().to_vec();
            let d = BlobDigest::of(&b);
            std::fs::write(dir.path().join(d.hex()), &b).unwrap();
            let mut buf = [0u8; 8];
            local.read_at(&d, 0, &mut buf).unwrap();
            digests.push(d);
        }
        let open = local.open.lock().unwrap();
        assert_eq!((open.0.len(), open.1.len()), (OPEN_FILES, OPEN_FILES));
        assert!(!open.0.contains_key(&digests[0]), "the oldest was closed");
    }
}
