//! Phase 1: parsing a layer's tar into entries, one method per entry kind,
//! with regular-file contents written to the spool (or, once found stored,
//! not kept).

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::rc::Rc;

use puzzle_store::known::KnownFiles;
use puzzle_store::tree::{normalize_path, split_parent, Extent, FileDigest, Meta, Node};
use tar::EntryType;

use super::entry::{copy_hashing, entry_meta, Budgeted, COPY_BUF, HEADER_BUDGET};
use super::links::settle_links;
use super::spool::{SpoolFile, SpoolOut, SPOOL_BUF};
use super::{entry_err, LayerCounts, LinkTo, LiveSpool, Pending, Seen, Source, Spooled};
use crate::error::{Error, Result};

/// Largest file [`spool_live`] holds in memory, not spooled, until it knows
/// whether the store has its contents. Bigger files are spooled.
pub const HOLD_FILE: u64 = 64 << 20;

/// Phase 1: parse the tar stream `tar`, spooling file contents into a temp
/// file in `tmp_dir`. `progress` is called with the bytes of file content
/// read so far.
pub fn spool(tar: &mut dyn Read, tmp_dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<Spooled> {
    spool_to(tar, tmp_dir, progress, None, None)
}

/// [`spool`], publishing the spool to `live` as it grows, for another thread
/// to chunk it meanwhile ([`LiveSpool::chunk`]). `live` is ended when this
/// returns: complete if every entry came in sorted-path order, abandoned at
/// the first one that did not (or on an error).
///
/// Once abandoned, a file whose contents `known` finds stored is not
/// spooled: files of a size `known` may have are held in memory (up to
/// [`HOLD_FILE`] bytes) until their digest is known.
pub fn spool_live(
    tar: &mut dyn Read,
    tmp_dir: &Path,
    progress: &mut dyn FnMut(u64),
    live: &LiveSpool,
    known: Option<&mut KnownFiles<'_>>,
) -> Result<Spooled> {
    // Abandoned on every early return; ending a second time changes nothing.
    struct Abandon<'a>(&'a LiveSpool);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            self.0.end(false);
        }
    }
    let _abandon = Abandon(live);
    let spooled = spool_to(tar, tmp_dir, progress, Some(live), known)?;
    live.end(true);
    Ok(spooled)
}

/// Reads the tar's entries one by one into a [`Parser`]; the tar stream and
/// its header budget stay here, the entries' state in the parser.
fn spool_to(
    tar: &mut dyn Read,
    tmp_dir: &Path,
    progress: &mut dyn FnMut(u64),
    live: Option<&LiveSpool>,
    known: Option<&mut KnownFiles<'_>>,
) -> Result<Spooled> {
    let mut p = Parser::new(tmp_dir, progress, live, known)?;
    let tar_err = |e: io::Error, at: &str| match Error::from_io(e) {
        Ok(inner) => inner,
        Err(e) => Error::Tar {
            at: at.to_string(),
            source: e,
        },
    };

    let budget = Rc::new(Cell::new(HEADER_BUDGET));
    let mut archive = tar::Archive::new(Budgeted {
        inner: tar,
        left: budget.clone(),
        pos: 0,
        skipped: Vec::new(),
    });
    let mut iter = archive
        .entries_with_seek()
        .map_err(|e| tar_err(e, "the start of the layer"))?;
    // The last entry's raw path, shown only in errors.
    let mut last: Option<Vec<u8>> = None;
    let show_last = |last: &Option<Vec<u8>>| match last {
        Some(p) => puzzle_store::error::show_path(p),
        None => "the start of the layer".to_string(),
    };
    loop {
        budget.set(HEADER_BUDGET);
        let Some(entry) = iter.next() else { break };
        let mut entry =
            entry.map_err(|e| tar_err(e, &format!("the entry after {}", show_last(&last))))?;
        // Entry data is streamed, never held: no budget while reading it.
        budget.set(u64::MAX);
        p.counts.entries += 1;
        let raw_path: &[u8] = last.insert(entry.path_bytes().into_owned());
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader) {
            continue;
        }
        let path = normalize_path(raw_path).map_err(|why| entry_err(raw_path, why))?;
        let meta = entry_meta(&mut entry, &path)?;

        if p.whiteout(&path) {
            continue;
        }
        p.watch_order(&path)?;

        let pending = match kind {
            EntryType::Regular | EntryType::Continuous => p.file(&mut entry, &path, meta)?,
            EntryType::Directory => Pending::Node {
                node: Node::Dir,
                meta,
            },
            EntryType::Symlink => symlink(&entry, &path, meta)?,
            EntryType::Link => p.hard_link(&entry, &path)?,
            EntryType::Char | EntryType::Block => device(&entry, kind, meta),
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
        // Skip whatever data the entry has left without holding it.
        copy_hashing(&mut entry, &mut io::sink(), &mut p.buf, None)
            .map_err(|e| tar_err(e, &format!("the entry {}", show_last(&last))))?;
        p.add(path, pending)?;
    }
    drop(archive);
    p.finish()
}

