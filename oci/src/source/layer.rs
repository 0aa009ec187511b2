//! Decompressing, verifying reader over one layer blob.

use std::{
    fmt,
    io::{self, BufRead, Read},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crossbeam_channel::{bounded, Receiver, Sender};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

use super::digest::{Sha256Digest, VerifyingReader};

/// Buffer size for reading layer blobs.
const BUF_SIZE: usize = 256 * 1024;

/// How a layer blob is compressed, as detected from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detects the compression from a blob's first bytes: gzip `1f 8b`, zstd
    /// `28 b5 2f fd`, anything else is taken as a plain tar.
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// Byte counts of a fully read layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Size of the blob as stored.
    pub compressed_bytes: u64,
    /// Size of the tar stream after decompression.
    pub uncompressed_bytes: u64,
}

type Raw = Fetched;

enum Decoder {
    // Boxed: the readers are a few hundred bytes each and built once per layer.
    Plain(Box<Raw>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<Raw>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, Raw>>),
}

impl Decoder {
    fn raw(&self) -> &Fetched {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.get_ref(),
            Decoder::Zstd(d) => d.get_ref(),
        }
    }

    fn raw_mut(&mut self) -> &mut Fetched {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
        }
    }
}

/// Blocks of the blob in flight between the fetching and decoding threads.
const FETCH_BLOCKS: usize = 4;

/// What the fetching thread sends.
enum Fetch {
    Data(Vec<u8>),
    /// The blob was read to its end; its size and digest are right.
    End,
    Failed(io::Error),
}

enum FetchState {
    Reading,
    End,
    Failed,
}

/// The blob as the fetching thread reads and checks it ([`fetch_loop`]):
/// hashing the blob off the decoding thread, which was the slowest stage of
/// reading when every chunk was already stored.
struct Fetched {
    blocks: Receiver<Fetch>,
    /// Read blocks go back to the fetching thread.
    empty: Sender<Vec<u8>>,
    block: Vec<u8>,
    pos: usize,
    /// Bytes consumed.
    count: u64,
    state: FetchState,
}

impl Fetched {
    fn count(&self) -> u64 {
        self.count
    }

    /// Reads to the end of the blob, which the fetching thread has checked
    /// once it sends the end.
    fn drain(&mut self) -> io::Result<()> {
        loop {
            let n = self.fill_buf()?.len();
            if n == 0 {
                return Ok(());
            }
            self.consume(n);
        }
    }
}

