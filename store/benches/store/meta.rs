//! The image metadata blob: encoding, reading, and the lookups a mount does.
//!
//! Synthetic images are built through the store's own API ([`Layer`] applied
//! to a [`Tree`]) from fixed seeds:
//!
//! - `10k` / `100k`: that many regular files, 100 per directory
//!   (`usr/pNNN/dN/fileNN.txt`), sizes from 0 to 256 KiB (skewed small),
//!   laid end to end in one stream cut into chunks of 16-112 KiB, so small
//!   files share chunks and large ones span several, as in a converted layer.
//! - `large_file`: one file of 1 GiB in about 16,000 such chunks.
//!
//! Benchmarks (element = one file, or one lookup; `open` has no throughput):
//!
//! - `meta/encode/{10k,100k}`: [`meta::encode`] of the flattened tree.
//! - `meta/open/{10k,100k}`: [`MetaBlob::open`] (header and section bounds),
//!   all a mount does up front.
//! - `meta/check/{10k,100k}`: open and [`MetaBlob::check`] (every record).
//! - `meta/walk/{10k,100k}`: every inode, directory entry, extent and chunk
//!   record reached from the root, as extract or `ls -lR` would.
//! - `meta/lookup_path/100k`: resolving a file's path from the root one
//!   component at a time ([`MetaBlob::lookup`], a binary search per
//!   directory), 1024 seeded paths in turn.
//! - `extents/{large_file,small_files}/128KiB`: what the FUSE read path does
//!   before touching chunk data (fuse/src/fs.rs `read_inner`): decode the
//!   inode, [`MetaBlob::find_extent`] (binary search) for the offset, then the
//!   extents and chunk records covering 128 KiB; 1024 seeded (file, offset)
//!   pairs in turn, offsets uniform in the file.