/// A layer's entries while its tar is read, and the spool their file
/// contents go to.
struct Parser<'a, 'k> {
    /// Where the spool file is (shown in its errors).
    tmp_dir: &'a Path,
    progress: &'a mut dyn FnMut(u64),
    known: Option<&'a mut KnownFiles<'k>>,
    out: SpoolOut<'a>,
    /// The live spool while every entry so far came in sorted-path order, and
    /// the last one's path.
    watch: Option<&'a LiveSpool>,
    sorted_up_to: Option<Vec<u8>>,
    buf: Vec<u8>,
    /// A file's bytes while it may turn out stored.
    held: Vec<u8>,
    /// Converted layers `known` had learned when files were last looked up.
    learned: usize,
    /// File bytes read, and written to the spool.
    read: u64,
    spooled: u64,
    /// In tar order, every definition kept (later ones win at the end).
    entries: Vec<(Vec<u8>, Pending)>,
    /// Path -> its definitions so far in `entries`.
    seen: HashMap<Vec<u8>, Seen>,
    whiteouts: Vec<Vec<u8>>,
    opaques: Vec<Vec<u8>>,
    counts: LayerCounts,
}

impl<'a, 'k> Parser<'a, 'k> {
    /// Creates the spool file in `tmp_dir`, published to `live` if given.
    fn new(
        tmp_dir: &'a Path,
        progress: &'a mut dyn FnMut(u64),
        live: Option<&'a LiveSpool>,
        known: Option<&'a mut KnownFiles<'k>>,
    ) -> Result<Parser<'a, 'k>> {
        let spool_err = |source| Error::Io {
            path: tmp_dir.to_path_buf(),
            source,
        };
        let spool_file = tempfile::tempfile_in(tmp_dir).map_err(spool_err)?;
        if let Some(live) = live {
            live.start(spool_file.try_clone().map_err(spool_err)?);
        }
        let out = SpoolOut {
            spool: SpoolFile {
                file: spool_file,
                held: 0,
                meter: live.and_then(LiveSpool::meter),
            },
            buf: Vec::with_capacity(SPOOL_BUF),
            written: 0,
            live,
            stored: Vec::new(),
        };
        Ok(Parser {
            tmp_dir,
            progress,
            known,
            out,
            watch: live,
            sorted_up_to: None,
            buf: vec![0u8; COPY_BUF],
            held: Vec::new(),
            learned: 0,
            read: 0,
            spooled: 0,
            entries: Vec::new(),
            seen: HashMap::new(),
            whiteouts: Vec::new(),
            opaques: Vec::new(),
            counts: LayerCounts::default(),
        })
    }

