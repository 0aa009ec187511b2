//! Workload traces and prefetch lists (docs/FORMAT.md, "Prefetch list").
//!
//! - [`TraceLog`]: what a mount records while it serves reads: byte ranges
//!   of inodes in first-access order, each byte once, a read continuing the
//!   previous range of the same file merged into it.
//! - [`TraceEntry`], [`encode`], [`parse`]: the text form shared by
//!   `mount --trace` files and the prefetch blob of an image, one line
//!   `PATH OFFSET LENGTH` per range, paths escaped so any byte string
//!   round-trips.
//! - [`normalize`]: a trace checked against an image (paths the image lacks
//!   dropped, ranges clipped to file sizes): what `build|push --prefetch`
//!   stores.
//! - [`frames`]: the ordered, de-duplicated frames a prefetch list needs,
//!   which a lazy mount fetches first.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::digest::BlobDigest;
use crate::error::{Error, Result};
use crate::meta::{InodeRec, Kind, MetaBlob};

/// The first line of a trace file and of a prefetch blob.
pub const HEADER: &str = "puzzle-trace v1";

/// Largest trace or prefetch blob read (about a million ranges).
pub const MAX_TRACE: u64 = 64 << 20;

/// One range of one file: `len` bytes from `offset` of the file at `path`
/// (absolute in the image, `/`-separated, no `.` or `..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    pub path: Vec<u8>,
    pub offset: u64,
    pub len: u64,
}

/// Ranges read from a mounted image, by inode, in first-access order.
#[derive(Debug, Default)]
pub struct TraceLog {
    order: Vec<(u32, u64, u64)>,
    /// Per inode, the bytes recorded so far as merged `start -> end` ranges.
    seen: HashMap<u32, BTreeMap<u64, u64>>,
}

impl TraceLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes a read of `len` bytes at `offset` of inode `ino`: the bytes not
    /// recorded before are appended, joined to the last range when they
    /// continue it.
    pub fn record(&mut self, ino: u32, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        if end <= offset {
            return;
        }
        let seen = self.seen.entry(ino).or_default();
        let mut fresh = Vec::new();
        let mut pos = offset;
        if let Some((_, &e)) = seen.range(..=pos).next_back() {
            pos = pos.max(e);
        }
        if pos >= end {
            return;
        }
        for (&s, &e) in seen.range(pos..end) {
            if s > pos {
                fresh.push((pos, s));
            }
            pos = pos.max(e);
        }
        if pos < end {
            fresh.push((pos, end));
        }
        // Merge [offset, end) into the seen ranges.
        let (mut s, mut e) = (offset, end);
        if let Some((&ps, &pe)) = seen.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        let joined: Vec<u64> = seen.range(s..=e).map(|(&k, _)| k).collect();
        for k in joined {
            if let Some(v) = seen.remove(&k) {
                e = e.max(v);
            }
        }
        seen.insert(s, e);
        for (a, b) in fresh {
            match self.order.last_mut() {
                Some((i, o, l)) if *i == ino && *o + *l == a => *l += b - a,
                _ => self.order.push((ino, a, b - a)),
            }
        }
    }

    /// The ranges as `(inode, offset, len)`, in first-access order.
    pub fn ranges(&self) -> &[(u32, u64, u64)] {
        &self.order
    }

    /// The ranges with a path for each inode (for an inode with several
    /// hard links, the first in name order), as written to a trace file.
    pub fn entries<B: AsRef<[u8]>>(&self, meta: &MetaBlob<B>) -> Result<Vec<TraceEntry>> {
        let wanted: HashSet<u32> = self.order.iter().map(|r| r.0).collect();
        let paths = paths_of(meta, &wanted)?;
        Ok(self
            .order
            .iter()
            .filter_map(|&(ino, offset, len)| {
                paths.get(&ino).map(|p| TraceEntry {
                    path: p.clone(),
                    offset,
                    len,
                })
            })
            .collect())
    }
}

