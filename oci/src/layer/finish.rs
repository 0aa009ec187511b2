//! Finishing a parsed layer: its file contents read back in chunking order
//! (from the spool, or from the store for files found stored), cut into
//! chunks, and the layer's entries given their extents.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use puzzle_chunker::{ChunkId, ChunkParams, StreamChunker};
use puzzle_store::known::StoredChunks;
use puzzle_store::tree::{Extent, FileDigest, Layer, LayerEntry, Node};
use puzzle_store::writer::ChunkWriter;

use super::{LinkTo, Pending, Source, Spooled};
use crate::error::{Error, Result};

/// Cuts `stream` into chunks, handing each to `store`; the chunks in stream
/// order, as (id, length).
pub(super) fn chunk_stream(
    stream: &mut dyn Read,
    params: ChunkParams,
    progress: &mut dyn FnMut(u64),
    store: &mut dyn FnMut(ChunkId, Vec<u8>) -> Result<()>,
) -> Result<Vec<(ChunkId, u32)>> {
    let mut chunks = Vec::new();
    let mut done = 0u64;
    for chunk in StreamChunker::new(stream, params) {
        let chunk = chunk.map_err(|e| match Error::from_io(e) {
            Ok(inner) => inner,
            Err(source) => Error::Io {
                path: "layer spool file".into(),
                source,
            },
        })?;
        let id = ChunkId::of(&chunk.data);
        let len = chunk.data.len();
        store(id, chunk.data)?;
        chunks.push((id, len as u32));
        done += len as u64;
        progress(done);
    }
    Ok(chunks)
}

/// Regular-file contents in sorted-path order, read back from the spool or,
/// for files not spooled, from the store.
struct SpoolStream<'a, 'b> {
    spool: &'a std::fs::File,
    /// (where, size, content digest) of each file.
    files: Vec<(&'a Source, u64, &'a FileDigest)>,
    stored: &'a mut StoredChunks<'b>,
    idx: usize,
    /// Bytes of the current file read.
    pos: u64,
    /// In a stored file: the extent being read, its bytes read, and the
    /// file's bytes so far, hashed (checked against its digest at its end:
    /// the extents come from another layer's record).
    ext: usize,
    ext_pos: u32,
    hasher: blake3::Hasher,
}

impl Read for SpoolStream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(source, size, digest)) = self.files.get(self.idx) {
            if self.pos == size {
                if let Source::Stored { .. } = source {
                    let got = std::mem::replace(&mut self.hasher, blake3::Hasher::new());
                    if got.finalize().as_bytes() != digest.as_bytes() {
                        return Err(stored_err("a file's extents do not give its contents"));
                    }
                }
                self.idx += 1;
                self.pos = 0;
                (self.ext, self.ext_pos) = (0, 0);
                continue;
            }
            let want = buf.len().min((size - self.pos) as usize);
            let n = match source {
                Source::Spool(off) => {
                    let n = self.spool.read_at(&mut buf[..want], off + self.pos)?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "spool file is short",
                        ));
                    }
                    n
                }
                Source::Stored { extents, .. } => {
                    let Some(e) = extents.get(self.ext) else {
                        return Err(stored_err("a file's extents are short"));
                    };
                    if self.ext_pos == e.len {
                        self.ext += 1;
                        self.ext_pos = 0;
                        continue;
                    }
                    let bytes = self
                        .stored
                        .chunk(&e.chunk)
                        .map_err(|e| io::Error::from(Error::Store(e)))?;
                    let n = want.min((e.len - self.ext_pos) as usize);
                    let start = e.offset as usize + self.ext_pos as usize;
                    let Some(data) = bytes.get(start..start + n) else {
                        return Err(stored_err("an extent runs past its chunk"));
                    };
                    buf[..n].copy_from_slice(data);
                    self.hasher.update(data);
                    self.ext_pos += n as u32;
                    n
                }
            };
            self.pos += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// An error reading back a file that was not spooled: the record its
/// extents came from does not fit the file.
fn stored_err(why: &str) -> io::Error {
    Error::Store(puzzle_store::Error::Corrupt {
        what: "a converted layer's record".into(),
        why: why.into(),
    })
    .into()
}