impl BufRead for Fetched {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.block.len() {
            match self.state {
                FetchState::Reading => {}
                FetchState::End => return Ok(&[]),
                FetchState::Failed => return Err(io::Error::other("reading the blob failed")),
            }
            match self.blocks.recv() {
                Ok(Fetch::Data(block)) => {
                    let old = std::mem::replace(&mut self.block, block);
                    let _ = self.empty.try_send(old);
                    self.pos = 0;
                }
                Ok(Fetch::End) => self.state = FetchState::End,
                Ok(Fetch::Failed(e)) => {
                    self.state = FetchState::Failed;
                    return Err(e);
                }
                Err(_) => {
                    self.state = FetchState::Failed;
                    return Err(io::Error::other("the blob fetching thread stopped"));
                }
            }
        }
        Ok(&self.block[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        self.count += n as u64;
    }
}

impl Read for Fetched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The fetching thread: reads the blob in blocks through `raw`, which checks
/// its size and digest at the end. Stops quietly when the decoder is gone.
fn fetch_loop(mut raw: VerifyingReader, to: &Sender<Fetch>, empty: &Receiver<Vec<u8>>) {
    loop {
        let mut block = empty.try_recv().unwrap_or_default();
        block.resize(BUF_SIZE, 0);
        let msg = match raw.read(&mut block) {
            Ok(0) => Fetch::End,
            Ok(n) => {
                block.truncate(n);
                Fetch::Data(block)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Fetch::Failed(e),
        };
        let last = !matches!(msg, Fetch::Data(_));
        if to.send(msg).is_err() || last {
            return;
        }
    }
}

/// Size of the blocks of decompressed bytes passed from the decoding thread.
const BLOCK_SIZE: usize = 512 * 1024;

/// Blocks in flight between the decoding thread and the reader.
const BLOCKS: usize = 4;

/// What the decoding thread sends.
enum Msg {
    /// A block and how many of its bytes are filled.
    Data(Vec<u8>, usize),
    /// The stream ended and the blob was read to its end and checked; the
    /// blob's size.
    End(u64),
    /// End as the hashing thread passes it on: the blob's size and the
    /// SHA-256 of the decompressed stream.
    Hashed(u64, Sha256Digest),
    Failed(Error),
}

/// The uncompressed tar stream of one layer.
///
/// Hashes the blob as stored (checked against the layer's digest and size) and
/// the decompressed bytes (checked against its diff_id). A mismatch, a corrupt
/// or truncated stream, or an I/O error is returned by `read` as an
/// `io::Error` wrapping this crate's [`Error`] (recover it with
/// [`Error::from_io`]); [`LayerReader::finish`] returns it again.
///
/// Reading the blob, checking its digest and decompressing run on a thread of
/// their own, a few blocks ahead of the reader, so a build decodes the next
/// bytes while it parses the last ones. The decompressed blocks pass through
/// a second thread that hashes them for the diff_id: SHA-256 was a third of
/// the reading side's time, which (parsing, hashing files, spooling) was
/// slower than decoding when every chunk was already stored.
///
/// Tar parsers stop at the end-of-archive marker, before any padding or the
/// compression footer, so always call [`LayerReader::finish`] once the parser is done:
/// the checks only run at the end of the stream.
pub struct LayerReader {
    what: String,
    compression: Compression,
    diff_id: Sha256Digest,
    uncompressed: u64,
    /// Compressed bytes consumed so far by the decoding thread.
    compressed: Arc<AtomicU64>,
    blocks: Option<Receiver<Msg>>,
    recycle: Option<Sender<Vec<u8>>>,
    /// The decoding and hashing threads.
    threads: Vec<JoinHandle<()>>,
    /// The block being read and the position in it.
    block: Vec<u8>,
    block_len: usize,
    pos: usize,
    state: State,
}

enum State {
    Reading,
    Done(u64),
    Failed(Error),
}

impl LayerReader {
    /// Wraps a verifying reader over the blob. `what` names the layer in errors.
    pub(crate) fn new(raw: VerifyingReader, diff_id: Sha256Digest, what: String) -> Result<Self> {
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| Error::io("a layer reading thread", e))
        };
        let mut threads = Vec::with_capacity(3);
        let (fetch_tx, fetch_rx) = bounded(FETCH_BLOCKS);
        let (empty_tx, empty_rx) = bounded(FETCH_BLOCKS + 1);
        threads.push(spawn(
            "layer-fetch",
            Box::new(move || fetch_loop(raw, &fetch_tx, &empty_rx)),
        )?);
        let mut raw = Fetched {
            blocks: fetch_rx,
            empty: empty_tx,
            block: Vec::new(),
            pos: 0,
            count: 0,
            state: FetchState::Reading,
        };
        let head = match raw.fill_buf() {
            Ok(head) => head,
            Err(e) => return Err(classify(e, &what)),
        };
        let compression = Compression::detect(head);
        let decoder = match compression {
            Compression::None => Decoder::Plain(Box::new(raw)),
            Compression::Gzip => Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(raw))),
            Compression::Zstd => {
                let d = zstd::stream::read::Decoder::with_buffer(raw).map_err(|source| {
                    Error::Decompress {
                        what: what.clone(),
                        source,
                    }
                })?;
                Decoder::Zstd(Box::new(d))
            }
        };
        let (block_tx, block_rx) = bounded(BLOCKS);
        let (hashed_tx, hashed_rx) = bounded(BLOCKS);
        let (recycle_tx, recycle_rx) = bounded(BLOCKS + 1);
        let compressed = Arc::new(AtomicU64::new(0));
        {
            let what = what.clone();
            let compressed = compressed.clone();
            threads.push(spawn(
                "layer-decoder",
                Box::new(move || decode_loop(decoder, &what, &block_tx, &recycle_rx, &compressed)),
            )?);
        }
        threads.push(spawn(
            "layer-hasher",
            Box::new(move || hash_loop(&block_rx, &hashed_tx)),
        )?);
        Ok(LayerReader {
            what,
            compression,
            diff_id,
            uncompressed: 0,
            compressed,
            blocks: Some(hashed_rx),
            recycle: Some(recycle_tx),
            threads,
            block: Vec::new(),
            block_len: 0,
            pos: 0,
            state: State::Reading,
        })
    }

    /// The compression detected from the blob's magic bytes.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Bytes of the stored (compressed) blob consumed so far, for progress.
    pub fn compressed_read(&self) -> u64 {
        self.compressed.load(Ordering::Relaxed)
    }

    /// Bytes of the uncompressed tar returned so far.
    pub fn uncompressed_read(&self) -> u64 {
        self.uncompressed
    }

    /// Reads the rest of the stream, then checks the blob's size and both
    /// digests. Call it after the tar parser is done.
    pub fn finish(mut self) -> Result<LayerStats> {
        let mut scratch = vec![0u8; BUF_SIZE];
        loop {
            match self.read(&mut scratch) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match std::mem::replace(&mut self.state, State::Done(0)) {
                        State::Failed(err) => err,
                        _ => classify(e, &self.what),
                    })
                }
            }
        }
        let State::Done(compressed_bytes) = self.state else {
            unreachable!("read returned 0 only when done")
        };
        Ok(LayerStats {
            compressed_bytes,
            uncompressed_bytes: self.uncompressed,
        })
    }

    fn fail(&mut self, err: Error) -> io::Error {
        let copy = err.duplicate();
        self.state = State::Failed(err);
        copy.into()
    }

    /// End of the decompressed stream (the decoding thread has read the blob
    /// to its end and checked it): check the diff_id.
    fn complete(&mut self, compressed_bytes: u64, actual: Sha256Digest) -> io::Result<usize> {
        if actual != self.diff_id {
            let err = Error::DigestMismatch {
                what: format!("uncompressed {}", self.what),
                expected: self.diff_id.to_string(),
                actual: actual.to_string(),
            };
            return Err(self.fail(err));
        }
        self.state = State::Done(compressed_bytes);
        Ok(0)
    }

    /// Moves to the next block from the decoding thread. Returns false at the
    /// end of the stream (the state then says how it ended).
    fn next_block(&mut self) -> io::Result<bool> {
        let msg = self.blocks.as_ref().and_then(|rx| rx.recv().ok());
        match msg {
            Some(Msg::Data(block, len)) => {
                let old = std::mem::replace(&mut self.block, block);
                if !old.is_empty() {
                    if let Some(tx) = &self.recycle {
                        let _ = tx.try_send(old);
                    }
                }
                self.block_len = len;
                self.pos = 0;
                Ok(true)
            }
            Some(Msg::Hashed(compressed_bytes, diff_id)) => {
                self.complete(compressed_bytes, diff_id).map(|_| false)
            }
            Some(Msg::End(_)) => unreachable!("the hashing thread turns End into Hashed"),
            Some(Msg::Failed(err)) => Err(self.fail(err)),
            None => {
                let err = Error::Invalid(format!("{}: the decoding thread stopped", self.what));
                Err(self.fail(err))
            }
        }
    }
}

