//! `ChunkId`: the BLAKE3-256 hash of a chunk's bytes.

use std::fmt;
use std::str::FromStr;

/// Identity of a chunk: the BLAKE3-256 hash of its uncompressed bytes.
///
/// Shown and serialized as 64 lowercase hex characters. Ordering is byte-wise,
/// which is the same as ordering the hex strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    /// Hashes `data` with BLAKE3-256.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// Wraps a hash computed elsewhere, e.g. read back from an index.
    pub const fn from_bytes(b: [u8; 32]) -> ChunkId {
        ChunkId(b)
    }

    /// The 32 raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex into a stack buffer, so `Display` and `Serialize` don't allocate.
    fn hex(&self) -> HexBuf {
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 bytes hold 32 bytes of hex");
        HexBuf(buf)
    }
}

struct HexBuf([u8; 64]);

impl HexBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex is ASCII")
    }
}

impl fmt::Display for ChunkId {
    /// Honours width and precision, so `{:.12}` prints a short prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.hex().as_str())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.hex().as_str())
    }
}

/// Why a string is not a [`ChunkId`].
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ParseChunkIdError {
    /// The string is not 64 bytes long.
    #[error("chunk id must be 64 hex characters, got {len} bytes")]
    Length { len: usize },
    /// A character is not a hex digit.
    #[error("chunk id has non-hex character {ch:?} at byte {index}")]
    InvalidChar { ch: char, index: usize },
}

fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl FromStr for ChunkId {
    type Err = ParseChunkIdError;

    /// Parses 64 hex digits; upper case is accepted, `Display` always writes lower case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(ParseChunkIdError::Length { len: bytes.len() });
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let digit = |j: usize| {
                nibble(pair[j]).ok_or_else(|| {
                    // Every byte before this one is an ASCII hex digit, so this
                    // index is a char boundary.
                    let index = 2 * i + j;
                    let ch = s[index..].chars().next().expect("index < len");
                    ParseChunkIdError::InvalidChar { ch, index }
                })
            };
            out[i] = (digit(0)? << 4) | digit(1)?;
        }
        Ok(ChunkId(out))
    }
}

