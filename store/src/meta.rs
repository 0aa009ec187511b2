//! The image metadata blob: the flattened tree in fixed-size little-endian
//! records, readable in place (from a `Vec` or a memory map) without decoding
//! every inode. Byte layout in docs/FORMAT.md, "Metadata blob".

use std::collections::HashMap;

use puzzle_chunker::ChunkId;
use serde::{Deserialize, Serialize};

use crate::digest::BlobDigest;
use crate::error::{Error, Result};
use crate::pack::ChunkLoc;
use crate::tree::{FileDigest, InodeKind, Tree};

pub const META_MAGIC: &[u8; 8] = b"PZLMETA\0";

pub const META_VERSION: u32 = 2;
pub const HEADER_LEN: usize = 16 + SECTIONS * 16;

/// zstd level of a stored metadata blob. On these tables level 1 gives a
/// smaller frame than level 3, and faster (benches/SIZE.md).
pub const STORED_ZSTD_LEVEL: i32 = 1;

/// A metadata blob's stored form: its bytes as one zstd frame (with its
/// content size in the frame header).
pub fn compress(raw: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(raw, STORED_ZSTD_LEVEL).expect("compressing to memory")
}

/// A metadata blob's bytes from its stored form ([`compress`]): exactly one
/// zstd frame that states its content size, at most `limit` bytes. The
/// output is allocated at that size once, so a small hostile frame cannot
/// make the reader grow a buffer past the limit.
pub fn decompress(stored: &[u8], limit: u64) -> Result<Vec<u8>> {
    let bad = |why: String| corrupt(format!("stored metadata: {why}"));
    let size = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(bad("the zstd frame does not state its size".into())),
        Err(_) => return Err(bad("not a zstd frame".into())),
    };
    if size > limit {
        return Err(bad(format!(
            "{size} bytes decompressed is over the {limit}-byte limit"
        )));
    }
    match zstd::zstd_safe::find_frame_compressed_size(stored) {
        Ok(n) if n == stored.len() => {}
        _ => return Err(bad("not exactly one zstd frame".into())),
    }
    let raw =
        zstd::bulk::decompress(stored, size as usize).map_err(|e| bad(format!("zstd: {e}")))?;
    if raw.len() as u64 != size {
        return Err(bad(format!(
            "{} bytes decompressed, the frame says {size}",
            raw.len()
        )));
    }
    Ok(raw)
}
const SECTIONS: usize = 9;
const S_SOURCE: usize = 0;
const S_PACKS: usize = 1;
const S_CHUNKS: usize = 2;
const S_INODES: usize = 3;
const S_DIRENTS: usize = 4;
const S_EXTENTS: usize = 5;
const S_XATTRS: usize = 6;
const S_STRINGS: usize = 7;
const S_DIGESTS: usize = 8;
/// Record sizes per section (1 for byte sections).
const REC: [usize; SECTIONS] = [1, 32, 64, 64, 16, 24, 24, 1, 32];
const SECTION_NAMES: [&str; SECTIONS] = [
    "source", "packs", "chunks", "inodes", "dirents", "extents", "xattrs", "strings", "digests",
];

/// Inode kinds as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    CharDev = 4,
    BlockDev = 5,
    Fifo = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::CharDev,
            5 => Kind::BlockDev,
            6 => Kind::Fifo,
            _ => return None,
        })
    }
}

/// Where the image came from: the original layers, for reports and export.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// Digest of the original image manifest, when the source had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    pub config: String,
    pub layers: Vec<SourceLayer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLayer {
    pub digest: String,
    pub size: u64,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    #[serde(rename = "diffId")]
    pub diff_id: String,
}

/// Appends one chunk-table record (64 bytes; docs/FORMAT.md).
fn push_chunk(chunks: &mut Vec<u8>, id: &ChunkId, pack: u32, loc: &ChunkLoc) {
    chunks.extend_from_slice(id.as_bytes());
    chunks.extend_from_slice(&pack.to_le_bytes());
    chunks.extend_from_slice(&loc.rlen.to_le_bytes());
    chunks.extend_from_slice(&loc.offset.to_le_bytes());
    chunks.extend_from_slice(&loc.clen.to_le_bytes());
    chunks.extend_from_slice(&loc.frame_rlen.to_le_bytes());
    chunks.extend_from_slice(&loc.at.to_le_bytes());
    chunks.extend_from_slice(&0u32.to_le_bytes());
}