/// Our error if the io::Error carries one, else a decompression error naming
/// the layer.
fn classify(e: io::Error, what: &str) -> Error {
    Error::from_io(e).unwrap_or_else(|source| Error::Decompress {
        what: what.to_owned(),
        source,
    })
}

/// The decoding thread: fills blocks with decompressed bytes until the end of
/// the stream, then reads the blob to its end (a decoder may stop before
/// trailing bytes), which checks its size and digest. Stops quietly when the
/// reader is gone.
fn decode_loop(
    mut decoder: Decoder,
    what: &str,
    blocks: &Sender<Msg>,
    recycle: &Receiver<Vec<u8>>,
    compressed: &AtomicU64,
) {
    loop {
        let mut block = recycle.try_recv().unwrap_or_else(|_| vec![0u8; BLOCK_SIZE]);
        let mut len = 0;
        let mut at_end = false;
        while len < block.len() {
            match decoder.read(&mut block[len..]) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = blocks.send(Msg::Failed(classify(e, what)));
                    return;
                }
            }
        }
        compressed.store(decoder.raw().count(), Ordering::Relaxed);
        if len > 0 && blocks.send(Msg::Data(block, len)).is_err() {
            return;
        }
        if at_end {
            let msg = match decoder.raw_mut().drain() {
                Ok(()) => Msg::End(decoder.raw().count()),
                Err(e) => Msg::Failed(classify(e, what)),
            };
            compressed.store(decoder.raw().count(), Ordering::Relaxed);
            let _ = blocks.send(msg);
            return;
        }
    }
}

