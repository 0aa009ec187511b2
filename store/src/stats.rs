//! The dedup report: what images share, what each one costs, what chunking
//! adds over whole-file dedup, and what changed between two images.
//!
//! Everything is computed from metadata blobs (chunk tables, inodes, file
//! digests, the recorded source layers) and pack trailers; no chunk data is
//! read and the sled index is never opened, so a report can run while a build
//! holds the store. Every figure is defined in `docs/STATS.md`.
//!
//! [`compute`] gives a [`Report`] over a set of images; [`diff`] gives the
//! [`Diff`] between two. Both return plain values; rendering is the CLI's.

use std::collections::{BTreeMap, HashMap, HashSet};

use puzzle_chunker::ChunkId;

use crate::digest::BlobDigest;
use crate::error::{Error, IoContext, Result};
use crate::layout::Store;
use crate::meta::{Kind, MetaBlob};
use crate::tree::FileDigest;

/// One image to report on.
pub struct Input<'a, B> {
    pub name: &'a str,
    pub meta: &'a MetaBlob<B>,
    /// The metadata blob as stored (its manifest descriptor's digest and
    /// size; builds store it compressed).
    pub meta_digest: BlobDigest,
    pub meta_stored: u64,
}

impl<'a, B> Input<'a, B> {
    pub fn clone_ref(&self) -> Input<'a, B> {
        Input {
            name: self.name,
            meta: self.meta,
            meta_digest: self.meta_digest,
            meta_stored: self.meta_stored,
        }
    }
}

/// Sizes of one pack blob, from its trailer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackSize {
    /// Bytes of the whole blob.
    pub blob_bytes: u64,
    /// Bytes of chunk frames (the blob minus its index and trailer).
    pub frame_bytes: u64,
    /// Frames in the pack.
    pub frames: u32,
}

/// Reads the sizes of pack `d` from its trailer (32 bytes; no chunk data).
pub fn pack_size(store: &Store, d: &BlobDigest) -> Result<PackSize> {
    use std::os::unix::fs::FileExt;
    let path = store.blob_path(d);
    let f = store.open_blob(d)?;
    let len = f.metadata().at(&path)?.len();
    const T: usize = crate::pack::TRAILER_LEN;
    let mut trailer = [0u8; T];
    if len >= T as u64 {
        f.read_exact_at(&mut trailer, len - T as u64).at(&path)?;
    }
    let t = crate::pack::parse_trailer(&trailer, len).map_err(|e| match e {
        Error::Corrupt { what, why } => Error::Corrupt {
            what: format!("{what} of pack {d}"),
            why,
        },
        e => e,
    })?;
    Ok(PackSize {
        blob_bytes: len,
        frame_bytes: t.index_offset,
        frames: t.frames,
    })
}

/// An image's regular-file inodes (a hard-linked file counts once) and the
/// sum of their sizes: [`ImageStats::files`] and [`ImageStats::logical_bytes`]
/// of one image, without the rest of the report. What an extract writes.
pub fn logical_size<B: AsRef<[u8]>>(m: &MetaBlob<B>) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for ino in 0..m.inode_count() {
        let rec = m.inode(ino as u32)?;
        if rec.kind == Kind::File {
            files += 1;
            bytes += rec.size;
        }
    }
    Ok((files, bytes))
}

/// Figures for one image. "Other images" are the other images of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    pub name: String,
    /// Regular-file inodes (a hard-linked file counts once).
    pub files: u64,
    /// Sum of the sizes of those inodes.
    pub logical_bytes: u64,
    /// Distinct chunks the image references.
    pub chunks: u64,
    /// Raw bytes of those chunks (each once).
    pub chunk_bytes: u64,
    /// Raw bytes of chunks no other image references.
    pub unique_bytes: u64,
    /// Raw bytes of chunks at least one other image references.
    pub shared_bytes: u64,
    /// Compressed bytes of all its chunks: what the image stores alone.
    pub stored_bytes: u64,
    /// Compressed bytes of chunks no other image references.
    pub unique_stored_bytes: u64,
    /// Distinct original layers (by digest) and their bytes as pulled.
    pub source_layers: u64,
    pub source_bytes: u64,
    /// Bytes of the metadata blob.
    pub metadata_bytes: u64,
    /// Packs the image references.
    pub packs: u64,
}