    /// An error writing the spool file.
    fn spool_err(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.tmp_dir.to_path_buf(),
            source,
        }
    }

    /// Whiteouts become explicit deletions. Whether `path` was a whiteout
    /// (or other aufs bookkeeping), which is no entry of the layer.
    fn whiteout(&mut self, path: &[u8]) -> bool {
        let (parent, name) = split_parent(path);
        let Some(hidden) = name.strip_prefix(b".wh.") else {
            return false;
        };
        if hidden == b".wh..opq" {
            self.opaques.push(parent.to_vec());
        } else if hidden.starts_with(b".wh.") || hidden.is_empty() {
            // Other aufs bookkeeping (.wh..wh.plnk, ...): not content.
        } else {
            let mut p = parent.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(hidden);
            self.whiteouts.push(p);
        }
        true
    }

    /// Abandons the live spool at the first entry out of sorted-path order.
    fn watch_order(&mut self, path: &[u8]) -> Result<()> {
        if let Some(live) = self.watch {
            if self
                .sorted_up_to
                .as_deref()
                .is_some_and(|prev| path <= prev)
            {
                // Everything before this entry is published first, so the
                // live side always cuts the same in-order prefix, whatever
                // the threads' timing: packs stay deterministic.
                self.watch = None;
                self.out.flush().map_err(|e| self.spool_err(e))?;
                live.end(false);
            } else {
                self.sorted_up_to = Some(path.to_vec());
            }
        }
        Ok(())
    }

    /// A regular file: its contents hashed and spooled (or held in memory
    /// until `known` tells whether they are stored).
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        meta: Meta,
    ) -> Result<Pending> {
        let size = entry.size();
        let offset = self.out.pos();
        let mut hasher = blake3::Hasher::new();
        // The live chunker reads every file from the spool.
        let hold = self.watch.is_none()
            && size <= HOLD_FILE
            && self.known.as_ref().is_some_and(|k| k.may_have(size));
        let to: &mut dyn Write = if hold {
            self.held.clear();
            self.held.reserve(size as usize);
            &mut self.held
        } else {
            &mut self.out
        };
        let tmp_dir = self.tmp_dir;
        let n = copy_hashing(entry, to, &mut self.buf, Some(&mut hasher)).map_err(|e| {
            match Error::from_io(e) {
                Ok(inner) => inner,
                // Writing the spool failed, not reading the layer:
                // kept as an I/O error so a full disk is recognised.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ) =>
                {
                    Error::Io {
                        path: tmp_dir.to_path_buf(),
                        source: e,
                    }
                }
                Err(e) => entry_err(path, format!("reading contents: {e}")),
            }
        })?;
        if n != size {
            return Err(entry_err(
                path,
                format!("truncated: the header says {size} bytes, the layer ends after {n}"),
            ));
        }
        let digest = FileDigest::from_bytes(*hasher.finalize().as_bytes());
        self.read += n;
        (self.progress)(self.read);
        // Looked up also when spooled already: a sampled file makes
        // its layer's files known for the rest of this one, and a
        // spooled file found stored gives its space back.
        let stored = match self.known.as_deref_mut() {
            Some(k) => k.find(size, &digest)?.map(<[Extent]>::to_vec),
            None => None,
        };
        let source = match stored {
            Some(extents) if hold => Source::Stored { at: None, extents },
            stored => {
                if hold {
                    self.out
                        .write_all(&self.held)
                        .map_err(|e| self.spool_err(e))?;
                }
                self.spooled += n;
                match stored {
                    Some(extents) => {
                        self.out.release(offset, n).map_err(|e| self.spool_err(e))?;
                        Source::Stored {
                            at: Some(offset),
                            extents,
                        }
                    }
                    None => Source::Spool(offset),
                }
            }
        };
        Ok(Pending::File {
            source,
            size,
            digest,
            meta,
        })
    }

    /// A hard link: it names what its target path names at this point of
    /// the tar.
    fn hard_link<R: Read>(&self, entry: &tar::Entry<'_, R>, path: &[u8]) -> Result<Pending> {
        let target = entry
            .link_name_bytes()
            .ok_or_else(|| entry_err(path, "hard link without a target"))?;
        let target = normalize_path(&target).map_err(|why| {
            entry_err(
                path,
                format!(
                    "hard link target {}: {why}",
                    String::from_utf8_lossy(&target).escape_debug()
                ),
            )
        })?;
        if target.is_empty() {
            return Err(entry_err(path, "hard link to the root"));
        }
        // The target is what its path names at this point of the tar.
        let named = self
            .seen
            .get(&target)
            .map(|d| (d.latest, &self.entries[d.latest].1));
        Ok(match named {
            None => Pending::Link(LinkTo::Lower(target)),
            Some((
                _,
                Pending::Node {
                    node: Node::Dir, ..
                },
            )) => {
                return Err(entry_err(
                    path,
                    format!(
                        "hard link target {} is a directory",
                        puzzle_store::error::show_path(&target)
                    ),
                ))
            }
            Some((_, Pending::Link(LinkTo::Entry(j)))) => Pending::Link(LinkTo::Entry(*j)),
            Some((_, Pending::Link(LinkTo::Lower(t)))) => Pending::Link(LinkTo::Lower(t.clone())),
            Some((_, Pending::Link(LinkTo::Path(_)))) => {
                unreachable!("paths are assigned after parsing")
            }
            Some((i, _)) => Pending::Link(LinkTo::Entry(i)),
        })
    }

    /// Records the entry parsed at `path`, and gives back the spool space of
    /// files a converted layer `known` learned just now holds.
    fn add(&mut self, path: Vec<u8>, pending: Pending) -> Result<()> {
        let nondir = !matches!(
            pending,
            Pending::Node {
                node: Node::Dir,
                ..
            }
        );
        let at = self.entries.len();
        match self.seen.get_mut(&path) {
            Some(d) => {
                d.latest = at;
                if nondir {
                    d.nondir = Some(at);
                }
            }
            None => {
                let nondir = nondir.then_some(at);
                self.seen.insert(path.clone(), Seen { latest: at, nondir });
            }
        }
        self.entries.push((path, pending));
        if let Some(k) = self.known.as_deref() {
            // A layer learned just now may hold files spooled before.
            if k.learned() > self.learned {
                self.learned = k.learned();
                for (off, len) in found_stored(&mut self.entries, k) {
                    self.out.release(off, len).map_err(|e| self.spool_err(e))?;
                }
            }
        }
        Ok(())
    }

    /// The parsed layer, once the tar is read.
    fn finish(self) -> Result<Spooled> {
        let Parser {
            tmp_dir,
            mut out,
            spooled,
            entries,
            seen,
            mut whiteouts,
            mut opaques,
            mut counts,
            ..
        } = self;
        let spool_err = |source| Error::Io {
            path: tmp_dir.to_path_buf(),
            source,
        };
        out.flush().map_err(spool_err)?;
        out.release_read().map_err(spool_err)?;
        let SpoolOut {
            spool,
            written: spool_len,
            stored: unreleased,
            ..
        } = out;

        counts.spooled_bytes = spooled;
        let entries = settle_links(entries, &seen);
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
            spool_len,
            unreleased,
            entries,
            whiteouts,
            opaques,
            counts,
        })
    }
}

