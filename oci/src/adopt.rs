//! Whole-pack adoption for `puzzle pull` (docs/FORMAT.md, "Pull"): a remote
//! pack none of whose chunks the store holds is fetched whole, checked and
//! stored as it is, under its own digest, so the twin's chunk records are
//! the remote's and its metadata and manifest the remote's byte for byte.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use puzzle_chunker::ChunkId;
use puzzle_store::blobs::BlobRead;
use puzzle_store::digest::HashingWriter;
use puzzle_store::index::ChunkIndex;
use puzzle_store::pack::{self, PackInfo};
use puzzle_store::{BlobDigest, Store};

use crate::error::{Error, Result};
use crate::pull::{request_cap, PullProgress, WINDOW};

/// Fetches pack `d` (`size` bytes, as the manifest says) whole from
/// `remote` into a temp file of `store`, a window of [`WINDOW`] bytes at a
/// time (ranges of at most [`request_cap`], one request each), and checks
/// it: its SHA-256 and size, its trailer and chunk index, and every chunk
/// against its id as each frame is decompressed. Only then is it renamed
/// into `blobs/` (fsynced). On an error or a cancel nothing is stored.
pub(crate) fn fetch_pack(
    store: &Store,
    remote: &dyn BlobRead,
    d: &BlobDigest,
    size: u64,
    cancel: &AtomicBool,
    progress: &dyn PullProgress,
) -> Result<PackInfo> {
    let mut tmp = store.temp_file()?;
    let tmp_path = tmp.path().to_path_buf();
    let io = |source| {
        Error::from(puzzle_store::Error::Io {
            path: tmp_path.clone(),
            source,
        })
    };
    progress.blob_start(d, "pack", size);
    let mut out = HashingWriter::new(std::io::BufWriter::with_capacity(
        1 << 20,
        tmp.as_file_mut(),
    ));
    let mut buf = Vec::new();
    let mut at = 0u64;
    while at < size {
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let n = (size - at).min(WINDOW);
        buf.resize(n as usize, 0);
        let cap = request_cap();
        let mut ranges: Vec<(u64, &mut [u8])> = buf
            .chunks_mut(cap as usize)
            .enumerate()
            .map(|(i, b)| (at + i as u64 * cap, b))
            .collect();
        remote.read_ranges(d, &mut ranges)?;
        out.write_all(&buf).map_err(io)?;
        at += n;
        progress.blob_progress(d, at);
    }
    let (w, actual, len) = out.finish();
    w.into_inner().map_err(|e| io(e.into_error()))?;
    if actual != *d || len != size {
        return Err(Error::DigestMismatch {
            what: format!("pack blob ({len} bytes)"),
            expected: d.to_string(),
            actual: actual.to_string(),
        });
    }
    let entries = pack::read_pack_index(tmp.as_file(), size)?;
    // Every chunk checked, frame by frame, as the frame path checks them.
    let mut frame = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        if cancel.load(Ordering::SeqCst) {
            return Err(Error::Cancelled);
        }
        let first = entries[i];
        let loc = first.loc(*d);
        pack::check_loc(&first.id, &loc)?;
        frame.resize(first.clen as usize, 0);
        tmp.as_file()
            .read_exact_at(&mut frame, first.offset)
            .map_err(io)?;
        let raw = pack::decompress_frame(&frame, first.frame_rlen, &first.id, d)?;
        while i < entries.len() && entries[i].offset == first.offset {
            let e = &entries[i];
            pack::chunk_in_frame(&raw, &e.id, &e.loc(*d))?;
            i += 1;
        }
    }
    store.persist_blob(tmp, d)?;
    progress.blob_done(d);
    Ok(PackInfo {
        digest: *d,
        size,
        entries,
    })
}

/// Packs adopted by a pull that has not committed yet: on drop, unless
/// [`Adopted::keep`] was called, the ones this pull put into `blobs/` are
/// deleted again (a failed or cancelled pull keeps nothing).
pub(crate) struct Adopted<'a> {
    store: &'a Store,
    /// Where the image comes from, for messages.
    origin: &'a str,
    /// Each pack, with the image's chunks it was adopted for.
    pub(crate) packs: Vec<(PackInfo, Vec<ChunkId>)>,
    /// Those the store did not hold before (the ones to delete).
    created: Vec<BlobDigest>,
    kept: bool,
}

impl<'a> Adopted<'a> {
    pub(crate) fn new(store: &'a Store, origin: &'a str) -> Self {
        Adopted {
            store,
            origin,
            packs: Vec::new(),
            created: Vec::new(),
            kept: false,
        }
    }

    /// Fetches and stores pack `d` (see [`fetch_pack`]) for the image's
    /// chunks `wanted`, every one of which it must hold.
    pub(crate) fn fetch(
        &mut self,
        remote: &dyn BlobRead,
        d: &BlobDigest,
        size: u64,
        wanted: Vec<ChunkId>,
        cancel: &AtomicBool,
        progress: &dyn PullProgress,
    ) -> Result<&PackInfo> {
        let existed = self.store.has_blob(d);
        let info = fetch_pack(self.store, remote, d, size, cancel, progress)?;
        if !existed {
            self.created.push(*d);
        }
        let held: HashSet<ChunkId> = info.entries.iter().map(|e| e.id).collect();
        if let Some(id) = wanted.iter().find(|id| !held.contains(id)) {
            return Err(Error::Invalid(format!(
                "{}: its metadata places chunk {id} in pack {d}, which does not hold it",
                self.origin
            )));
        }
        self.packs.push((info, wanted));
        Ok(&self.packs.last().expect("just pushed").0)
    }

    /// Indexes the adopted packs: the image's chunks at their place in
    /// them (so the twin's records are the remote's), the packs' other
    /// chunks only where the index has none, each pack as sound. From
    /// here the packs are the store's: they stay.
    pub(crate) fn index(mut self, index: &ChunkIndex) -> Result<()> {
        for (info, wanted) in &self.packs {
            let wanted: HashSet<&ChunkId> = wanted.iter().collect();
            for e in &info.entries {
                if wanted.contains(&e.id) {
                    index.set_chunk(&e.id, &e.loc(info.digest))?;
                } else {
                    index.add_if_missing(&e.id, &e.loc(info.digest))?;
                }
            }
            index.set_sound_pack(&info.digest, Some(info.size))?;
        }
        self.kept = true;
        Ok(())
    }
}

impl Drop for Adopted<'_> {
    fn drop(&mut self) {
        if self.kept || self.created.is_empty() {
            return;
        }
        for d in &self.created {
            let _ = self.store.remove_blob(d);
        }
        let _ = self.store.sync_blobs();
    }
}