/// Encodes a flattened tree. `locate` gives each chunk's place in the store.
pub fn encode(
    tree: &Tree,
    source: &SourceInfo,
    mut locate: impl FnMut(&ChunkId) -> Result<ChunkLoc>,
) -> Result<Vec<u8>> {
    let order = tree.order();
    let mut number = vec![u32::MAX; tree.inodes.len()];
    for (n, &i) in order.iter().enumerate() {
        number[i] = u32::try_from(n).map_err(|_| Error::Corrupt {
            what: "image".into(),
            why: "more than 2^32 inodes".into(),
        })?;
    }
    // Link counts: names pointing at each inode; directories count "." and "..".
    let mut nlink = vec![0u32; tree.inodes.len()];
    nlink[Tree::ROOT] = 2;
    for &i in &order {
        if let InodeKind::Dir(children) = &tree.inodes[i].kind {
            for &c in children.values() {
                if matches!(tree.inodes[c].kind, InodeKind::Dir(_)) {
                    nlink[c] = 2;
                    nlink[i] += 1;
                } else {
                    nlink[c] += 1;
                }
            }
        }
    }

    let mut inodes = Vec::with_capacity(order.len() * 64);
    let mut dirents = Vec::new();
    let mut extents = Vec::new();
    let mut xattrs = Vec::new();
    let mut strings = Vec::new();
    let mut digests = Vec::with_capacity(order.len() * 32);
    let mut chunk_index: HashMap<ChunkId, u32> = HashMap::new();
    let mut chunks = Vec::new();
    let mut pack_index: HashMap<BlobDigest, u32> = HashMap::new();
    let mut packs = Vec::new();
    let (mut n_dirents, mut n_extents, mut n_xattrs) = (0u64, 0u64, 0u64);

    let push_str = |strings: &mut Vec<u8>, s: &[u8]| -> u64 {
        let off = strings.len() as u64;
        strings.extend_from_slice(s);
        off
    };

    for &i in &order {
        let ino = &tree.inodes[i];
        let (kind, size, a, b): (Kind, u64, u64, u32) = match &ino.kind {
            InodeKind::File {
                size,
                extents: ex,
                digest,
            } => {
                digests.extend_from_slice(digest.as_bytes());
                let first = n_extents;
                let mut file_off = 0u64;
                for e in ex {
                    let ci = match chunk_index.get(&e.chunk) {
                        Some(&ci) => ci,
                        None => {
                            let loc = locate(&e.chunk)?;
                            let pi = *pack_index.entry(loc.pack).or_insert_with(|| {
                                packs.extend_from_slice(loc.pack.as_bytes());
                                (packs.len() / 32 - 1) as u32
                            });
                            push_chunk(&mut chunks, &e.chunk, pi, &loc);
                            let ci = chunk_index.len() as u32;
                            chunk_index.insert(e.chunk, ci);
                            ci
                        }
                    };
                    extents.extend_from_slice(&file_off.to_le_bytes());
                    extents.extend_from_slice(&ci.to_le_bytes());
                    extents.extend_from_slice(&e.offset.to_le_bytes());
                    extents.extend_from_slice(&e.len.to_le_bytes());
                    extents.extend_from_slice(&0u32.to_le_bytes());
                    file_off += u64::from(e.len);
                    n_extents += 1;
                }
                if file_off != *size {
                    return Err(Error::Corrupt {
                        what: "image tree".into(),
                        why: format!("file of {size} bytes has extents for {file_off}"),
                    });
                }
                (Kind::File, *size, first, ex.len() as u32)
            }
            InodeKind::Dir(children) => {
                let first = n_dirents;
                for (name, &c) in children {
                    let off = push_str(&mut strings, name);
                    dirents.extend_from_slice(&off.to_le_bytes());
                    dirents.extend_from_slice(&(name.len() as u32).to_le_bytes());
                    dirents.extend_from_slice(&number[c].to_le_bytes());
                    n_dirents += 1;
                }
                (Kind::Dir, 0, first, children.len() as u32)
            }
            InodeKind::Symlink(t) => {
                let off = push_str(&mut strings, t);
                (Kind::Symlink, t.len() as u64, off, t.len() as u32)
            }
            InodeKind::CharDev { major, minor } => (
                Kind::CharDev,
                0,
                (u64::from(*major) << 32) | u64::from(*minor),
                0,
            ),
            InodeKind::BlockDev { major, minor } => (
                Kind::BlockDev,
                0,
                (u64::from(*major) << 32) | u64::from(*minor),
                0,
            ),
            InodeKind::Fifo => (Kind::Fifo, 0, 0, 0),
        };
        if kind != Kind::File {
            digests.extend_from_slice(&[0; 32]);
        }
        let xattr_first = n_xattrs;
        for (name, value) in &ino.meta.xattrs {
            let noff = push_str(&mut strings, name);
            let voff = push_str(&mut strings, value);
            xattrs.extend_from_slice(&noff.to_le_bytes());
            xattrs.extend_from_slice(&voff.to_le_bytes());
            xattrs.extend_from_slice(&(name.len() as u32).to_le_bytes());
            xattrs.extend_from_slice(&(value.len() as u32).to_le_bytes());
            n_xattrs += 1;
        }
        let m = &ino.meta;
        inodes.push(kind as u8);
        inodes.extend_from_slice(&[0; 3]);
        inodes.extend_from_slice(&(m.mode & 0o7777).to_le_bytes());
        inodes.extend_from_slice(&m.uid.to_le_bytes());
        inodes.extend_from_slice(&m.gid.to_le_bytes());
        inodes.extend_from_slice(&nlink[i].to_le_bytes());
        inodes.extend_from_slice(&m.mtime_nsec.to_le_bytes());
        inodes.extend_from_slice(&m.mtime.to_le_bytes());
        inodes.extend_from_slice(&size.to_le_bytes());
        inodes.extend_from_slice(&a.to_le_bytes());
        inodes.extend_from_slice(&b.to_le_bytes());
        inodes.extend_from_slice(&(ino.meta.xattrs.len() as u32).to_le_bytes());
        inodes.extend_from_slice(&xattr_first.to_le_bytes());
    }

    let source_json = serde_json::to_vec(source).expect("source info serializes");
    Ok(assemble([
        &source_json,
        &packs,
        &chunks,
        &inodes,
        &dirents,
        &extents,
        &xattrs,
        &strings,
        &digests,
    ]))
}