/// A symbolic link.
fn symlink<R: Read>(entry: &tar::Entry<'_, R>, path: &[u8], meta: Meta) -> Result<Pending> {
    let target = entry
        .link_name_bytes()
        .ok_or_else(|| entry_err(path, "symlink without a target"))?;
    if target.is_empty() || target.contains(&0) {
        return Err(entry_err(path, "empty or invalid symlink target"));
    }
    Ok(Pending::Node {
        node: Node::Symlink(target.into_owned()),
        meta,
    })
}

/// A character or block device.
fn device<R: Read>(entry: &tar::Entry<'_, R>, kind: EntryType, meta: Meta) -> Pending {
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

/// Marks the spooled files of `entries` that `known` holds as stored;
/// returns their spool ranges (offset, length).
fn found_stored(entries: &mut [(Vec<u8>, Pending)], known: &KnownFiles<'_>) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    for (_, p) in entries {
        if let Pending::File {
            source: source @ Source::Spool(_),
            size,
            digest,
            ..
        } = p
        {
            if let (Source::Spool(off), Some(extents)) = (&source, known.lookup(*size, digest)) {
                found.push((*off, *size));
                *source = Source::Stored {
                    at: Some(*off),
                    extents: extents.to_vec(),
                };
            }
        }
    }
    found
}
