//! The sled index: a cache of where chunks live and which layers were
//! converted. Everything in it can be rebuilt from packs (chunk locations);
//! a lost layer record only means that layer is converted again.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use puzzle_chunker::ChunkId;

use crate::digest::BlobDigest;
use crate::error::{Error, IoContext, Result};
use crate::layout::Store;
use crate::pack::{ChunkLoc, PackInfo};
use crate::tree::{FileDigest, Layer};

const LOC_LEN: usize = 56;

/// The opened index. Only one process at a time may open it (sled holds a
/// lock), so only writers (build, gc) open it; readers use metadata blobs.
pub struct ChunkIndex {
    path: PathBuf,
    db: sled::Db,
    chunks: sled::Tree,
    layers: sled::Tree,
    streams: sled::Tree,
    samples: sled::Tree,
    /// Packs checked sound: digest (32 bytes) -> size in bytes (u64 LE).
    packs: sled::Tree,
}

fn encode_loc(loc: &ChunkLoc) -> [u8; LOC_LEN] {
    let mut v = [0u8; LOC_LEN];
    v[..32].copy_from_slice(loc.pack.as_bytes());
    v[32..40].copy_from_slice(&loc.offset.to_le_bytes());
    v[40..44].copy_from_slice(&loc.clen.to_le_bytes());
    v[44..48].copy_from_slice(&loc.rlen.to_le_bytes());
    v[48..52].copy_from_slice(&loc.frame_rlen.to_le_bytes());
    v[52..56].copy_from_slice(&loc.at.to_le_bytes());
    v
}

fn decode_loc(v: &[u8]) -> Option<ChunkLoc> {
    if v.len() != LOC_LEN {
        return None;
    }
    Some(ChunkLoc {
        pack: BlobDigest::from_bytes(v[..32].try_into().ok()?),
        offset: u64::from_le_bytes(v[32..40].try_into().ok()?),
        clen: u32::from_le_bytes(v[40..44].try_into().ok()?),
        rlen: u32::from_le_bytes(v[44..48].try_into().ok()?),
        frame_rlen: u32::from_le_bytes(v[48..52].try_into().ok()?),
        at: u32::from_le_bytes(v[52..56].try_into().ok()?),
    })
}

impl ChunkIndex {
    pub fn open(store: &Store) -> Result<ChunkIndex> {
        Self::open_at(store.index_dir())
    }

    /// Opens a private copy of the store's index made in `scratch` (an
    /// empty directory the caller removes afterwards), for reading a store
    /// this process cannot write: sled opens its files read-write.
    pub fn open_copy(store: &Store, scratch: &Path) -> Result<ChunkIndex> {
        let copy = scratch.join("index");
        copy_dir(&store.index_dir(), &copy)?;
        Self::open_at(copy)
    }

    pub(crate) fn open_at(path: PathBuf) -> Result<ChunkIndex> {
        remove_unfinished_snapshots(&path)?;
        let db = sled::Config::new()
            .path(&path)
            // Keep the page cache small: peak RSS of a build must stay bounded.
            .cache_capacity(32 << 20)
            // Writers flush when they commit; no background flusher.
            .flush_every_ms(None)
            .open()
            .map_err(|source| {
                // A snapshot that failed to write (a full disk) goes now, so
                // the store is left as it was.
                let _ = remove_unfinished_snapshots(&path);
                Error::Index {
                    path: path.clone(),
                    source,
                }
            })?;
        let err = |source| Error::Index {
            path: path.clone(),
            source,
        };
        let chunks = db.open_tree("chunks").map_err(err)?;
        let layers = db.open_tree("layers").map_err(err)?;
        let streams = db.open_tree("streams").map_err(err)?;
        let samples = db.open_tree("samples").map_err(err)?;
        let packs = db.open_tree("packs").map_err(err)?;
        Ok(ChunkIndex {
            path,
            db,
            chunks,
            layers,
            streams,
            samples,
            packs,
        })
    }

    fn err(&self, source: sled::Error) -> Error {
        Error::Index {
            path: self.path.clone(),
            source,
        }
    }

    pub fn get(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        match self.chunks.get(id.as_bytes()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => decode_loc(&v).map(Some).ok_or_else(|| Error::Corrupt {
                what: format!("index record of chunk {id}"),
                why: format!("{} bytes", v.len()),
            }),
        }
    }

    pub fn has(&self, id: &ChunkId) -> Result<bool> {
        self.chunks
            .contains_key(id.as_bytes())
            .map_err(|e| self.err(e))
    }