/// Header plus sections, each padded to a multiple of 8.
fn assemble(sections: [&[u8]; SECTIONS]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(HEADER_LEN + sections.iter().map(|s| s.len() + 8).sum::<usize>());
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut off = HEADER_LEN as u64;
    for s in &sections {
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        off = (off + s.len() as u64).next_multiple_of(8);
    }
    for s in &sections {
        out.extend_from_slice(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out
}

/// A decoded inode record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InodeRec {
    pub ino: u32,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub size: u64,
    a: u64,
    b: u32,
    xattr_count: u32,
    xattr_first: u64,
}

impl InodeRec {
    /// `(major, minor)` of a device node.
    pub fn rdev(&self) -> (u32, u32) {
        match self.kind {
            Kind::CharDev | Kind::BlockDev => ((self.a >> 32) as u32, self.a as u32),
            _ => (0, 0),
        }
    }
    /// Entries of a directory, extents of a file; 0 otherwise.
    pub fn count(&self) -> u32 {
        match self.kind {
            Kind::File | Kind::Dir => self.b,
            _ => 0,
        }
    }
    pub fn xattr_count(&self) -> u32 {
        self.xattr_count
    }
}

/// One extent of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentRec {
    pub file_offset: u64,
    pub chunk: u32,
    pub chunk_offset: u32,
    pub len: u32,
}

/// One entry of the chunk table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRec {
    pub id: ChunkId,
    pub loc: ChunkLoc,
}