/// In human-readable formats (JSON) a chunk id is its 64 hex characters; in
/// binary formats (the index's postcard layer records) its 32 bytes.
impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(self.hex().as_str())
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ChunkId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chunk id as 64 hex characters or 32 bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ChunkId, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ChunkId, E> {
                let bytes: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &"32 bytes"))?;
                Ok(ChunkId(bytes))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(Visitor)
        } else {
            deserializer.deserialize_bytes(Visitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // BLAKE3 of the empty input, from the BLAKE3 test vectors.
    const EMPTY: &str = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";

    #[test]
    fn of_is_blake3() {
        assert_eq!(ChunkId::of(b"").to_string(), EMPTY);
        assert_eq!(
            ChunkId::of(b"abc").as_bytes(),
            blake3::hash(b"abc").as_bytes()
        );
        assert_ne!(ChunkId::of(b"a"), ChunkId::of(b"b"));
    }

    #[test]
    fn display_debug() {
        let id = ChunkId::of(b"");
        assert_eq!(format!("{id}"), EMPTY);
        assert_eq!(format!("{id:?}"), format!("ChunkId({EMPTY})"));
        assert_eq!(format!("{id:.12}"), &EMPTY[..12]);
        let mut b = [0u8; 32];
        b[0] = 0xab;
        b[31] = 0x0f;
        let s = ChunkId::from_bytes(b).to_string();
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("ab00") && s.ends_with("000f"), "{s}");
    }

    #[test]
    fn hex_round_trip() {
        for seed in 0..64u8 {
            let id = ChunkId::of(&[seed; 7]);
            let s = id.to_string();
            assert_eq!(s.parse::<ChunkId>(), Ok(id));
            assert_eq!(s.to_uppercase().parse::<ChunkId>(), Ok(id));
            assert_eq!(ChunkId::from_bytes(*id.as_bytes()), id);
        }
    }

    #[test]
    fn from_str_errors() {
        use ParseChunkIdError::*;
        assert_eq!("".parse::<ChunkId>(), Err(Length { len: 0 }));
        assert_eq!(EMPTY[..63].parse::<ChunkId>(), Err(Length { len: 63 }));
        assert_eq!(
            format!("{EMPTY}0").parse::<ChunkId>(),
            Err(Length { len: 65 })
        );
        let bad = format!("{}g{}", &EMPTY[..10], &EMPTY[11..]);
        assert_eq!(
            bad.parse::<ChunkId>(),
            Err(InvalidChar { ch: 'g', index: 10 })
        );
        // A two-byte character in a 64-byte string is reported whole.
        let bad = format!("{}é{}", &EMPTY[..3], &EMPTY[5..]);
        assert_eq!(bad.len(), 64);
        assert_eq!(
            bad.parse::<ChunkId>(),
            Err(InvalidChar { ch: 'é', index: 3 })
        );
        assert_eq!(
            format!("0x{}", &EMPTY[2..]).parse::<ChunkId>(),
            Err(InvalidChar { ch: 'x', index: 1 })
        );
        assert_eq!(
            Length { len: 3 }.to_string(),
            "chunk id must be 64 hex characters, got 3 bytes"
        );
        assert_eq!(
            InvalidChar { ch: 'g', index: 10 }.to_string(),
            "chunk id has non-hex character 'g' at byte 10"
        );
    }

    #[test]
    fn serde_round_trip() {
        let id = ChunkId::of(b"");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<ChunkId>(&json).unwrap(), id);
        // An owned (escaped) string works too, not just a borrowed one.
        let escaped = format!("\"\\u0061{}\"", &EMPTY[1..]);
        assert_eq!(serde_json::from_str::<ChunkId>(&escaped).unwrap(), id);
        let ids = vec![ChunkId::of(b"x"), ChunkId::of(b"y")];
        let back: Vec<ChunkId> =
            serde_json::from_str(&serde_json::to_string(&ids).unwrap()).unwrap();
        assert_eq!(back, ids);
    }

    #[test]
    fn binary_formats_carry_the_32_bytes() {
        let id = ChunkId::of(b"abc");
        let bytes = postcard::to_stdvec(&id).unwrap();
        // A length byte, then the id itself: not 64 hex characters.
        assert_eq!(bytes.len(), 33);
        assert_eq!(&bytes[1..], id.as_bytes());
        assert_eq!(postcard::from_bytes::<ChunkId>(&bytes).unwrap(), id);
        let ids = vec![ChunkId::of(b"x"), ChunkId::of(b"y")];
        let back: Vec<ChunkId> = postcard::from_bytes(&postcard::to_stdvec(&ids).unwrap()).unwrap();
        assert_eq!(back, ids);
        // Wrong lengths are errors.
        assert!(postcard::from_bytes::<ChunkId>(&serde_bytes_of(&[1u8; 31])).is_err());
        assert!(postcard::from_bytes::<ChunkId>(&serde_bytes_of(&[1u8; 33])).is_err());
    }

    /// A byte string in postcard's form, for the length test.
    fn serde_bytes_of(b: &[u8]) -> Vec<u8> {
        let mut v = vec![b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn serde_errors() {
        let err = serde_json::from_str::<ChunkId>("\"abc\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk id must be 64 hex characters"), "{err}");
        let err = serde_json::from_str::<ChunkId>("42")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a chunk id as 64 hex characters"), "{err}");
    }

    #[test]
    fn ordering_matches_hex() {
        let mut ids: Vec<ChunkId> = (0..50u32).map(|i| ChunkId::of(&i.to_le_bytes())).collect();
        let mut hexes: Vec<String> = ids.iter().map(ToString::to_string).collect();
        ids.sort();
        hexes.sort();
        let sorted: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, hexes);
    }
}
