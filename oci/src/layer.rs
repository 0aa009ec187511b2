//! Converting a layer tar into a [`Layer`]: metadata kept apart, file
//! contents chunked as one stream in sorted-path order.
//!
//! Two phases, so nothing is stored before a layer is known good:
//! 1. [`spool`] parses the tar, normalizes paths, turns whiteouts into explicit
//!    deletions, and copies regular-file bytes to a temp file. The caller then
//!    checks the layer's digests ([`crate::source::LayerReader::finish`]).
//! 2. [`Spooled::chunk`] reads the spooled contents back in sorted-path order,
//!    cuts them with FastCDC, and hands every chunk to the store's writer.
//!
//! Entry order and tar-header noise (mtimes, uid names, PAX padding) never
//! change the chunk stream, only the metadata.

use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use puzzle_chunker::{ChunkId, ChunkParams, StreamChunker};
use puzzle_store::tree::{
    normalize_path, split_parent, Extent, FileDigest, Layer, LayerEntry, Meta, Node,
};
use puzzle_store::writer::ChunkWriter;
use tar::EntryType;

use crate::error::{Error, Result};

/// Longest xattr value or PAX record we keep (Linux's own xattr limit).
const MAX_XATTR_VALUE: usize = 64 << 10;

/// Counts from converting one layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerCounts {
    /// Tar entries read.
    pub entries: u64,
    /// Regular files (after dropping duplicate paths).
    pub files: u64,
    /// Bytes of regular-file contents.
    pub file_bytes: u64,
}

/// An entry waiting for its contents to be chunked.
enum Pending {
    Node {
        node: Node,
        meta: Meta,
    },
    File {
        spool_offset: u64,
        size: u64,
        digest: FileDigest,
        meta: Meta,
    },
    HardLink(Vec<u8>),
}

/// Hashes the bytes written through it: files are hashed while they are
/// spooled, so their digests cost no second read.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A parsed layer whose file contents sit in a temp file.
pub struct Spooled {
    spool: std::fs::File,
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

/// Phase 1: parse the tar stream `tar`, spooling file contents into a temp
/// file in `tmp_dir`. `progress` is called with the bytes of file content
/// read so far.
pub fn spool(tar: &mut dyn Read, tmp_dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<Spooled> {
    let spool_file = tempfile::tempfile_in(tmp_dir).map_err(|source| Error::Io {
        path: tmp_dir.to_path_buf(),
        source,
    })?;
    let mut out = BufWriter::with_capacity(1 << 20, spool_file);
    let mut spooled = 0u64;
    let mut entries: Vec<(Vec<u8>, Pending)> = Vec::new();
    let mut whiteouts = Vec::new();
    let mut opaques = Vec::new();
    let mut counts = LayerCounts::default();
    let tar_err = |e: io::Error, at: &str| match Error::from_io(e) {
        Ok(inner) => inner,
        Err(e) => Error::Tar {
            at: at.to_string(),
            source: e,
        },
    };

    let mut archive = tar::Archive::new(tar);
    let iter = archive
        .entries()
        .map_err(|e| tar_err(e, "the start of the layer"))?;
    let mut last = String::from("the start of the layer");
    for entry in iter {
        let mut entry = entry.map_err(|e| tar_err(e, &format!("the entry after {last}")))?;
        counts.entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        last = puzzle_store::error::show_path(&raw_path);
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let path = normalize_path(&raw_path).map_err(|why| entry_err(&raw_path, why))?;
        let meta = entry_meta(&mut entry, &path)?;

        // Whiteouts become explicit deletions.
        let (parent, name) = split_parent(&path);
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                opaques.push(parent.to_vec());
            } else if hidden.starts_with(b".wh.") || hidden.is_empty() {
                // Other aufs bookkeeping (.wh..wh.plnk, ...): not content.
            } else {
                let mut p = parent.to_vec();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(hidden);
                whiteouts.push(p);
            }
            continue;
        }

        let pending = match kind {
            EntryType::Regular | EntryType::Continuous => {
                let size = entry.size();
                let offset = spooled;
                let mut tee = Hashing {
                    inner: &mut out,
                    hasher: blake3::Hasher::new(),
                };
                let n = io::copy(&mut entry, &mut tee).map_err(|e| match Error::from_io(e) {
                    Ok(inner) => inner,
                    Err(e) => entry_err(&path, format!("reading contents: {e}")),
                })?;
                if n != size {
                    return Err(entry_err(
                        &path,
                        format!(
                            "truncated: the header says {size} bytes, the layer ends after {n}"
                        ),
                    ));
                }
                let digest = FileDigest::from_bytes(*tee.hasher.finalize().as_bytes());
                spooled += n;
                progress(spooled);
                Pending::File {
                    spool_offset: offset,
                    size,
                    digest,
                    meta,
                }
            }
            EntryType::Directory => Pending::Node {
                node: Node::Dir,
                meta,
            },
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "symlink without a target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(entry_err(&path, "empty or invalid symlink target"));
                }
                Pending::Node {
                    node: Node::Symlink(target.into_owned()),
                    meta,
                }
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(&path, "hard link without a target"))?;
                let target = normalize_path(&target).map_err(|why| {
                    entry_err(
                        &path,
                        format!(
                            "hard link target {}: {why}",
                            String::from_utf8_lossy(&target).escape_debug()
                        ),
                    )
                })?;
                if target.is_empty() {
                    return Err(entry_err(&path, "hard link to the root"));
                }
                Pending::HardLink(target)
            }
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let node = if kind == EntryType::Char {
                    Node::CharDev { major, minor }
                } else {
                    Node::BlockDev { major, minor }
                };
                Pending::Node { node, meta }
            }
            EntryType::Fifo => Pending::Node {
                node: Node::Fifo,
                meta,
            },
            other => {
                return Err(entry_err(
                    &path,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ))
            }
        };
        entries.push((path, pending));
    }
    let spool = out.into_inner().map_err(|e| Error::Io {
        path: tmp_dir.to_path_buf(),
        source: e.into_error(),
    })?;

    // Sort by path; of duplicates the last in the tar wins.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].0.cmp(&entries[b].0).then(b.cmp(&a)));
    order.dedup_by(|a, b| entries[*a].0 == entries[*b].0);
    let mut slots: Vec<Option<(Vec<u8>, Pending)>> = entries.into_iter().map(Some).collect();
    let entries: Vec<(Vec<u8>, Pending)> = order
        .into_iter()
        .map(|i| slots[i].take().expect("each index once"))
        .collect();
    let mut entries = entries;
    canonical_links(&mut entries);
    for (_, p) in &entries {
        if let Pending::File { size, .. } = p {
            counts.files += 1;
            counts.file_bytes += size;
        }
    }
    whiteouts.sort();
    whiteouts.dedup();
    opaques.sort();
    opaques.dedup();
    Ok(Spooled {
        spool,
        entries,
        whiteouts,
        opaques,
        counts,
    })
}