/// The hashing thread: passes blocks on from the decoding thread, hashing
/// them, and adds the digest to the end. Stops quietly when the reader is
/// gone (the decoding thread then stops at its next send).
fn hash_loop(from: &Receiver<Msg>, to: &Sender<Msg>) {
    let mut hasher = Sha256::new();
    for msg in from {
        let last = !matches!(msg, Msg::Data(..));
        let msg = match msg {
            Msg::Data(block, len) => {
                hasher.update(&block[..len]);
                Msg::Data(block, len)
            }
            Msg::End(compressed_bytes) => {
                let digest = std::mem::take(&mut hasher).finalize();
                Msg::Hashed(compressed_bytes, Sha256Digest::from_bytes(digest.into()))
            }
            other => other,
        };
        if to.send(msg).is_err() || last {
            return;
        }
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Reading => {}
            State::Done(_) => return Ok(0),
            State::Failed(err) => return Err(err.duplicate().into()),
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos == self.block_len && !self.next_block()? {
            return Ok(0);
        }
        let n = buf.len().min(self.block_len - self.pos);
        let bytes = &self.block[self.pos..self.pos + n];
        buf[..n].copy_from_slice(bytes);
        self.uncompressed += n as u64;
        self.pos += n;
        Ok(n)
    }
}

impl Drop for LayerReader {
    fn drop(&mut self) {
        // Closing both channels wakes the decoding thread wherever it waits.
        self.blocks = None;
        self.recycle = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerReader")
            .field("what", &self.what)
            .field("compression", &self.compression)
            .field("compressed_read", &self.compressed_read())
            .field("uncompressed_read", &self.uncompressed)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, path::PathBuf};

    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn reader(
        blob: &[u8],
        digest: Sha256Digest,
        size: u64,
        diff_id: Sha256Digest,
    ) -> Result<LayerReader> {
        let raw = VerifyingReader::new(
            Box::new(io::Cursor::new(blob.to_vec())),
            "layer 0".into(),
            PathBuf::from("/blob"),
            digest,
            size,
        );
        LayerReader::new(raw, diff_id, "layer 0".into())
    }

    fn good(blob: &[u8], tar: &[u8]) -> LayerReader {
        reader(
            blob,
            Sha256Digest::of(blob),
            blob.len() as u64,
            Sha256Digest::of(tar),
        )
        .unwrap()
    }