    /// Records every chunk of a durable pack, and the pack as sound with
    /// its size (see [`ChunkIndex::sound_packs`]).
    pub fn add_pack(&self, pack: &PackInfo) -> Result<()> {
        let mut batch = sled::Batch::default();
        for e in &pack.entries {
            batch.insert(e.id.as_bytes(), &encode_loc(&e.loc(pack.digest))[..]);
        }
        self.chunks.apply_batch(batch).map_err(|e| self.err(e))?;
        self.set_sound_pack(&pack.digest, Some(pack.size))
    }

    /// Every pack recorded as sound, with the size it had when checked.
    pub fn sound_packs(&self) -> Result<Vec<(BlobDigest, u64)>> {
        let mut out = Vec::new();
        for kv in self.packs.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let (Ok(d), Ok(len)) = (
                <[u8; 32]>::try_from(k.as_ref()),
                <[u8; 8]>::try_from(v.as_ref()),
            ) else {
                continue;
            };
            out.push((BlobDigest::from_bytes(d), u64::from_le_bytes(len)));
        }
        Ok(out)
    }

    /// Records pack `d` as checked sound at `size` bytes, or forgets it.
    pub fn set_sound_pack(&self, d: &BlobDigest, size: Option<u64>) -> Result<()> {
        match size {
            Some(n) => self.packs.insert(d.as_bytes(), &n.to_le_bytes()[..]),
            None => self.packs.remove(d.as_bytes()),
        }
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every chunk entry, in id order.
    pub fn chunk_entries(&self) -> Result<Vec<(ChunkId, ChunkLoc)>> {
        let mut out = Vec::new();
        for kv in self.chunks.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let id: [u8; 32] = k.as_ref().try_into().map_err(|_| Error::Corrupt {
                what: "index".into(),
                why: format!("chunk key of {} bytes", k.len()),
            })?;
            let id = ChunkId::from_bytes(id);
            let loc = decode_loc(&v).ok_or_else(|| Error::Corrupt {
                what: format!("index record of chunk {id}"),
                why: format!("{} bytes", v.len()),
            })?;
            out.push((id, loc));
        }
        Ok(out)
    }

    /// Records `loc` for `id` unless the index already has the chunk.
    pub fn add_if_missing(&self, id: &ChunkId, loc: &ChunkLoc) -> Result<()> {
        self.chunks
            .compare_and_swap(
                id.as_bytes(),
                None as Option<&[u8]>,
                Some(&encode_loc(loc)[..]),
            )
            .map_err(|e| self.err(e))?
            .ok();
        Ok(())
    }

    /// Records `loc` for `id`, replacing what the index had (gc points a
    /// chunk stored twice at the copy it keeps).
    pub fn set_chunk(&self, id: &ChunkId, loc: &ChunkLoc) -> Result<()> {
        self.chunks
            .insert(id.as_bytes(), &encode_loc(loc)[..])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn remove_chunk(&self, id: &ChunkId) -> Result<()> {
        self.chunks.remove(id.as_bytes()).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The diff_ids of every converted-layer record.
    pub fn layer_ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for k in self.layers.iter().keys() {
            let k = k.map_err(|e| self.err(e))?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    /// How many chunks are indexed (a full scan: O(chunks)).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// True when no chunk is indexed (cheap, unlike [`Self::chunk_count`]).
    pub fn has_no_chunks(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn layer(&self, diff_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .layers
            .get(diff_id.as_bytes())
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// The converted layer `diff_id`, if its record is intact and every chunk
    /// it uses is indexed. (gc drops a record before the chunks it names, but
    /// a store an older gc was killed in may still hold such a record; its
    /// layer is then converted again.)
    pub fn usable_layer(&self, diff_id: &str) -> Result<Option<Layer>> {
        let Some(record) = self.layer(diff_id)? else {
            return Ok(None);
        };
        let Ok(layer) = Layer::from_record(&record) else {
            return Ok(None);
        };
        // Most chunks hold several small files: each is looked up once.
        let mut checked = HashSet::new();
        for id in layer.chunks() {
            if checked.insert(id) && !self.has(id)? {
                return Ok(None);
            }
        }
        Ok(Some(layer))
    }

    pub fn put_layer(&self, diff_id: &str, record: &[u8]) -> Result<()> {
        self.layers
            .insert(diff_id.as_bytes(), record)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn remove_layer(&self, diff_id: &str) -> Result<()> {
        self.layers
            .remove(diff_id.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The diff_id of a converted layer whose contents make the chunk stream
    /// with this stream key (a hint: the record may since be gone).
    pub fn stream(&self, key: &[u8; 32]) -> Result<Option<String>> {
        Ok(self
            .streams
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn put_stream(&self, key: &[u8; 32], diff_id: &str) -> Result<()> {
        self.streams
            .insert(key, diff_id.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The diff_id of a converted layer holding a file with contents
    /// `digest`, for files [`crate::known::sampled`] picks (a hint: the record
    /// may since be gone).
    pub fn sample(&self, digest: &FileDigest) -> Result<Option<String>> {
        Ok(self
            .samples
            .get(digest.as_bytes())
            .map_err(|e| self.err(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the sampled files of the converted layer `diff_id`.
    pub fn put_samples(&self, diff_id: &str, layer: &Layer) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (size, digest, _) in layer.files() {
            if crate::known::sampled(size, digest) {
                batch.insert(digest.as_bytes(), diff_id.as_bytes());
            }
        }
        self.samples.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Drops the `streams` and `samples` entries naming a layer without a
    /// record (gc, after it removed records). A sample names the layer that
    /// last stored its file; a file that other layers still hold is named
    /// after one of them instead, so it stays known (a version built, then
    /// removed, must not make its predecessor's files unknown).
    pub fn drop_stale_hints(&self) -> Result<()> {
        let mut lost: HashSet<Vec<u8>> = HashSet::new();
        for (tree, is_samples) in [(&self.streams, false), (&self.samples, true)] {
            for kv in tree.iter() {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                if !self.layers.contains_key(&v).map_err(|e| self.err(e))? {
                    tree.remove(&k).map_err(|e| self.err(e))?;
                    if is_samples {
                        lost.insert(k.to_vec());
                    }
                }
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for kv in self.layers.iter() {
            let (diff_id, record) = kv.map_err(|e| self.err(e))?;
            let Ok(layer) = Layer::from_record(&record) else {
                continue;
            };
            for (_, digest, _) in layer.files() {
                if lost.remove(digest.as_bytes().as_slice()) {
                    batch.insert(digest.as_bytes(), &*diff_id);
                }
            }
            if lost.is_empty() {
                break;
            }
        }
        self.samples.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// Removes the `snap.*.generating` files in the sled directory `dir`. sled
/// writes a snapshot there (when it opens a database that changed since
/// its last snapshot) and renames it to `snap.*` once complete; one that
/// failed, on a full disk, stays behind, and sled would take it for the
/// newest snapshot and refuse to open ("Read corrupted data"). The previous
/// snapshot and the log it was made from are intact, so removing it loses
/// nothing.
fn remove_unfinished_snapshots(dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    for e in rd {
        let e = e.at(dir)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = e.path();
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::Io { path, source: e })
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Copies the directory tree `from` to `to` (files and directories only).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).at(to)?;
    for e in std::fs::read_dir(from).at(from)? {
        let e = e.at(from)?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().at(&src)?.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).at(&src)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_round_trip() {
        let loc = ChunkLoc {
            pack: BlobDigest::of(b"p"),
            offset: u64::MAX - 1,
            clen: 7,
            frame_rlen: 1 << 20,
            at: 12345,
            rlen: 9,
        };
        assert_eq!(decode_loc(&encode_loc(&loc)), Some(loc));
        assert_eq!(decode_loc(&[0; 48]), None);
    }

    /// Issue 17: a snapshot sled failed to write on a full disk (left empty
    /// as `snap.*.generating`) made every later open fail with "Read
    /// corrupted data at file offset None".
    #[test]
    fn an_unfinished_snapshot_does_not_stop_the_index_opening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let id = ChunkId::from_bytes([7; 32]);
        {
            let index = ChunkIndex::open_at(path.clone()).unwrap();
            index.put_layer("sha256:x", b"record").unwrap();
            index.flush().unwrap();
        }
        // Reopened after changes, sled writes a new snapshot: this is the
        // name it would have had.
        std::fs::write(path.join("snap.FFFFFFFFFFFFFFF0.generating"), b"").unwrap();
        let index = ChunkIndex::open_at(path.clone()).unwrap();
        assert_eq!(
            index.layer("sha256:x").unwrap().as_deref(),
            Some(&b"record"[..])
        );
        assert!(!index.has(&id).unwrap());
        let left: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".generating"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
