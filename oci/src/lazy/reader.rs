//! [`KeptFirst`]: a remote image's blobs read from the frames lazy mounts
//! kept (`lazy/`) where they are, from the remote elsewhere; what `pull`
//! reads through, so frames a lazy mount fetched are not fetched again.

use std::io;

use puzzle_store::blobs::BlobRead;
use puzzle_store::BlobDigest;

use super::blobs::FrameTable;
use super::kept::Kept;

/// Reads frames from `kept` when they are there and check out (one that
/// fails is punched out and read from `remote`), and other ranges (a whole
/// pack being adopted) from `kept`'s data and `remote` for the holes.
pub struct KeptFirst<'a> {
    pub kept: &'a Kept,
    pub frames: &'a FrameTable,
    pub remote: &'a dyn BlobRead,
}

fn io_err(pack: &BlobDigest, e: io::Error) -> puzzle_store::Error {
    puzzle_store::Error::Io {
        path: format!("lazy/{}", pack.hex()).into(),
        source: e,
    }
}

/// Fills `buf` (bytes `off..` of `pack`): the frames of `frames` inside it
/// that `kept` holds from there, everything else (pack header and index,
/// frames not kept, frames of chunks the image does not use) from
/// `remote`. Only whole known frames are taken from `kept`: the file
/// system reports data by 4 KiB blocks, which may run past a frame.
pub fn read_span(
    kept: &Kept,
    frames: &FrameTable,
    remote: &dyn BlobRead,
    pack: &BlobDigest,
    off: u64,
    buf: &mut [u8],
) -> puzzle_store::Result<()> {
    let end = off + buf.len() as u64;
    let mut inside: Vec<(u64, u64)> = frames
        .0
        .iter()
        .filter(|(k, f)| k.0 == *pack && k.1 >= off && k.1 + u64::from(f.clen) <= end)
        .map(|(k, f)| (k.1, k.1 + u64::from(f.clen)))
        .filter(|&(s, e)| kept.has(pack, s, e - s))
        .collect();
    inside.sort_unstable();
    let mut holes: Vec<(u64, &mut [u8])> = Vec::new();
    let mut rest = &mut buf[..];
    let mut at = off;
    for (s, e) in inside.into_iter().chain(std::iter::once((end, end))) {
        if s < at {
            continue; // overlapping frames: cannot be, but never read twice
        }
        let (gap, tail) = rest.split_at_mut((s - at) as usize);
        if !gap.is_empty() {
            holes.push((at, gap));
        }
        let (part, tail) = tail.split_at_mut((e - s) as usize);
        if !part.is_empty() {
            kept.read_raw(pack, s, part)
                .map_err(|err| io_err(pack, err))?;
        }
        rest = tail;
        at = e;
    }
    if !holes.is_empty() {
        remote.read_ranges(pack, &mut holes)?;
    }
    Ok(())
}

impl BlobRead for KeptFirst<'_> {
    fn size(&self, digest: &BlobDigest) -> puzzle_store::Result<u64> {
        self.remote.size(digest)
    }

    fn read_at(
        &self,
        digest: &BlobDigest,
        offset: u64,
        buf: &mut [u8],
    ) -> puzzle_store::Result<()> {
        self.read_ranges(digest, &mut [(offset, buf)])
    }

    fn read_ranges(
        &self,
        digest: &BlobDigest,
        ranges: &mut [(u64, &mut [u8])],
    ) -> puzzle_store::Result<()> {
        let mut remote: Vec<(u64, &mut [u8])> = Vec::new();
        for (off, buf) in ranges.iter_mut() {
            let key = (*digest, *off);
            match self.frames.0.get(&key) {
                Some(f) if f.clen as usize == buf.len() => {
                    if !self.frames.read_kept(self.kept, &key, buf) {
                        remote.push((*off, &mut **buf));
                    }
                }
                _ => read_span(self.kept, self.frames, self.remote, digest, *off, buf)?,
            }
        }
        if !remote.is_empty() {
            self.remote.read_ranges(digest, &mut remote)?;
        }
        Ok(())
    }
}