/// A metadata blob opened for reading. Every accessor checks bounds and
/// returns `Corrupt` rather than panicking on a damaged blob.
pub struct MetaBlob<B> {
    buf: B,
    sec: [(usize, usize); SECTIONS],
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn corrupt(why: String) -> Error {
    Error::Corrupt {
        what: "metadata blob".into(),
        why,
    }
}

impl<B: AsRef<[u8]>> MetaBlob<B> {
    /// Checks the header and that every section lies inside the blob.
    pub fn open(buf: B) -> Result<Self> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(corrupt(format!(
                "{} bytes is shorter than the header",
                b.len()
            )));
        }
        if &b[..8] != META_MAGIC {
            return Err(corrupt("bad magic".into()));
        }
        let version = u32_at(b, 8);
        if version != META_VERSION {
            return Err(corrupt(format!("unsupported version {version}")));
        }
        let mut sec = [(0usize, 0usize); SECTIONS];
        for (i, s) in sec.iter_mut().enumerate() {
            let off = u64_at(b, 16 + i * 16);
            let len = u64_at(b, 24 + i * 16);
            let end = off.checked_add(len);
            if off < HEADER_LEN as u64 || end.is_none_or(|e| e > b.len() as u64) {
                return Err(corrupt(format!(
                    "section {} out of bounds",
                    SECTION_NAMES[i]
                )));
            }
            if !len.is_multiple_of(REC[i] as u64) {
                return Err(corrupt(format!(
                    "section {} is not a whole number of records",
                    SECTION_NAMES[i]
                )));
            }
            *s = (off as usize, len as usize);
        }
        let m = MetaBlob { buf, sec };
        if (m.sec[S_DIGESTS].1 / REC[S_DIGESTS]) as u64 != m.inode_count() {
            return Err(corrupt("digests section does not match the inodes".into()));
        }
        if m.inode_count() == 0 || m.inode(0)?.kind != Kind::Dir {
            return Err(corrupt("the root is not a directory".into()));
        }
        Ok(m)
    }

    fn section(&self, s: usize) -> &[u8] {
        let (off, len) = self.sec[s];
        &self.buf.as_ref()[off..off + len]
    }

    fn record(&self, s: usize, i: u64) -> Result<&[u8]> {
        let sec = self.section(s);
        let r = REC[s];
        let start = usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(r))
            .filter(|&st| st + r <= sec.len())
            .ok_or_else(|| corrupt(format!("{} record {i} out of range", SECTION_NAMES[s])))?;
        Ok(&sec[start..start + r])
    }

    fn string(&self, off: u64, len: u32) -> Result<&[u8]> {
        let s = self.section(S_STRINGS);
        let start = usize::try_from(off).unwrap_or(usize::MAX);
        start
            .checked_add(len as usize)
            .filter(|&end| end <= s.len())
            .map(|end| &s[start..end])
            .ok_or_else(|| corrupt(format!("string at {off}+{len} out of range")))
    }

    /// The whole blob.
    pub fn bytes(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Re-encodes this blob with every chunk at the location `locate` gives
    /// (gc calls it after moving chunks to new packs). The chunk table keeps
    /// its order; the pack table is rebuilt in first-use order of the chunk
    /// table, as `encode` numbers packs. Every other section is copied as is.
    pub fn relocate(
        &self,
        mut locate: impl FnMut(&ChunkRec) -> Result<ChunkLoc>,
    ) -> Result<Vec<u8>> {
        let mut pack_index: HashMap<BlobDigest, u32> = HashMap::new();
        let mut packs = Vec::new();
        let mut chunks = Vec::with_capacity(self.sec[S_CHUNKS].1);
        for i in 0..self.chunk_count() {
            let rec = self.chunk(i as u32)?;
            let loc = locate(&rec)?;
            let pi = *pack_index.entry(loc.pack).or_insert_with(|| {
                packs.extend_from_slice(loc.pack.as_bytes());
                (packs.len() / 32 - 1) as u32
            });
            push_chunk(&mut chunks, &rec.id, pi, &loc);
        }
        Ok(assemble([
            self.section(S_SOURCE),
            &packs,
            &chunks,
            self.section(S_INODES),
            self.section(S_DIRENTS),
            self.section(S_EXTENTS),
            self.section(S_XATTRS),
            self.section(S_STRINGS),
            self.section(S_DIGESTS),
        ]))
    }

    /// Checks every record, without following the tree (so cycles cannot
    /// loop): each inode decodes; a directory's entries are in range, sorted,
    /// valid names of existing inodes; a file's extents are contiguous, sum
    /// to its size and name existing chunks; xattrs and symlink targets are
    /// in range; every chunk record names a pack in the table.
    pub fn check(&self) -> Result<()> {
        self.source()?;
        for i in 0..self.chunk_count() {
            self.chunk(i as u32)?;
        }
        let inodes = self.inode_count();
        for n in 0..inodes {
            let n = u32::try_from(n).map_err(|_| corrupt("more than 2^32 inodes".into()))?;
            let ino = self.inode(n)?;
            self.xattrs(&ino)?;
            match ino.kind {
                Kind::Dir => {
                    let mut prev: Option<&[u8]> = None;
                    for i in 0..ino.count() {
                        let (name, c) = self.dirent(&ino, i)?;
                        if name.is_empty()
                            || name == b"."
                            || name == b".."
                            || name.iter().any(|&b| b == b'/' || b == 0)
                        {
                            return Err(corrupt(format!("inode {n} has a bad entry name")));
                        }
                        if prev.is_some_and(|p| p >= name) {
                            return Err(corrupt(format!("inode {n}: entries not sorted")));
                        }
                        if u64::from(c) >= inodes || c == 0 {
                            return Err(corrupt(format!("inode {n}: entry names inode {c}")));
                        }
                        prev = Some(name);
                    }
                }
                Kind::File => {
                    let mut off = 0u64;
                    for i in 0..ino.count() {
                        let e = self.extent(&ino, i)?;
                        if e.file_offset != off || u64::from(e.chunk) >= self.chunk_count() {
                            return Err(corrupt(format!("inode {n}: extent {i} out of place")));
                        }
                        let rec = self.chunk(e.chunk)?;
                        if u64::from(e.chunk_offset) + u64::from(e.len) > u64::from(rec.loc.rlen) {
                            return Err(corrupt(format!(
                                "inode {n}: extent {i} overruns its chunk"
                            )));
                        }
                        off = off.saturating_add(u64::from(e.len));
                    }
                    if off != ino.size {
                        return Err(corrupt(format!(
                            "inode {n}: extents cover {off} of {} bytes",
                            ino.size
                        )));
                    }
                }
                Kind::Symlink => {
                    self.symlink_target(&ino)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn inode_count(&self) -> u64 {
        (self.sec[S_INODES].1 / REC[S_INODES]) as u64
    }
    pub fn chunk_count(&self) -> u64 {
        (self.sec[S_CHUNKS].1 / REC[S_CHUNKS]) as u64
    }
    /// Extended attributes over all inodes.
    pub fn xattr_total(&self) -> u64 {
        (self.sec[S_XATTRS].1 / REC[S_XATTRS]) as u64
    }
    pub fn pack_count(&self) -> u64 {
        (self.sec[S_PACKS].1 / REC[S_PACKS]) as u64
    }

    pub fn source(&self) -> Result<SourceInfo> {
        serde_json::from_slice(self.section(S_SOURCE))
            .map_err(|e| corrupt(format!("source section: {e}")))
    }

    pub fn pack(&self, i: u32) -> Result<BlobDigest> {
        let r = self.record(S_PACKS, u64::from(i))?;
        Ok(BlobDigest::from_bytes(r.try_into().expect("32 bytes")))
    }

    pub fn packs(&self) -> Result<Vec<BlobDigest>> {
        (0..self.pack_count() as u32)
            .map(|i| self.pack(i))
            .collect()
    }

    pub fn chunk(&self, i: u32) -> Result<ChunkRec> {
        let r = self.record(S_CHUNKS, u64::from(i))?;
        let id = ChunkId::from_bytes(r[..32].try_into().expect("32 bytes"));
        let pack = self.pack(u32_at(r, 32))?;
        let loc = ChunkLoc {
            pack,
            rlen: u32_at(r, 36),
            offset: u64_at(r, 40),
            clen: u32_at(r, 48),
            frame_rlen: u32_at(r, 52),
            at: u32_at(r, 56),
        };
        loc.check()
            .map_err(|why| corrupt(format!("chunk {id}: {why}")))?;
        Ok(ChunkRec { id, loc })
    }

    pub fn root(&self) -> Result<InodeRec> {
        self.inode(0)
    }

    pub fn inode(&self, ino: u32) -> Result<InodeRec> {
        let r = self.record(S_INODES, u64::from(ino))?;
        let kind =
            Kind::from_u8(r[0]).ok_or_else(|| corrupt(format!("inode {ino} has kind {}", r[0])))?;
        Ok(InodeRec {
            ino,
            kind,
            mode: u32_at(r, 4) & 0o7777,
            uid: u32_at(r, 8),
            gid: u32_at(r, 12),
            nlink: u32_at(r, 16),
            mtime_nsec: u32_at(r, 20),
            mtime: u64_at(r, 24) as i64,
            size: u64_at(r, 32),
            a: u64_at(r, 40),
            b: u32_at(r, 48),
            xattr_count: u32_at(r, 52),
            xattr_first: u64_at(r, 56),
        })
    }

    /// The `i`th entry of directory `dir`: (name, inode).
    pub fn dirent(&self, dir: &InodeRec, i: u32) -> Result<(&[u8], u32)> {
        if dir.kind != Kind::Dir || i >= dir.b {
            return Err(corrupt(format!("dirent {i} of inode {}", dir.ino)));
        }
        let r = self.record(S_DIRENTS, dir.a.saturating_add(u64::from(i)))?;
        let name = self.string(u64_at(r, 0), u32_at(r, 8))?;
        Ok((name, u32_at(r, 12)))
    }

    /// Binary search of a directory's sorted entries.
    pub fn lookup(&self, dir: &InodeRec, name: &[u8]) -> Result<Option<u32>> {
        let (mut lo, mut hi) = (0u32, dir.count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (n, ino) = self.dirent(dir, mid)?;
            match n.cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(ino)),
            }
        }
        Ok(None)
    }

    pub fn extent(&self, file: &InodeRec, i: u32) -> Result<ExtentRec> {
        if file.kind != Kind::File || i >= file.b {
            return Err(corrupt(format!("extent {i} of inode {}", file.ino)));
        }
        let r = self.record(S_EXTENTS, file.a.saturating_add(u64::from(i)))?;
        Ok(ExtentRec {
            file_offset: u64_at(r, 0),
            chunk: u32_at(r, 8),
            chunk_offset: u32_at(r, 12),
            len: u32_at(r, 16),
        })
    }

    /// Index of the extent holding byte `offset` of `file` (binary search),
    /// or `None` past the end.
    pub fn find_extent(&self, file: &InodeRec, offset: u64) -> Result<Option<u32>> {
        if offset >= file.size {
            return Ok(None);
        }
        let (mut lo, mut hi) = (0u32, file.count());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.extent(file, mid)?;
            if e.file_offset.saturating_add(u64::from(e.len)) <= offset {
                lo = mid + 1;
            } else if e.file_offset > offset {
                hi = mid;
            } else {
                return Ok(Some(mid));
            }
        }
        Err(corrupt(format!(
            "inode {} has no extent for offset {offset}",
            file.ino
        )))
    }

    /// BLAKE3 of a regular file's contents.
    pub fn file_digest(&self, file: &InodeRec) -> Result<FileDigest> {
        if file.kind != Kind::File {
            return Err(corrupt(format!("inode {} is not a file", file.ino)));
        }
        let r = self.record(S_DIGESTS, u64::from(file.ino))?;
        Ok(FileDigest::from_bytes(r.try_into().expect("32 bytes")))
    }

    pub fn symlink_target(&self, link: &InodeRec) -> Result<&[u8]> {
        if link.kind != Kind::Symlink {
            return Err(corrupt(format!("inode {} is not a symlink", link.ino)));
        }
        self.string(link.a, link.b)
    }

    pub fn xattrs(&self, ino: &InodeRec) -> Result<Vec<(&[u8], &[u8])>> {
        (0..ino.xattr_count)
            .map(|i| {
                let r = self.record(S_XATTRS, ino.xattr_first.saturating_add(u64::from(i)))?;
                let name = self.string(u64_at(r, 0), u32_at(r, 16))?;
                let value = self.string(u64_at(r, 8), u32_at(r, 20))?;
                Ok((name, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
