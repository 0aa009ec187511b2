//! Decompressing, verifying reader over one layer blob.

use std::{
    fmt,
    io::{self, BufRead, BufReader, Read},
};

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

type Raw = BufReader<VerifyingReader>;

enum Decoder {
    // Boxed: the readers are a few hundred bytes each and built once per layer.
    Plain(Box<Raw>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<Raw>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, Raw>>),
}

impl Decoder {
    fn raw(&self) -> &VerifyingReader {
        match self {
            Decoder::Plain(r) => r.get_ref(),
            Decoder::Gzip(d) => d.get_ref().get_ref(),
            Decoder::Zstd(d) => d.get_ref().get_ref(),
        }
    }

    fn raw_mut(&mut self) -> &mut VerifyingReader {
        match self {
            Decoder::Plain(r) => r.get_mut(),
            Decoder::Gzip(d) => d.get_mut().get_mut(),
            Decoder::Zstd(d) => d.get_mut().get_mut(),
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

/// The uncompressed tar stream of one layer.
///
/// Hashes the blob as stored (checked against the layer's digest and size) and
/// the decompressed bytes (checked against its diff_id). A mismatch, a corrupt
/// or truncated stream, or an I/O error is returned by `read` as an
/// `io::Error` wrapping this crate's [`Error`] (recover it with
/// [`Error::from_io`]); [`LayerReader::finish`] returns it again.
///
/// Tar parsers stop at the end-of-archive marker, before any padding or the
/// compression footer, so always call [`LayerReader::finish`] once the parser is done:
/// the checks only run at the end of the stream.
pub struct LayerReader {
    what: String,
    decoder: Decoder,
    compression: Compression,
    diff_id: Sha256Digest,
    diff_hasher: Sha256,
    uncompressed: u64,
    state: State,
}

enum State {
    Reading,
    Done,
    Failed(Error),
}

impl LayerReader {
    /// Wraps a verifying reader over the blob. `what` names the layer in errors.
    pub(crate) fn new(raw: VerifyingReader, diff_id: Sha256Digest, what: String) -> Result<Self> {
        let mut raw = BufReader::with_capacity(BUF_SIZE, raw);
        let head = match raw.fill_buf() {
            Ok(head) => head,
            Err(e) => return Err(Self::classify(e, &what)),
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
        Ok(LayerReader {
            what,
            decoder,
            compression,
            diff_id,
            diff_hasher: Sha256::new(),
            uncompressed: 0,
            state: State::Reading,
        })
    }

    /// The compression detected from the blob's magic bytes.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Bytes of the stored (compressed) blob consumed so far, for progress.
    pub fn compressed_read(&self) -> u64 {
        self.decoder.raw().count()
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
                    return Err(match std::mem::replace(&mut self.state, State::Done) {
                        State::Failed(err) => err,
                        _ => Self::classify(e, &self.what),
                    })
                }
            }
        }
        Ok(LayerStats {
            compressed_bytes: self.decoder.raw().count(),
            uncompressed_bytes: self.uncompressed,
        })
    }

    /// Our error if the io::Error carries one, else a decompression error
    /// naming the layer.
    fn classify(e: io::Error, what: &str) -> Error {
        Error::from_io(e).unwrap_or_else(|source| Error::Decompress {
            what: what.to_owned(),
            source,
        })
    }

    fn fail(&mut self, err: Error) -> io::Error {
        let copy = err.duplicate();
        self.state = State::Failed(err);
        copy.into()
    }

    /// End of the decompressed stream: read the blob to its end (a decoder may
    /// stop before trailing bytes) and check everything.
    fn complete(&mut self) -> io::Result<usize> {
        if let Err(e) = self.decoder.raw_mut().drain() {
            let err = Self::classify(e, &self.what);
            return Err(self.fail(err));
        }
        let actual =
            Sha256Digest::from_bytes(std::mem::take(&mut self.diff_hasher).finalize().into());
        if actual != self.diff_id {
            let err = Error::DigestMismatch {
                what: format!("uncompressed {}", self.what),
                expected: self.diff_id.to_string(),
                actual: actual.to_string(),
            };
            return Err(self.fail(err));
        }
        self.state = State::Done;
        Ok(0)
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Reading => {}
            State::Done => return Ok(0),
            State::Failed(err) => return Err(err.duplicate().into()),
        }
        if buf.is_empty() {
            return Ok(0);
        }
        match self.decoder.read(buf) {
            Ok(0) => self.complete(),
            Ok(n) => {
                self.diff_hasher.update(&buf[..n]);
                self.uncompressed += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let err = Self::classify(e, &self.what);
                Err(self.fail(err))
            }
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