    #[test]
    fn tar_parser_then_finish_checks_everything() {
        let tar = tar_of(&[("a", b"hello"), ("b/c", &[9u8; 3000])]);
        for blob in [
            tar.clone(),
            gzip(&tar),
            zstd::encode_all(&tar[..], 3).unwrap(),
        ] {
            let mut r = good(&blob, &tar);
            let mut names = Vec::new();
            {
                let mut ar = tar::Archive::new(&mut r);
                for e in ar.entries().unwrap() {
                    names.push(e.unwrap().path().unwrap().display().to_string());
                }
            }
            assert_eq!(names, ["a", "b/c"]);
            let stats = r.finish().unwrap();
            assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
            assert_eq!(stats.compressed_bytes, blob.len() as u64);
        }
    }

    #[test]
    fn wrong_diff_id_is_reported_at_eof_and_by_finish() {
        let tar = tar_of(&[("a", b"hello")]);
        let blob = gzip(&tar);
        let mut r = reader(
            &blob,
            Sha256Digest::of(&blob),
            blob.len() as u64,
            Sha256Digest::of(b"x"),
        )
        .unwrap();
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert!(
            matches!(Error::from_io(e), Ok(Error::DigestMismatch { what, .. }) if what == "uncompressed layer 0")
        );
        // Reading again repeats the failure rather than pretending success.
        assert!(r.read(&mut [0u8; 16]).is_err());
        assert!(matches!(r.finish(), Err(Error::DigestMismatch { .. })));
    }

    #[test]
    fn trailing_garbage_after_gzip_is_an_error() {
        let tar = tar_of(&[("a", b"hello")]);
        let mut blob = gzip(&tar);
        blob.extend_from_slice(b"garbage!");
        let r = good(&blob, &tar);
        assert!(r.finish().is_err());
    }

    #[test]
    fn truncated_blob_with_matching_digest_fails() {
        let tar = tar_of(&[("a", &[1u8; 100_000])]);
        for full in [gzip(&tar), zstd::encode_all(&tar[..], 3).unwrap()] {
            let cut = &full[..full.len() / 2];
            // Digest and size describe the truncated blob: only decoding can tell.
            let r = reader(
                cut,
                Sha256Digest::of(cut),
                cut.len() as u64,
                Sha256Digest::of(&tar),
            )
            .unwrap();
            let err = r.finish().unwrap_err();
            assert!(
                matches!(err, Error::Decompress { .. } | Error::DigestMismatch { .. }),
                "{err:?}"
            );
        }
    }

    #[test]
    fn empty_blob_is_not_a_panic() {
        let r = reader(b"", Sha256Digest::of(b""), 0, Sha256Digest::of(b"")).unwrap();
        assert_eq!(r.compression(), Compression::None);
        assert_eq!(r.finish().unwrap(), LayerStats::default());
        assert!(reader(b"", Sha256Digest::of(b""), 5, Sha256Digest::of(b"")).is_err());
    }

    #[test]
    fn dropping_a_reader_mid_stream_stops_its_decoding_thread() {
        // Many blocks of output, so the decoding thread is blocked sending
        // when the reader goes away: dropping must not hang.
        let tar = tar_of(&[("big", &vec![7u8; BLOCK_SIZE * (BLOCKS + 4)])]);
        let blob = gzip(&tar);
        let mut r = good(&blob, &tar);
        let mut first = [0u8; 1000];
        r.read_exact(&mut first).unwrap();
        drop(r);
        // And a full read still checks out.
        let mut r = good(&blob, &tar);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, tar);
        assert_eq!(r.finish().unwrap().uncompressed_bytes, tar.len() as u64);
    }

    #[test]
    fn reader_is_send() {
        fn send<T: Send>() {}
        send::<LayerReader>();
    }

    #[test]
    fn detects_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"usta"), Compression::None);
        assert_eq!(Compression::detect(&[0x1f]), Compression::None);
    }
}
