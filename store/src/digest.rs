//! SHA-256 blob digests, the names of everything in `blobs/sha256/`.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// The SHA-256 digest of a blob; displays as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobDigest([u8; 32]);

impl BlobDigest {
    pub fn of(data: &[u8]) -> Self {
        BlobDigest(Sha256::digest(data).into())
    }
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        BlobDigest(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Parses a blob's file name (64 lowercase hex digits, no prefix).
    pub fn from_hex(name: &str) -> Option<Self> {
        format!("sha256:{name}").parse().ok()
    }

    /// Lowercase hex without the algorithm prefix: the blob's file name.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobDigest({self})")
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
pub struct DigestParseError(pub String);

impl FromStr for BlobDigest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DigestParseError(s.chars().take(100).collect());
        let hex = s.strip_prefix("sha256:").ok_or_else(err)?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(err());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).map_err(|_| err())?;
        Ok(BlobDigest(out))
    }
}

impl serde::Serialize for BlobDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BlobDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
    pub fn finish(self) -> (W, BlobDigest, u64) {
        (
            self.inner,
            BlobDigest(self.hasher.finalize().into()),
            self.written,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trip_and_rejects() {
        let d = BlobDigest::of(b"hello");
        let s = d.to_string();
        assert_eq!(
            s,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(s.parse::<BlobDigest>().unwrap(), d);
        assert_eq!(BlobDigest::from_hex(&d.hex()), Some(d));
        assert_eq!(BlobDigest::from_hex("../x"), None);
        for bad in [
            "",
            "sha256:",
            "sha512:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:../../etc/passwd",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982",
        ] {
            assert!(bad.parse::<BlobDigest>().is_err(), "{bad}");
        }
    }

    /// A writer that takes at most 3 bytes a call, as a pipe or a full
    /// disk may.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The digest and size a pack is named and indexed by are those of the
    /// bytes that reached the file, however the writes were split.
    #[test]
    fn hashing_writer_names_what_was_written() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut w = HashingWriter::new(Trickle(Vec::new()));
        w.write_all(&data[..500]).unwrap();
        w.write_all(&data[500..]).unwrap();
        w.flush().unwrap();
        let (inner, digest, size) = w.finish();
        assert_eq!(inner.0, data);
        assert_eq!((digest, size), (BlobDigest::of(&data), 1000));
        // A flush reaches the writer underneath (a pack's buffered bytes).
        let mut w = HashingWriter::new(io::BufWriter::new(Vec::new()));
        w.write_all(&data).unwrap();
        w.flush().unwrap();
        assert_eq!(w.finish().0.get_ref(), &data);
    }

    /// Digests travel through JSON (the index, reports) as strings, and a
    /// malformed one is refused on the way in.
    #[test]
    fn serde_as_strings() {
        let d = BlobDigest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<BlobDigest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<BlobDigest>("\"sha256:00\"").is_err());
        // Every lowercase hex digit is accepted; the letters after f are not.
        let all = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(all.parse::<BlobDigest>().unwrap().hex(), &all[7..]);
        assert!(format!("sha256:{}g", "0".repeat(63))
            .parse::<BlobDigest>()
            .is_err());
        assert!(format!("sha256:{}/", "0".repeat(63))
            .parse::<BlobDigest>()
            .is_err());
    }
}
