//! Digest strings (`sha256:<hex>`) and a reader that verifies a blob while it streams.

use std::{
    io::{self, Read},
    path::PathBuf,
};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Digest algorithms we accept. Only SHA-256: it is what registries and
/// `docker save` produce, and the only one whose hex we turn into blob paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DigestAlgo {
    Sha256,
}

/// A validated SHA-256 digest: the store's blob digest type.
/// `Display` gives `sha256:<64 lowercase hex>`.
pub use puzzle_store::BlobDigest as Sha256Digest;

/// Parses `sha256:<hex>` into a digest; see [`parse_digest`].
pub fn parse_sha256(s: &str) -> Result<Sha256Digest> {
    parse_digest(s).map(|(DigestAlgo::Sha256, bytes)| Sha256Digest::from_bytes(bytes))
}

/// Untrusted strings end up in error messages: keep them short and printable.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 100;
    if s.len() <= MAX {
        format!("{s:?}")
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{:?}...", &s[..end])
    }
}

/// Parses a digest string `ALGO:HEX`. Only `sha256` with exactly 64 lowercase hex
/// digits is accepted, so the hex part is always safe to join onto a path.
pub fn parse_digest(s: &str) -> Result<(DigestAlgo, [u8; 32])> {
    let Some((algo, encoded)) = s.split_once(':') else {
        return Err(Error::Invalid(format!(
            "invalid digest {}: expected sha256:<hex>",
            shorten(s)
        )));
    };
    if algo != "sha256" {
        let algo_ok = !algo.is_empty()
            && algo
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        return Err(if algo_ok {
            Error::Unsupported(format!(
                "digest algorithm {} in {} (only sha256 is supported)",
                shorten(algo),
                shorten(s)
            ))
        } else {
            Error::Invalid(format!("invalid digest {}", shorten(s)))
        });
    }
    let hex_ok = encoded.len() == 64
        && encoded
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err(Error::Invalid(format!(
            "invalid digest {}: expected 64 lowercase hex digits after sha256:",
            shorten(s)
        )));
    }
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(encoded, &mut bytes)
        .map_err(|e| Error::Invalid(format!("invalid digest {}: {e}", shorten(s))))?;
    Ok((DigestAlgo::Sha256, bytes))
}

/// Reads a blob and checks it against its expected size and digest as it
/// streams. Never reads more than `size + 1` bytes from the inner reader; a blob
/// that turns out longer fails at once. At EOF a mismatch is returned as an
/// `io::Error` wrapping [`Error::DigestMismatch`] / [`Error::SizeMismatch`],
/// and every later read returns the same verdict.
pub(crate) struct VerifyingReader {
    inner: Box<dyn Read + Send>,
    /// Names the blob in errors, e.g. "layer 2 sha256:...".
    what: String,
    /// The file read from, for I/O errors.
    path: PathBuf,
    expected: Sha256Digest,
    size: u64,
    hasher: Sha256,
    count: u64,
    verdict: Option<Verdict>,
}

#[derive(Clone)]
enum Verdict {
    Ok,
    Size { actual: u64 },
    Digest { actual: Sha256Digest },
}

impl VerifyingReader {
    pub(crate) fn new(
        inner: Box<dyn Read + Send>,
        what: String,
        path: PathBuf,
        expected: Sha256Digest,
        size: u64,
    ) -> Self {
        VerifyingReader {
            inner,
            what,
            path,
            expected,
            size,
            hasher: Sha256::new(),
            count: 0,
            verdict: None,
        }
    }

    fn verdict_error(&self, v: &Verdict) -> Error {
        match v {
            Verdict::Ok => Error::Invalid(format!("{}: internal verdict error", self.what)),
            Verdict::Size { actual } => Error::SizeMismatch {
                what: self.what.clone(),
                expected: self.size,
                actual: *actual,
            },
            Verdict::Digest { actual } => Error::DigestMismatch {
                what: self.what.clone(),
                expected: self.expected.to_string(),
                actual: actual.to_string(),
            },
        }
    }

    fn report(&self) -> io::Result<usize> {
        match &self.verdict {
            None | Some(Verdict::Ok) => Ok(0),
            Some(v) => Err(self.verdict_error(v).into()),
        }
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.verdict.is_some() {
            return self.report();
        }
        if buf.is_empty() {
            return Ok(0);
        }
        // Allow one byte past the expected size so an overlong blob is noticed.
        let allowed = self.size.saturating_add(1).saturating_sub(self.count);
        let want = usize::try_from(allowed)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(Error::io(self.path.clone(), e).into()),
        };
        if n == 0 {
            let verdict = if self.count != self.size {
                Verdict::Size { actual: self.count }
            } else {
                let actual =
                    Sha256Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
                if actual == self.expected {
                    Verdict::Ok
                } else {
                    Verdict::Digest { actual }
                }
            };
            self.verdict = Some(verdict);
            return self.report();
        }
        self.count += n as u64;
        if self.count > self.size {
            self.verdict = Some(Verdict::Size { actual: self.count });
            return self.report();
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_valid_sha256() {
        let (algo, bytes) = parse_digest(EMPTY).unwrap();
        assert_eq!(algo, DigestAlgo::Sha256);
        assert_eq!(Sha256Digest::from_bytes(bytes), Sha256Digest::of(b""));
        assert_eq!(Sha256Digest::from_bytes(bytes).to_string(), EMPTY);
    }

    #[test]
    fn rejects_path_traversal_and_bad_digests() {
        for bad in [
            "sha256:../../../etc/passwd",
            "sha256:../0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "sha256:",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "",
            "../sha256:abc",
            "sha256/x:abc",
        ] {
            match parse_digest(bad) {
                Err(Error::Invalid(msg)) => assert!(msg.contains("digest"), "{msg}"),
                other => panic!("{bad:?}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn other_algorithms_are_unsupported() {
        let d = format!("sha512:{}", "a".repeat(128));
        assert!(matches!(parse_digest(&d), Err(Error::Unsupported(m)) if m.contains("sha512")));
    }

    #[test]
    fn long_garbage_is_shortened_in_messages() {
        let s = "x".repeat(10_000);
        let msg = parse_digest(&s).unwrap_err().to_string();
        assert!(msg.len() < 300, "{}", msg.len());
    }

    fn verify(data: &[u8], expected: Sha256Digest, size: u64) -> Result<Vec<u8>> {
        let mut r = VerifyingReader::new(
            Box::new(io::Cursor::new(data.to_vec())),
            "blob x".into(),
            PathBuf::from("/tmp/x"),
            expected,
            size,
        );
        let mut out = Vec::new();
        match r.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => Err(Error::from_io(e).expect("wrapped error")),
        }
    }

    #[test]
    fn verifying_reader_checks_size_and_digest() {
        let data = b"hello world";
        let good = Sha256Digest::of(data);
        assert_eq!(verify(data, good, 11).unwrap(), data);
        assert!(matches!(
            verify(data, good, 10),
            Err(Error::SizeMismatch {
                expected: 10,
                actual: 11,
                ..
            })
        ));
        assert!(matches!(
            verify(data, good, 12),
            Err(Error::SizeMismatch {
                expected: 12,
                actual: 11,
                ..
            })
        ));
        match verify(data, Sha256Digest::of(b"other"), 11) {
            Err(Error::DigestMismatch { what, expected, .. }) => {
                assert_eq!(what, "blob x");
                assert_eq!(expected, Sha256Digest::of(b"other").to_string());
            }
            other => panic!("{other:?}"),
        }
    }
}