use std::collections::{BTreeSet, HashMap};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use puzzle_chunker::ChunkId;
use puzzle_store::meta::{self, Kind, MetaBlob, SourceInfo};
use puzzle_store::pack::ChunkLoc;
use puzzle_store::tree::{Extent, FileDigest, Layer, LayerEntry, Meta, Node, Tree};
use puzzle_store::{BlobDigest, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;

/// The chunks of the virtual layer stream the files are cut from.
struct Stream {
    rng: ChaCha8Rng,
    chunks: u64,
    /// Length of the current chunk and how much of it files have used.
    len: u32,
    used: u32,
    id: ChunkId,
    locs: HashMap<ChunkId, ChunkLoc>,
    pack_offset: u64,
}

/// Chunks per pack; with frames of a third of 64 KiB, about 10 MiB packs.
const PACK_CHUNKS: u64 = 512;

impl Stream {
    fn new(seed: u64) -> Stream {
        let mut s = Stream {
            rng: ChaCha8Rng::seed_from_u64(seed),
            chunks: 0,
            len: 0,
            used: 0,
            id: ChunkId::from_bytes([0; 32]),
            locs: HashMap::new(),
            pack_offset: 0,
        };
        s.next_chunk();
        s
    }

    fn next_chunk(&mut self) {
        let n = self.chunks;
        self.chunks += 1;
        self.len = self.rng.gen_range(16 << 10..=112 << 10);
        self.used = 0;
        self.id = ChunkId::of(&n.to_le_bytes());
        if n.is_multiple_of(PACK_CHUNKS) {
            self.pack_offset = 0;
        }
        let clen = self.len / 3;
        self.locs.insert(
            self.id,
            ChunkLoc {
                pack: BlobDigest::of(&(n / PACK_CHUNKS).to_le_bytes()),
                offset: self.pack_offset,
                clen,
                frame_rlen: self.len,
                at: 0,
                rlen: self.len,
            },
        );
        self.pack_offset += u64::from(clen);
    }

    /// The extents of the next `size` bytes of the stream.
    fn extents(&mut self, mut size: u64) -> Vec<Extent> {
        let mut out = Vec::new();
        while size > 0 {
            if self.used == self.len {
                self.next_chunk();
            }
            let take = u64::from(self.len - self.used).min(size) as u32;
            out.push(Extent {
                chunk: self.id,
                offset: self.used,
                len: take,
            });
            self.used += take;
            size -= u64::from(take);
        }
        out
    }
}

/// A flattened synthetic image and where its chunks are.
struct Synthetic {
    tree: Tree,
    locs: HashMap<ChunkId, ChunkLoc>,
    files: usize,
    paths: Vec<Vec<u8>>,
}

/// One layer holding `files` (path, size) and their parent directories.
fn synthetic(files: Vec<(Vec<u8>, u64)>, seed: u64) -> Synthetic {
    let mut stream = Stream::new(seed);
    let mut dirs = BTreeSet::new();
    let mut entries = Vec::with_capacity(files.len() * 101 / 100);
    // Files in path order, as a layer is chunked.
    for (n, (path, size)) in files.iter().enumerate() {
        for (i, &b) in path.iter().enumerate() {
            if b == b'/' {
                dirs.insert(path[..i].to_vec());
            }
        }
        entries.push(LayerEntry::Node {
            path: path.clone(),
            node: Node::File {
                size: *size,
                extents: stream.extents(*size),
                digest: FileDigest::of(path),
            },
            meta: Meta {
                mode: 0o644,
                mtime: 1_700_000_000 + n as i64,
                ..Meta::default()
            },
        });
    }
    for path in dirs {
        entries.push(LayerEntry::Node {
            path,
            node: Node::Dir,
            meta: Meta {
                mode: 0o755,
                mtime: 1_700_000_000,
                ..Meta::default()
            },
        });
    }
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut tree = Tree::new();
    tree.apply(&Layer {
        entries,
        ..Layer::default()
    })
    .expect("synthetic layer applies");
    Synthetic {
        tree,
        locs: stream.locs,
        files: files.len(),
        paths: files.into_iter().map(|(p, _)| p).collect(),
    }
}

/// `n` files, 100 per directory, 10 directories per parent.
fn many_files(n: usize, seed: u64) -> Synthetic {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let files = (0..n)
        .map(|k| {
            let path = format!(
                "usr/p{:03}/d{}/file{:02}.txt",
                k / 1000,
                (k / 100) % 10,
                k % 100
            );
            // Log-uniform-ish: most files are small, a few reach 256 KiB.
            let bits = rng.gen_range(4..=18);
            let size = rng.gen_range(0..=1u64 << bits);
            (path.into_bytes(), size)
        })
        .collect();
    synthetic(files, seed + 1)
}

fn large_file(seed: u64) -> Synthetic {
    synthetic(vec![(b"data/large.bin".to_vec(), 1 << 30)], seed)
}

fn encode(s: &Synthetic) -> Vec<u8> {
    let source = SourceInfo {
        config: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
        ..SourceInfo::default()
    };
    meta::encode(&s.tree, &source, |id| Ok(s.locs[id])).expect("encode")
}

/// Visits every inode, entry, extent and chunk record; returns the files as
/// (inode, size).
fn walk(m: &MetaBlob<&[u8]>) -> Result<Vec<(u32, u64)>> {
    let mut files = Vec::new();
    let mut stack = vec![m.root()?];
    while let Some(ino) = stack.pop() {
        match ino.kind {
            Kind::Dir => {
                for i in 0..ino.count() {
                    let (name, child) = m.dirent(&ino, i)?;
                    black_box(name);
                    stack.push(m.inode(child)?);
                }
            }
            Kind::File => {
                for i in 0..ino.count() {
                    let e = m.extent(&ino, i)?;
                    black_box(m.chunk(e.chunk)?);
                }
                files.push((ino.ino, ino.size));
            }
            _ => {}
        }
    }
    Ok(files)
}

/// The chunk ranges a read of `size` bytes at `offset` needs, as fuse's
/// `read_inner` finds them; returns how many bytes they cover.
fn read_ranges(m: &MetaBlob<&[u8]>, ino: u32, offset: u64, size: u32) -> Result<u64> {
    let file = m.inode(ino)?;
    let end = file.size.min(offset.saturating_add(u64::from(size)));
    let Some(mut i) = m.find_extent(&file, offset)? else {
        return Ok(0);
    };
    let mut pos = offset;
    while pos < end {
        let e = m.extent(&file, i)?;
        i += 1;
        if e.len == 0 {
            continue;
        }
        black_box(m.chunk(e.chunk)?.id);
        let within = pos - e.file_offset;
        pos += (u64::from(e.len) - within).min(end - pos);
    }
    Ok(pos - offset)
}

/// Resolves a path from the root; returns its inode.
fn lookup_path(m: &MetaBlob<&[u8]>, path: &[u8]) -> Result<Option<u32>> {
    let mut ino = m.root()?;
    for comp in path.split(|&b| b == b'/') {
        match m.lookup(&ino, comp)? {
            Some(n) => ino = m.inode(n)?,
            None => return Ok(None),
        }
    }
    Ok(Some(ino.ino))
}

fn metadata(c: &mut Criterion) {
    let trees = [
        ("10k", many_files(10_000, 30)),
        ("100k", many_files(100_000, 40)),
    ];
    let blobs: Vec<Vec<u8>> = trees.iter().map(|(_, s)| encode(s)).collect();
    for ((name, s), blob) in trees.iter().zip(&blobs) {
        eprintln!(
            "meta {name}: {} files, {} chunks, blob {} bytes",
            s.files,
            s.locs.len(),
            blob.len()
        );
    }

    // Opening reads the header only: a time per call, no throughput.
    let mut g = c.benchmark_group("meta");
    for ((name, _), blob) in trees.iter().zip(&blobs) {
        g.bench_function(BenchmarkId::new("open", name), |b| {
            b.iter(|| {
                MetaBlob::open(black_box(&blob[..]))
                    .expect("open")
                    .inode_count()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("meta");
    g.sample_size(10);
    for ((name, s), blob) in trees.iter().zip(&blobs) {
        g.throughput(Throughput::Elements(s.files as u64));
        g.bench_function(BenchmarkId::new("encode", name), |b| b.iter(|| encode(s)));
        g.bench_function(BenchmarkId::new("check", name), |b| {
            b.iter(|| {
                let m = MetaBlob::open(black_box(&blob[..])).expect("open");
                m.check().expect("check")
            })
        });
        g.bench_function(BenchmarkId::new("walk", name), |b| {
            b.iter(|| {
                let m = MetaBlob::open(black_box(&blob[..])).expect("open");
                walk(&m).expect("walk").len()
            })
        });
    }

    let (_, s) = &trees[1];
    let m = MetaBlob::open(&blobs[1][..]).expect("open");
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let paths: Vec<&[u8]> = (0..1024)
        .map(|_| &s.paths[rng.gen_range(0..s.paths.len())][..])
        .collect();
    let mut i = 0;
    g.sample_size(100);
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup_path/100k", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            lookup_path(&m, paths[i])
                .expect("lookup")
                .expect("path exists")
        })
    });
    g.finish();
}

fn extents(c: &mut Criterion) {
    const READ: u32 = 128 << 10;
    let large = encode(&large_file(50));
    let small = encode(&many_files(100_000, 40));
    let mut g = c.benchmark_group("extents");
    g.throughput(Throughput::Elements(1));
    for (name, blob, seed) in [("large_file", &large, 51), ("small_files", &small, 52)] {
        let m = MetaBlob::open(&blob[..]).expect("open");
        let files: Vec<(u32, u64)> = walk(&m)
            .expect("walk")
            .into_iter()
            .filter(|&(_, size)| size > 0)
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let reads: Vec<(u32, u64)> = (0..1024)
            .map(|_| {
                let (ino, size) = files[rng.gen_range(0..files.len())];
                (ino, rng.gen_range(0..size))
            })
            .collect();
        let mut i = 0;
        g.bench_function(BenchmarkId::new(name, "128KiB"), |b| {
            b.iter(|| {
                i = (i + 1) % reads.len();
                let (ino, offset) = reads[i];
                read_ranges(&m, ino, black_box(offset), READ).expect("extents")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, metadata, extents);