/// A path for each inode of `wanted`, walking the tree depth first in name
/// order and stopping once all are found.
fn paths_of<B: AsRef<[u8]>>(
    meta: &MetaBlob<B>,
    wanted: &HashSet<u32>,
) -> Result<HashMap<u32, Vec<u8>>> {
    let mut out = HashMap::new();
    let mut visited = HashSet::new();
    let mut stack: Vec<(InodeRec, Vec<u8>)> = vec![(meta.root()?, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        if out.len() == wanted.len() {
            break;
        }
        if !visited.insert(dir.ino) {
            continue;
        }
        let mut dirs = Vec::new();
        for i in 0..dir.count() {
            let (name, ino) = meta.dirent(&dir, i)?;
            let mut p = path.clone();
            p.push(b'/');
            p.extend_from_slice(name);
            let rec = meta.inode(ino)?;
            if rec.kind == Kind::Dir {
                dirs.push((rec, p));
            } else if wanted.contains(&ino) {
                out.entry(ino).or_insert(p);
            }
        }
        // Reversed so that directories come off the stack in name order.
        stack.extend(dirs.into_iter().rev());
    }
    Ok(out)
}

fn escape(path: &[u8], out: &mut String) {
    for &b in path {
        if b <= b' ' || b >= 0x7f || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
}

/// The text form: [`HEADER`], then one line `PATH OFFSET LENGTH` per entry.
pub fn encode(entries: &[TraceEntry]) -> Vec<u8> {
    let mut s = String::with_capacity(16 + entries.len() * 48);
    s.push_str(HEADER);
    s.push('\n');
    for e in entries {
        escape(&e.path, &mut s);
        s.push_str(&format!(" {} {}\n", e.offset, e.len));
    }
    s.into_bytes()
}

fn bad(line: usize, why: &str) -> Error {
    Error::Corrupt {
        what: "prefetch list".into(),
        why: format!("line {line}: {why}"),
    }
}

fn unescape(field: &str, line: usize) -> Result<Vec<u8>> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or_else(|| bad(line, "% not followed by two hex digits"))?;
            out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Reads the text form. Lines starting with `#` and empty lines are
/// skipped; anything else that is not `PATH OFFSET LENGTH` with an absolute
/// path, a non-zero length and an end within 2^64 is an error naming the line.
pub fn parse(bytes: &[u8]) -> Result<Vec<TraceEntry>> {
    if bytes.len() as u64 > MAX_TRACE {
        return Err(bad(0, &format!("larger than {MAX_TRACE} bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        bad(line, "not ASCII text (paths are %-escaped)")
    })?;
    let mut lines = text.split('\n').enumerate();
    match lines.next() {
        Some((_, h)) if h == HEADER => {}
        _ => return Err(bad(1, &format!("the first line is not {HEADER:?}"))),
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [path, offset, len] = f[..] else {
            return Err(bad(n, "not PATH OFFSET LENGTH"));
        };
        let path = unescape(path, n)?;
        if path.first() != Some(&b'/') {
            return Err(bad(n, "the path does not start with /"));
        }
        let num = |s: &str| -> Result<u64> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad(n, &format!("{s:?} is not a number")));
            }
            s.parse().map_err(|_| bad(n, &format!("{s} is too large")))
        };
        let (offset, len) = (num(offset)?, num(len)?);
        if len == 0 || offset.checked_add(len).is_none() {
            return Err(bad(n, "the range is empty or ends past 2^64"));
        }
        out.push(TraceEntry { path, offset, len });
    }
    Ok(out)
}

/// The regular file at `path` in the image, if there is one (symlinks are
/// not followed: traces name the files that were read).
pub fn find_file<B: AsRef<[u8]>>(meta: &MetaBlob<B>, path: &[u8]) -> Result<Option<InodeRec>> {
    let mut cur = meta.root()?;
    for name in path.split(|&b| b == b'/').filter(|n| !n.is_empty()) {
        if cur.kind != Kind::Dir || name == b"." || name == b".." {
            return Ok(None);
        }
        match meta.lookup(&cur, name)? {
            Some(ino) => cur = meta.inode(ino)?,
            None => return Ok(None),
        }
    }
    Ok((cur.kind == Kind::File).then_some(cur))
}

/// A prefetch list checked against an image.
#[derive(Debug)]
pub struct Normalized {
    /// The list in text form, only with ranges of files the image has,
    /// clipped to their sizes: the prefetch blob's bytes.
    pub bytes: Vec<u8>,
    /// Ranges kept.
    pub entries: usize,
    /// Distinct paths the image lacks (or has as something else than a
    /// regular file), in first-seen order, dropped.
    pub missing: Vec<Vec<u8>>,
}

/// Checks the trace `text` against the image `meta`; see [`Normalized`].
pub fn normalize<B: AsRef<[u8]>>(meta: &MetaBlob<B>, text: &[u8]) -> Result<Normalized> {
    let mut kept = Vec::new();
    let mut missing = Vec::new();
    let mut seen_missing = HashSet::new();
    for e in parse(text)? {
        let Some(file) = find_file(meta, &e.path)? else {
            if seen_missing.insert(e.path.clone()) {
                missing.push(e.path);
            }
            continue;
        };
        let end = (e.offset + e.len).min(file.size);
        if end > e.offset {
            kept.push(TraceEntry {
                len: end - e.offset,
                ..e
            });
        }
    }
    Ok(Normalized {
        bytes: encode(&kept),
        entries: kept.len(),
        missing,
    })
}

/// Calls `f` with the index of each chunk holding bytes `offset..offset +
/// len` of `file` (past its end: none), in file order; holes have none.
pub fn chunks_read<B: AsRef<[u8]>>(
    meta: &MetaBlob<B>,
    file: &InodeRec,
    offset: u64,
    len: u64,
    mut f: impl FnMut(u32) -> Result<()>,
) -> Result<()> {
    let end = offset.saturating_add(len).min(file.size);
    let Some(mut i) = meta.find_extent(file, offset)? else {
        return Ok(());
    };
    while i < file.count() {
        let x = meta.extent(file, i)?;
        if x.file_offset >= end {
            break;
        }
        i += 1;
        if x.len > 0 {
            f(x.chunk)?;
        }
    }
    Ok(())
}

/// One zstd frame of a pack: what a lazy mount fetches (`clen` bytes at
/// `offset` of `pack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRef {
    pub pack: BlobDigest,
    pub offset: u64,
    pub clen: u32,
}

/// The frames holding the bytes a prefetch list names, in list order, each
/// once. Paths the image lacks and bytes past a file's end are skipped (a
/// list is stored normalized, so there are none in a stored one).
pub fn frames<B: AsRef<[u8]>>(meta: &MetaBlob<B>, list: &[TraceEntry]) -> Result<Vec<FrameRef>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut files: HashMap<&[u8], Option<InodeRec>> = HashMap::new();
    for e in list {
        let file = match files.get(&e.path[..]) {
            Some(f) => *f,
            None => {
                let f = find_file(meta, &e.path)?;
                files.insert(&e.path, f);
                f
            }
        };
        let Some(file) = file else { continue };
        chunks_read(meta, &file, e.offset, e.len, |chunk| {
            let loc = meta.chunk(chunk)?.loc;
            let f = FrameRef {
                pack: loc.pack,
                offset: loc.offset,
                clen: loc.clen,
            };
            if seen.insert(f) {
                out.push(f);
            }
            Ok(())
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