/// Makes the smallest path of each hard-link group within the layer the
/// one that carries the data, the others links to it. Which name a tar writer
/// gives the data to depends on its directory walk; without this, the same
/// content would move around the sorted chunk stream between builds.
fn canonical_links(entries: &mut [(Vec<u8>, Pending)]) {
    let index: std::collections::HashMap<&[u8], usize> = entries
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (p.as_slice(), i))
        .collect();
    // Resolve every link to the file it finally names (links to links allowed).
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, (_, p)) in entries.iter().enumerate() {
        let Pending::HardLink(t) = p else { continue };
        let mut target = t.clone();
        for _ in 0..32 {
            match index.get(target.as_slice()).map(|&t| (t, &entries[t].1)) {
                Some((t, Pending::File { .. })) => {
                    groups.entry(t).or_default().push(i);
                    break;
                }
                Some((_, Pending::HardLink(next))) => target = next.clone(),
                _ => break,
            }
        }
    }
    drop(index);
    for (file, links) in groups {
        // Entries are sorted by path: the smallest index is the smallest path.
        let first = links
            .iter()
            .copied()
            .chain([file])
            .min()
            .expect("non-empty");
        if first == file {
            continue;
        }
        let owner = entries[first].0.clone();
        let data = std::mem::replace(&mut entries[file].1, Pending::HardLink(owner.clone()));
        entries[first].1 = data;
        for l in links.into_iter().filter(|&l| l != first) {
            entries[l].1 = Pending::HardLink(owner.clone());
        }
    }
}