/// Figures for the whole set of images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub images: u64,
    /// Sums over images.
    pub files: u64,
    pub logical_bytes: u64,
    /// Distinct file contents (by BLAKE3 digest) and their bytes, each once:
    /// what whole-file dedup would keep.
    pub file_contents: u64,
    pub file_dedup_bytes: u64,
    /// Distinct chunks over all images and their raw bytes, each once.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Compressed bytes of those chunks.
    pub stored_bytes: u64,
    /// Distinct original layers (by digest) over all images and their bytes.
    pub source_layers: u64,
    pub source_bytes: u64,
    /// Sum over images of their own source bytes (layers shared between
    /// images counted once per image): what pulling each image costs.
    pub source_bytes_per_image: u64,
    /// Metadata blobs, each once.
    pub metadata_bytes: u64,
    /// Distinct packs the images reference, their blob and frame bytes.
    pub packs: u64,
    pub pack_bytes: u64,
    pub pack_frame_bytes: u64,
}

/// Chunks whose raw size `s` is in `min <= s < max` (powers of two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub min: u64,
    pub max: u64,
    pub chunks: u64,
    pub bytes: u64,
}

/// Chunks referenced by exactly `images` images.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefCount {
    pub images: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub images: Vec<ImageStats>,
    pub totals: Totals,
    /// Contiguous power-of-two buckets from the smallest to the largest
    /// non-empty one (empty when there are no chunks).
    pub histogram: Vec<Bucket>,
    /// One entry per count 1..=images.
    pub refcounts: Vec<RefCount>,
    /// `sharing[i][j]`: raw bytes of distinct chunks images i and j both
    /// reference; the diagonal is each image's `chunk_bytes`.
    pub sharing: Vec<Vec<u64>>,
}

struct ChunkUse {
    rlen: u32,
    /// Its share of its frame's compressed bytes.
    stored: u64,
    /// Indexes of the images referencing the chunk, ascending, each once.
    images: Vec<u32>,
}