impl Spooled {
    /// Phase 2: chunk the contents and store new chunks through `writer`;
    /// files that were not spooled are read from the store through `stored`.
    /// `progress` is called with the bytes chunked so far.
    pub fn chunk(
        mut self,
        params: ChunkParams,
        writer: &mut ChunkWriter<'_>,
        stored: &mut StoredChunks<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Layer> {
        // The live chunking side is done with the spool by now.
        for (off, len) in std::mem::take(&mut self.unreleased) {
            self.spool.punch(off, len);
        }
        let files: Vec<(&Source, u64, &FileDigest)> = self
            .entries
            .iter()
            .filter_map(|(_, p)| match p {
                Pending::File {
                    source,
                    size,
                    digest,
                    ..
                } => Some((source, *size, digest)),
                _ => None,
            })
            .collect();
        let mut stream = SpoolStream {
            spool: &self.spool.file,
            files,
            stored,
            idx: 0,
            pos: 0,
            ext: 0,
            ext_pos: 0,
            hasher: blake3::Hasher::new(),
        };
        let chunks = chunk_stream(&mut stream, params, progress, &mut |id, data| {
            writer.put(id, data)?;
            Ok(())
        })?;
        Ok(self.with_chunks(&chunks))
    }

    /// Whether `chunks`, cut from the spool file as written
    /// ([`LiveSpool::chunk`](super::LiveSpool::chunk)), are this layer's
    /// chunk stream: they are when the files in chunking order lie end to end
    /// from the spool's start, filling it (no superseded file in between).
    pub fn is_stream(&self, chunks: &[(ChunkId, u32)]) -> bool {
        let mut at = 0u64;
        for (_, p) in &self.entries {
            if let Pending::File { source, size, .. } = p {
                let spooled_at = match source {
                    Source::Spool(off) | Source::Stored { at: Some(off), .. } => Some(*off),
                    Source::Stored { at: None, .. } => None,
                };
                if spooled_at != Some(at) {
                    return false;
                }
                at += size;
            }
        }
        at == self.spool_len && chunks.iter().map(|c| u64::from(c.1)).sum::<u64>() == at
    }

    /// Finishes the layer with `chunks` from
    /// [`LiveSpool::chunk`](super::LiveSpool::chunk); errors
    /// unless [`Spooled::is_stream`] holds.
    pub fn with_stream(self, chunks: &[(ChunkId, u32)]) -> Result<Layer> {
        if !self.is_stream(chunks) {
            return Err(Error::Invalid(
                "the chunks were not cut from this layer's chunk stream".into(),
            ));
        }
        Ok(self.with_chunks(chunks))
    }

    /// The layer made of `chunks`, the chunk stream of its files in chunking
    /// order, as (id, length).
    fn with_chunks(self, chunks: &[(ChunkId, u32)]) -> Layer {
        let sizes: Vec<u64> = self.files().map(|f| f.0).collect();
        let mut extents: Vec<Vec<Extent>> = vec![Vec::new(); sizes.len()];
        // Cursor over files: which file the next chunk byte belongs to.
        let (mut fi, mut fpos) = (0usize, 0u64);
        for &(id, len) in chunks {
            let len = u64::from(len);
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
        }
        self.with_extents(extents)
    }

    /// The stream key: identifies the chunk stream this layer's contents make
    /// with `params` (BLAKE3 over the chunk parameters and, in chunking order,
    /// every file's size and content digest). Two layers with the same key cut
    /// into the same chunks, so a layer whose key was converted before can
    /// take its extents from that layer without reading its contents again.
    pub fn stream_key(&self, params: ChunkParams) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(b"puzzle stream key v1\0");
        for v in [params.min(), params.avg(), params.max()] {
            h.update(&v.to_le_bytes());
        }
        for (_, p) in &self.entries {
            if let Pending::File { size, digest, .. } = p {
                h.update(&size.to_le_bytes());
                h.update(digest.as_bytes());
            }
        }
        *h.finalize().as_bytes()
    }

    /// Regular files in chunking order: (size, content digest).
    pub fn files(&self) -> impl Iterator<Item = (u64, FileDigest)> + '_ {
        self.entries.iter().filter_map(|(_, p)| match p {
            Pending::File { size, digest, .. } => Some((*size, *digest)),
            _ => None,
        })
    }

    /// Finishes the layer with `extents` (one list per file, in chunking
    /// order) instead of chunking: for a layer whose [`Spooled::stream_key`]
    /// was converted before. Errors if the lists do not fit the files.
    pub fn reuse(self, extents: Vec<Vec<Extent>>) -> Result<Layer> {
        let fits = extents.len() == self.files().count()
            && self
                .files()
                .zip(&extents)
                .all(|((size, _), ex)| ex.iter().map(|e| u64::from(e.len)).sum::<u64>() == size);
        if !fits {
            return Err(Error::Invalid(
                "reused extents do not match the layer's files".into(),
            ));
        }
        Ok(self.with_extents(extents))
    }

    /// The layer, with one extent list per file in chunking order.
    fn with_extents(self, extents: Vec<Vec<Extent>>) -> Layer {
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
                Pending::Link(LinkTo::Path(target)) => LayerEntry::HardLink { path, target },
                Pending::Link(LinkTo::Lower(target)) => LayerEntry::LowerLink { path, target },
                Pending::Link(LinkTo::Entry(_)) => unreachable!("links are settled in spool"),
            })
            .collect();
        Layer {
            entries,
            whiteouts: self.whiteouts,
            opaques: self.opaques,
        }
    }
}
