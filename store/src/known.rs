//! Files the store already holds, found by their contents.
//!
//! A layer read again with the same files in another tar order (an image
//! rebuilt as-built, a tag pushed twice) would otherwise spool every byte
//! before its stream key finds the earlier layer. While a layer is spooled,
//! [`KnownFiles`] recognizes files that a converted layer already holds: a
//! file whose contents hash to one of them keeps that layer's extents and is
//! not spooled. If the layer's chunk stream turns out new after all, its
//! chunker reads such files back from the packs ([`StoredChunks`]).
//!
//! The index lists a sample of each converted layer's files (`samples`:
//! content digest -> diff_id, see [`sampled`]): every big file and one small
//! file in 32, so a layer read again usually meets a sampled file early. That
//! layer's record then gives every file it holds.

use std::collections::{HashMap, HashSet};

use puzzle_chunker::ChunkId;

use crate::error::{Error, Result};
use crate::frame::{ChunkBytes, FrameReader};
use crate::index::ChunkIndex;
use crate::layout::Store;
use crate::tree::{Extent, FileDigest, Layer};

/// Files at least this large are always sampled: most bytes are in them.
const SAMPLE_SIZE: u64 = 1 << 20;

/// Smaller files are sampled when their digest's first byte is below this:
/// one in 32.
const SAMPLE_BYTE: u8 = 8;

/// Most converted layers one [`KnownFiles`] learns from.
const MAX_LAYERS: usize = 4;

/// Whether the index lists a file of this size and contents in `samples`.
/// A pure function of the file, so the layer being read and the layers
/// converted before agree on it.
pub fn sampled(size: u64, digest: &FileDigest) -> bool {
    size >= SAMPLE_SIZE || digest.as_bytes()[0] < SAMPLE_BYTE
}

/// Files of converted layers, learned while a layer is read.
pub struct KnownFiles<'a> {
    index: &'a ChunkIndex,
    /// Content digest -> where in `layers`: (layer, entry).
    files: HashMap<FileDigest, (usize, usize)>,
    sizes: HashSet<u64>,
    /// diff_ids whose records were looked at, usable or not.
    tried: Vec<String>,
    /// The usable ones, decoded.
    layers: Vec<(String, Layer)>,
}

impl<'a> KnownFiles<'a> {
    pub fn new(index: &'a ChunkIndex) -> Self {
        KnownFiles {
            index,
            files: HashMap::new(),
            sizes: HashSet::new(),
            tried: Vec::new(),
            layers: Vec::new(),
        }
    }

    /// The converted layers learned from, as (diff_id, layer): every chunk
    /// they use was in the index when they were learned.
    pub fn into_layers(self) -> Vec<(String, Layer)> {
        self.layers
    }

    /// Whether some known file has this size: only then are a file's bytes
    /// worth holding until its digest is known.
    pub fn may_have(&self, size: u64) -> bool {
        self.sizes.contains(&size)
    }

    /// The extents of a stored file with this size and contents. A sampled
    /// file not known yet makes the layer that holds it known (for the files
    /// that follow) if its record is intact and every chunk it uses is
    /// stored.
    pub fn find(&mut self, size: u64, digest: &FileDigest) -> Result<Option<&[Extent]>> {
        if !self.files.contains_key(digest)
            && sampled(size, digest)
            && self.tried.len() < MAX_LAYERS
        {
            if let Some(diff_id) = self.index.sample(digest)? {
                if !self.tried.contains(&diff_id) {
                    self.learn(&diff_id)?;
                    self.tried.push(diff_id);
                }
            }
        }
        Ok(self.lookup(size, digest))
    }

    /// [`KnownFiles::find`] among the layers learned so far, learning none.
    pub fn lookup(&self, size: u64, digest: &FileDigest) -> Option<&[Extent]> {
        self.files
            .get(digest)
            .and_then(|&(l, e)| self.layers[l].1.entries[e].file())
            .filter(|f| f.0 == size)
            .map(|f| f.2)
    }

    /// How many converted layers were learned so far: when it grows, files
    /// looked up before may be known now.
    pub fn learned(&self) -> usize {
        self.layers.len()
    }

    fn learn(&mut self, diff_id: &str) -> Result<()> {
        let Some(layer) = self.index.usable_layer(diff_id)? else {
            return Ok(());
        };
        let l = self.layers.len();
        for (e, (size, digest, extents)) in layer
            .entries
            .iter()
            .enumerate()
            .filter_map(|(e, x)| Some((e, x.file()?)))
        {
            // Extents that do not cover the file are no use.
            if extents.iter().map(|x| u64::from(x.len)).sum::<u64>() == size {
                self.sizes.insert(size);
                self.files.entry(*digest).or_insert((l, e));
            }
        }
        self.layers.push((diff_id.to_string(), layer));
        Ok(())
    }
}

/// Reads stored chunks by id (through the index), for chunking files that
/// were not spooled.
pub struct StoredChunks<'a> {
    index: &'a ChunkIndex,
    frames: FrameReader<'a>,
}

/// Decompressed frames [`StoredChunks`] keeps: a file's extents mostly run
/// through consecutive chunks of one frame.
const FRAME_CACHE: usize = 8 << 20;

impl<'a> StoredChunks<'a> {
    pub fn new(store: &'a Store, index: &'a ChunkIndex) -> Self {
        StoredChunks {
            index,
            frames: FrameReader::new(store, FRAME_CACHE),
        }
    }