/// Computes the report over `images` (at least one). `packs` gives the size
/// of every pack any image references.
pub fn compute<B: AsRef<[u8]>>(
    images: &[Input<'_, B>],
    packs: &HashMap<BlobDigest, PackSize>,
) -> Result<Report> {
    let n = images.len();
    let mut chunks: HashMap<ChunkId, ChunkUse> = HashMap::new();
    let mut out = Report {
        images: Vec::with_capacity(n),
        ..Report::default()
    };
    let mut contents: HashMap<FileDigest, u64> = HashMap::new();
    let mut layers: HashMap<String, u64> = HashMap::new();
    let mut all_packs: HashSet<BlobDigest> = HashSet::new();
    let mut metas: HashSet<BlobDigest> = HashSet::new();
    let t = &mut out.totals;
    for (i, input) in images.iter().enumerate() {
        let m = input.meta;
        let mut s = ImageStats {
            name: input.name.to_string(),
            metadata_bytes: input.meta_stored,
            packs: m.pack_count(),
            ..ImageStats::default()
        };
        if metas.insert(input.meta_digest) {
            t.metadata_bytes += s.metadata_bytes;
        }
        for ino in 0..m.inode_count() {
            let rec = m.inode(ino as u32)?;
            if rec.kind != Kind::File {
                continue;
            }
            s.files += 1;
            s.logical_bytes += rec.size;
            contents.insert(m.file_digest(&rec)?, rec.size);
        }
        for c in 0..m.chunk_count() {
            let rec = m.chunk(c as u32)?;
            let u = chunks.entry(rec.id).or_insert_with(|| ChunkUse {
                rlen: rec.loc.rlen,
                stored: rec.loc.stored_share(),
                images: Vec::new(),
            });
            if u.images.last() != Some(&(i as u32)) {
                u.images.push(i as u32);
                s.chunks += 1;
                s.chunk_bytes += u64::from(u.rlen);
                s.stored_bytes += u.stored;
            }
        }
        for p in m.packs()? {
            all_packs.insert(p);
        }
        let mut own: HashSet<&str> = HashSet::new();
        let source = m.source()?;
        for l in &source.layers {
            if own.insert(&l.digest) {
                s.source_layers += 1;
                s.source_bytes += l.size;
            }
            layers.insert(l.digest.clone(), l.size);
        }
        t.files += s.files;
        t.logical_bytes += s.logical_bytes;
        t.source_bytes_per_image += s.source_bytes;
        out.images.push(s);
    }
    t.images = n as u64;
    t.file_contents = contents.len() as u64;
    t.file_dedup_bytes = contents.values().sum();
    t.source_layers = layers.len() as u64;
    t.source_bytes = layers.values().sum();
    t.packs = all_packs.len() as u64;
    for p in &all_packs {
        let size = packs.get(p).ok_or_else(|| Error::BlobMissing {
            digest: p.to_string(),
        })?;
        t.pack_bytes += size.blob_bytes;
        t.pack_frame_bytes += size.frame_bytes;
    }

    out.sharing = vec![vec![0u64; n]; n];
    out.refcounts = (1..=n as u64)
        .map(|k| RefCount {
            images: k,
            ..RefCount::default()
        })
        .collect();
    let mut buckets: BTreeMap<u32, Bucket> = BTreeMap::new();
    for u in chunks.values() {
        let (r, c) = (u64::from(u.rlen), u.stored);
        t.chunks += 1;
        t.chunk_bytes += r;
        t.stored_bytes += c;
        let rc = &mut out.refcounts[u.images.len() - 1];
        rc.chunks += 1;
        rc.bytes += r;
        rc.stored_bytes += c;
        if let [only] = u.images[..] {
            let s = &mut out.images[only as usize];
            s.unique_bytes += r;
            s.unique_stored_bytes += c;
        } else {
            for &a in &u.images {
                out.images[a as usize].shared_bytes += r;
            }
        }
        for &a in &u.images {
            for &b in &u.images {
                out.sharing[a as usize][b as usize] += r;
            }
        }
        let k = bucket_of(u.rlen);
        let b = buckets.entry(k).or_insert_with(|| bucket(k));
        b.chunks += 1;
        b.bytes += r;
    }
    if let (Some(&lo), Some(&hi)) = (buckets.keys().next(), buckets.keys().next_back()) {
        out.histogram = (lo..=hi)
            .map(|k| buckets.get(&k).copied().unwrap_or_else(|| bucket(k)))
            .collect();
    }
    Ok(out)
}

/// Bucket number of a raw chunk size: 0 for 0 bytes, else `k` with
/// `2^(k-1) <= size < 2^k`.
fn bucket_of(size: u32) -> u32 {
    32 - size.leading_zeros()
}

fn bucket(k: u32) -> Bucket {
    let (min, max) = if k == 0 {
        (0, 1)
    } else {
        (1u64 << (k - 1), 1u64 << k)
    };
    Bucket {
        min,
        max,
        ..Bucket::default()
    }
}

/// How a path's regular file differs between image A and image B.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    /// A file in B with no file at that path in A.
    Added,
    /// A file in A with no file at that path in B.
    Removed,
    /// A file at that path in both, with different contents.
    Modified,
    /// The same contents at that path in both, but stored in chunks A does
    /// not reference (its neighbours in the layer's chunk stream changed).
    Rechunked,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
            Change::Rechunked => "rechunked",
        }
    }
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileChange {
    pub path: Vec<u8>,
    pub change: Change,
    /// Size in A and in B (`None` where there is no file).
    pub size_a: Option<u64>,
    pub size_b: Option<u64>,
    /// Bytes of the B file that lie in chunks A does not reference.
    pub new_bytes: u64,
    /// Whether A holds these B contents anywhere (under any path).
    pub content_in_a: bool,
}