/// Mode, owner, mtime (with PAX nanoseconds) and PAX xattrs of an entry.
fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Meta> {
    let h = entry.header();
    let mode = h
        .mode()
        .map_err(|e| entry_err(path, format!("mode: {e}")))?
        & 0o7777;
    let uid = h.uid().map_err(|e| entry_err(path, format!("uid: {e}")))?;
    let gid = h.gid().map_err(|e| entry_err(path, format!("gid: {e}")))?;
    let uid = u32::try_from(uid).map_err(|_| entry_err(path, format!("uid {uid} is too large")))?;
    let gid = u32::try_from(gid).map_err(|_| entry_err(path, format!("gid {gid} is too large")))?;
    let mut mtime = h
        .mtime()
        .map_err(|e| entry_err(path, format!("mtime: {e}")))? as i64;
    let mut mtime_nsec = 0u32;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| entry_err(path, format!("PAX header: {e}")))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| entry_err(path, format!("PAX record: {e}")))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                let v = ext
                    .value()
                    .map_err(|_| entry_err(path, "PAX mtime is not text"))?;
                (mtime, mtime_nsec) = parse_pax_time(v)
                    .ok_or_else(|| entry_err(path, format!("bad PAX mtime {v:?}")))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                let value = ext.value_bytes();
                if name.is_empty() || value.len() > MAX_XATTR_VALUE {
                    return Err(entry_err(path, "invalid xattr record"));
                }
                xattrs.push((name.to_vec(), value.to_vec()));
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec,
        xattrs,
    })
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = frac.as_bytes().iter().take(9).map(|b| u32::from(b - b'0'));
    let mut nsec = 0u32;
    for _ in 0..9 {
        nsec = nsec * 10 + digits.next().unwrap_or(0);
    }
    if int.starts_with('-') && nsec > 0 {
        // -1.5 means 1.5 s before the epoch: (-2, 0.5 s).
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

/// Regular-file contents in sorted-path order, read back from the spool.
struct SpoolStream<'a> {
    spool: &'a std::fs::File,
    files: Vec<(u64, u64)>,
    idx: usize,
    pos: u64,
}

impl Read for SpoolStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(off, size)) = self.files.get(self.idx) {
            if self.pos == size {
                self.idx += 1;
                self.pos = 0;
                continue;
            }
            let want = buf.len().min((size - self.pos) as usize);
            let n = self.spool.read_at(&mut buf[..want], off + self.pos)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "spool file is short",
                ));
            }
            self.pos += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

impl Spooled {
    /// Phase 2: chunk the contents and store new chunks through `writer`.
    /// `progress` is called with the bytes chunked so far.
    pub fn chunk(
        self,
        params: ChunkParams,
        writer: &mut ChunkWriter<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Layer> {
        let files: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter_map(|(_, p)| match p {
                Pending::File {
                    spool_offset, size, ..
                } => Some((*spool_offset, *size)),
                _ => None,
            })
            .collect();
        let sizes: Vec<u64> = files.iter().map(|f| f.1).collect();
        let mut extents: Vec<Vec<Extent>> = vec![Vec::new(); files.len()];
        let stream = SpoolStream {
            spool: &self.spool,
            files,
            idx: 0,
            pos: 0,
        };
        // Cursor over files: which file the next chunk byte belongs to.
        let (mut fi, mut fpos) = (0usize, 0u64);
        let mut done = 0u64;
        for chunk in StreamChunker::new(stream, params) {
            let chunk = chunk.map_err(|source| Error::Io {
                path: "layer spool file".into(),
                source,
            })?;
            let id = ChunkId::of(&chunk.data);
            let len = chunk.data.len() as u64;
            let mut coff = 0u64;
            while coff < len {
                while sizes[fi] == fpos {
                    fi += 1;
                    fpos = 0;
                }
                let take = (sizes[fi] - fpos).min(len - coff);
                extents[fi].push(Extent {
                    chunk: id,
                    offset: coff as u32,
                    len: take as u32,
                });
                coff += take;
                fpos += take;
            }
            writer.put(id, chunk.data)?;
            done += len;
            progress(done);
        }
        let mut extents = extents.into_iter();
        let entries = self
            .entries
            .into_iter()
            .map(|(path, p)| match p {
                Pending::Node { node, meta } => LayerEntry::Node { path, node, meta },
                Pending::File {
                    size, digest, meta, ..
                } => LayerEntry::Node {
                    path,
                    node: Node::File {
                        size,
                        extents: extents.next().expect("one extent list per file"),
                        digest,
                    },
                    meta,
                },
                Pending::HardLink(target) => LayerEntry::HardLink { path, target },
            })
            .collect();
        Ok(Layer {
            entries,
            whiteouts: self.whiteouts,
            opaques: self.opaques,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_hashed_while_spooled() {
        use puzzle_testkit::{layer_tar, Entry};
        let big = puzzle_testkit::pseudo_random(3, 200_000);
        let tar = layer_tar(&[
            Entry::file("b", &big),
            Entry::file("a", b"hello"),
            Entry::file("e", b""),
            Entry::hardlink("h", "a"),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let sp = spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
        let digests: Vec<(&[u8], FileDigest)> = sp
            .entries
            .iter()
            .filter_map(|(p, e)| match e {
                Pending::File { digest, .. } => Some((p.as_slice(), *digest)),
                _ => None,
            })
            .collect();
        assert_eq!(
            digests,
            vec![
                (&b"a"[..], FileDigest::of(b"hello")),
                (&b"b"[..], FileDigest::of(&big)),
                (&b"e"[..], FileDigest::of(b"")),
            ]
        );
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.x"), None);
    }
}