    /// The checked bytes of chunk `id`.
    pub fn chunk(&mut self, id: &ChunkId) -> Result<ChunkBytes> {
        let loc = self.index.get(id)?.ok_or(Error::ChunkNotFound(*id))?;
        self.frames.chunk(id, &loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{PackEntry, PackInfo};
    use crate::tree::{LayerEntry, Meta, Node};
    use crate::{BlobDigest, StoreConfig};

    /// A layer of files `(name, size, digest byte)`, each in its own chunk
    /// (the chunk id derived from the name).
    fn layer(files: &[(&str, u64, u8)]) -> Layer {
        let entries = files
            .iter()
            .map(|&(name, size, d)| LayerEntry::Node {
                path: name.as_bytes().to_vec(),
                node: Node::File {
                    size,
                    extents: vec![Extent {
                        chunk: ChunkId::of(name.as_bytes()),
                        offset: 0,
                        len: size as u32,
                    }],
                    digest: FileDigest::from_bytes([d; 32]),
                },
                meta: Meta::default(),
            })
            .collect();
        Layer {
            entries,
            ..Layer::default()
        }
    }

    fn index_chunks(index: &ChunkIndex, names: &[&str]) {
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, n)| PackEntry {
                id: ChunkId::of(n.as_bytes()),
                offset: i as u64 * 100,
                clen: 100,
                frame_rlen: 100,
                at: 0,
                rlen: 100,
            })
            .collect();
        let pack = PackInfo {
            digest: BlobDigest::of(b"pack"),
            size: 0,
            entries,
        };
        index.add_pack(&pack).unwrap();
    }

    /// An empty index of a new store (the directory and store kept alive).
    fn new_index() -> (tempfile::TempDir, Store, ChunkIndex) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(
            dir.path(),
            &StoreConfig::new(puzzle_chunker::ChunkParams::default(), 3),
        )
        .unwrap();
        let index = ChunkIndex::open(&store).unwrap();
        (dir, store, index)
    }

    #[test]
    fn a_sampled_file_makes_its_layers_files_known_while_their_chunks_are_stored() {
        let (_dir, _store, index) = new_index();
        // "s" is sampled (digest byte 1); "t" is not (digest byte 200).
        let l = layer(&[("s", 10, 1), ("t", 20, 200)]);
        index.put_layer("sha256:l", &l.to_record()).unwrap();
        index.put_samples("sha256:l", &l).unwrap();
        let d = |b: u8| FileDigest::from_bytes([b; 32]);
        assert_eq!(index.sample(&d(1)).unwrap().as_deref(), Some("sha256:l"));
        assert_eq!(index.sample(&d(200)).unwrap(), None);

        // Chunks not indexed: the record is not used.
        let mut known = KnownFiles::new(&index);
        assert_eq!(known.find(10, &d(1)).unwrap(), None);
        assert!(!known.may_have(20));

        index_chunks(&index, &["s", "t"]);
        let mut known = KnownFiles::new(&index);
        // Not sampled: nothing is looked up.
        assert_eq!(known.find(20, &d(200)).unwrap(), None);
        assert!(known.find(10, &d(1)).unwrap().is_some());
        assert!(known.may_have(20));
        let t = known
            .find(20, &d(200))
            .unwrap()
            .expect("known since s was found");
        assert_eq!(t[0].chunk, ChunkId::of(b"t"));
        // The same contents with another size are another file.
        assert_eq!(known.find(21, &d(200)).unwrap(), None);

        // Hints naming a layer without a record go.
        index.put_stream(&[7; 32], "sha256:l").unwrap();
        index.drop_stale_hints().unwrap();
        assert!(index.sample(&d(1)).unwrap().is_some());
        index.remove_layer("sha256:l").unwrap();
        index.drop_stale_hints().unwrap();
        assert_eq!(index.sample(&d(1)).unwrap(), None);
        assert_eq!(index.stream(&[7; 32]).unwrap(), None);
    }

    /// A file two layers hold stays sampled when the layer that stored it
    /// last goes (a version built, removed and collected).
    #[test]
    fn a_sample_moves_to_a_layer_still_holding_the_file() {
        let (_dir, _store, index) = new_index();
        let d = |b: u8| FileDigest::from_bytes([b; 32]);
        let (old, new) = (layer(&[("s", 10, 1)]), layer(&[("s", 10, 1), ("n", 5, 2)]));
        index.put_layer("sha256:old", &old.to_record()).unwrap();
        index.put_samples("sha256:old", &old).unwrap();
        index.put_layer("sha256:new", &new.to_record()).unwrap();
        index.put_samples("sha256:new", &new).unwrap();
        assert_eq!(index.sample(&d(1)).unwrap().as_deref(), Some("sha256:new"));
        index.remove_layer("sha256:new").unwrap();
        index.drop_stale_hints().unwrap();
        assert_eq!(index.sample(&d(1)).unwrap().as_deref(), Some("sha256:old"));
        assert_eq!(index.sample(&d(2)).unwrap(), None, "only new held it");
    }

    #[test]
    fn big_files_and_one_in_32_small_ones_are_sampled() {
        let d = |b: u8| FileDigest::from_bytes([b; 32]);
        assert!(sampled(SAMPLE_SIZE, &d(255)));
        assert!(!sampled(SAMPLE_SIZE - 1, &d(255)));
        assert!(sampled(0, &d(SAMPLE_BYTE - 1)));
        assert!(!sampled(100, &d(SAMPLE_BYTE)));
        let n = (0..=255u8).filter(|&b| sampled(10, &d(b))).count();
        assert_eq!(n, 256 / 32);
    }
}