/// The difference between two images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub a: String,
    pub b: String,
    /// Distinct chunks B references and A does not; raw and compressed bytes.
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    pub new_stored_bytes: u64,
    /// Distinct chunks A references and B does not; raw bytes.
    pub dropped_chunks: u64,
    pub dropped_chunk_bytes: u64,
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
    pub rechunked: u64,
    /// Files whose contents and chunks are the same in both.
    pub unchanged: u64,
    /// Sorted by `new_bytes` (largest first), then path.
    pub files: Vec<FileChange>,
}

/// A regular file reached by a path.
struct FileAt {
    ino: u32,
    size: u64,
    digest: FileDigest,
}

/// Every path naming a regular file, with its inode. Paths are relative,
/// without a leading `/`.
fn files_by_path<B: AsRef<[u8]>>(m: &MetaBlob<B>) -> Result<BTreeMap<Vec<u8>, FileAt>> {
    let mut out = BTreeMap::new();
    let mut seen_dirs: HashSet<u32> = HashSet::new();
    let mut stack: Vec<(u32, Vec<u8>)> = vec![(0, Vec::new())];
    while let Some((ino, path)) = stack.pop() {
        if !seen_dirs.insert(ino) {
            return Err(Error::Corrupt {
                what: "metadata blob".into(),
                why: format!("directory inode {ino} is reached twice"),
            });
        }
        let dir = m.inode(ino)?;
        for i in 0..dir.count() {
            let (name, child) = m.dirent(&dir, i)?;
            let mut p = path.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(name);
            let rec = m.inode(child)?;
            match rec.kind {
                Kind::Dir => stack.push((child, p)),
                Kind::File => {
                    let digest = m.file_digest(&rec)?;
                    out.insert(
                        p,
                        FileAt {
                            ino: child,
                            size: rec.size,
                            digest,
                        },
                    );
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Each chunk's raw length and its share of stored bytes.
fn chunk_ids<B: AsRef<[u8]>>(m: &MetaBlob<B>) -> Result<HashMap<ChunkId, (u32, u64)>> {
    (0..m.chunk_count() as u32)
        .map(|i| {
            m.chunk(i)
                .map(|c| (c.id, (c.loc.rlen, c.loc.stored_share())))
        })
        .collect()
}

/// Which files differ between image `a` and image `b`, and how many bytes of
/// chunks new in B each one accounts for.
pub fn diff<A: AsRef<[u8]>, B: AsRef<[u8]>>(a: Input<'_, A>, b: Input<'_, B>) -> Result<Diff> {
    let fa = files_by_path(a.meta)?;
    let fb = files_by_path(b.meta)?;
    let ca = chunk_ids(a.meta)?;
    let cb = chunk_ids(b.meta)?;
    let in_a: HashSet<FileDigest> = fa.values().map(|f| f.digest).collect();
    let mut d = Diff {
        a: a.name.to_string(),
        b: b.name.to_string(),
        ..Diff::default()
    };
    for (id, &(r, c)) in &cb {
        if !ca.contains_key(id) {
            d.new_chunks += 1;
            d.new_chunk_bytes += u64::from(r);
            d.new_stored_bytes += c;
        }
    }
    for (id, &(r, _)) in &ca {
        if !cb.contains_key(id) {
            d.dropped_chunks += 1;
            d.dropped_chunk_bytes += u64::from(r);
        }
    }
    // Bytes of a B inode that lie in chunks new to B, per inode.
    let mut new_bytes_of: HashMap<u32, u64> = HashMap::new();
    let mut new_bytes = |ino: u32| -> Result<u64> {
        if let Some(&v) = new_bytes_of.get(&ino) {
            return Ok(v);
        }
        let rec = b.meta.inode(ino)?;
        let mut n = 0u64;
        for i in 0..rec.count() {
            let e = b.meta.extent(&rec, i)?;
            if !ca.contains_key(&b.meta.chunk(e.chunk)?.id) {
                n += u64::from(e.len);
            }
        }
        new_bytes_of.insert(ino, n);
        Ok(n)
    };
    for (path, f) in &fb {
        let old = fa.get(path);
        let nb = new_bytes(f.ino)?;
        let change = match old {
            None => Change::Added,
            Some(o) if o.digest != f.digest => Change::Modified,
            Some(_) if nb > 0 => Change::Rechunked,
            Some(_) => {
                d.unchanged += 1;
                continue;
            }
        };
        d.files.push(FileChange {
            path: path.clone(),
            change,
            size_a: old.map(|o| o.size),
            size_b: Some(f.size),
            new_bytes: nb,
            content_in_a: in_a.contains(&f.digest),
        });
    }
    for (path, f) in &fa {
        if !fb.contains_key(path) {
            d.files.push(FileChange {
                path: path.clone(),
                change: Change::Removed,
                size_a: Some(f.size),
                size_b: None,
                new_bytes: 0,
                content_in_a: true,
            });
        }
    }
    for f in &d.files {
        match f.change {
            Change::Added => d.added += 1,
            Change::Removed => d.removed += 1,
            Change::Modified => d.modified += 1,
            Change::Rechunked => d.rechunked += 1,
        }
    }
    d.files.sort_by(|x, y| {
        y.new_bytes
            .cmp(&x.new_bytes)
            .then_with(|| x.path.cmp(&y.path))
    });
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{encode, SourceInfo, SourceLayer};
    use crate::pack::ChunkLoc;
    use crate::tree::{Extent, Layer, LayerEntry, Meta, Node, Tree};

    const PACK: [u8; 32] = [7; 32];

    /// A chunk of `len` raw bytes, compressed to half; id from `name`.
    fn chunk(name: &str) -> ChunkId {
        ChunkId::of(name.as_bytes())
    }

    fn lens() -> HashMap<ChunkId, u32> {
        [("x", 3000), ("y", 1000), ("z", 40_000), ("w", 5)]
            .into_iter()
            .map(|(n, l)| (chunk(n), l))
            .collect()
    }

    /// An image whose files are given as (path, contents label, extents as (chunk, off, len)).
    /// (chunk name, offset in chunk, length).
    type Ext<'a> = &'a [(&'a str, u32, u32)];

    fn image(files: &[(&str, &str, Ext<'_>)], layers: &[(&str, u64)]) -> Vec<u8> {
        let mut entries: Vec<LayerEntry> = files
            .iter()
            .map(|(p, content, ex)| LayerEntry::Node {
                path: p.as_bytes().to_vec(),
                node: Node::File {
                    size: ex.iter().map(|e| u64::from(e.2)).sum(),
                    extents: ex
                        .iter()
                        .map(|&(c, offset, len)| Extent {
                            chunk: chunk(c),
                            offset,
                            len,
                        })
                        .collect(),
                    digest: FileDigest::of(content.as_bytes()),
                },
                meta: Meta::default(),
            })
            .collect();
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        let mut t = Tree::new();
        t.apply(&Layer {
            entries,
            ..Layer::default()
        })
        .unwrap();
        let source = SourceInfo {
            config: "sha256:c".into(),
            layers: layers
                .iter()
                .map(|&(d, size)| SourceLayer {
                    digest: d.into(),
                    size,
                    ..SourceLayer::default()
                })
                .collect(),
            ..SourceInfo::default()
        };
        let lens = lens();
        encode(&t, &source, |id| {
            let rlen = lens[id];
            Ok(ChunkLoc {
                pack: BlobDigest::from_bytes(PACK),
                offset: 0,
                clen: rlen / 2 + 1,
                frame_rlen: rlen,
                at: 0,
                rlen,
            })
        })
        .unwrap()
    }

    #[test]
    fn report_and_diff_on_known_images() {
        // A: a (x:0..2000), b (x:2000..3000 + y) ; B: a same content in x, b changed into z.
        let a = image(
            &[
                ("a", "A", &[("x", 0, 2000)]),
                ("b", "B", &[("x", 2000, 1000), ("y", 0, 1000)]),
                ("gone", "G", &[("w", 0, 5)]),
            ],
            &[("sha256:l1", 100), ("sha256:l2", 50)],
        );
        let b = image(
            &[
                ("a", "A", &[("x", 0, 2000)]),
                ("b", "B2", &[("z", 0, 40_000)]),
                ("c", "Y", &[("y", 0, 1000)]),
            ],
            &[("sha256:l1", 100), ("sha256:l3", 70)],
        );
        let (ma, mb) = (
            MetaBlob::open(&a[..]).unwrap(),
            MetaBlob::open(&b[..]).unwrap(),
        );
        let packs = HashMap::from([(
            BlobDigest::from_bytes(PACK),
            PackSize {
                blob_bytes: 99_000,
                frame_bytes: 90_000,
                frames: 4,
            },
        )]);
        let inputs = [
            Input {
                name: "a",
                meta: &ma,
                meta_digest: BlobDigest::of(ma.bytes()),
                meta_stored: ma.bytes().len() as u64,
            },
            Input {
                name: "b",
                meta: &mb,
                meta_digest: BlobDigest::of(mb.bytes()),
                meta_stored: mb.bytes().len() as u64,
            },
        ];
        let r = compute(&inputs, &packs).unwrap();
        let (ia, ib) = (&r.images[0], &r.images[1]);
        assert_eq!((ia.files, ia.logical_bytes, ia.chunks), (3, 4005, 3));
        assert_eq!(logical_size(&ma).unwrap(), (3, 4005));
        assert_eq!(logical_size(&mb).unwrap(), (ib.files, ib.logical_bytes));
        assert_eq!(
            (ia.chunk_bytes, ia.unique_bytes, ia.shared_bytes),
            (4005, 5, 4000)
        );
        assert_eq!(
            (ia.stored_bytes, ia.unique_stored_bytes),
            (1501 + 501 + 3, 3)
        );
        assert_eq!((ia.source_layers, ia.source_bytes), (2, 150));
        assert_eq!(
            (ib.files, ib.logical_bytes, ib.chunk_bytes),
            (3, 43_000, 44_000)
        );
        assert_eq!((ib.unique_bytes, ib.shared_bytes), (40_000, 4000));
        let t = &r.totals;
        assert_eq!((t.files, t.logical_bytes), (6, 47_005));
        // Contents A, B, G, B2, Y: 2000 + 2000 + 5 + 40000 + 1000.
        assert_eq!((t.file_contents, t.file_dedup_bytes), (5, 45_005));
        assert_eq!((t.chunks, t.chunk_bytes), (4, 44_005));
        assert_eq!(t.stored_bytes, 1501 + 501 + 3 + 20_001);
        assert_eq!(
            (t.source_layers, t.source_bytes, t.source_bytes_per_image),
            (3, 220, 320)
        );
        assert_eq!(
            (t.packs, t.pack_bytes, t.pack_frame_bytes),
            (1, 99_000, 90_000)
        );
        assert_eq!(r.sharing, vec![vec![4005, 4000], vec![4000, 44_000]]);
        assert_eq!(
            r.refcounts
                .iter()
                .map(|c| (c.images, c.chunks, c.bytes))
                .collect::<Vec<_>>(),
            vec![(1, 2, 40_005), (2, 2, 4000)]
        );
        // Buckets 4..8 (w), then 512..1024 (y), 2048..4096 (x), 32768..65536 (z).
        let h: Vec<_> = r
            .histogram
            .iter()
            .map(|b| (b.min, b.max, b.chunks))
            .collect();
        assert_eq!(h.first(), Some(&(4, 8, 1)));
        assert_eq!(h.last(), Some(&(32768, 65536, 1)));
        assert_eq!(h.len(), 14);
        assert_eq!(r.histogram.iter().map(|b| b.bytes).sum::<u64>(), 44_005);

        let d = diff(inputs[0].clone_ref(), inputs[1].clone_ref()).unwrap();
        assert_eq!((d.new_chunks, d.new_chunk_bytes), (1, 40_000));
        assert_eq!((d.dropped_chunks, d.dropped_chunk_bytes), (1, 5));
        let got: Vec<_> = d
            .files
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&f.path).into_owned(),
                    f.change,
                    f.new_bytes,
                    f.content_in_a,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), Change::Modified, 40_000, false),
                ("c".into(), Change::Added, 0, false),
                ("gone".into(), Change::Removed, 0, true),
            ]
        );
        assert_eq!((d.unchanged, d.added, d.removed, d.modified), (1, 1, 1, 1));
    }
}
