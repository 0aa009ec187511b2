//! Chunk size parameters, checked once against the bounds of `fastcdc` v2020.

use fastcdc::v2020;

// The fastcdc bounds are `usize`; ours are `u32` so configs serialize the same on
// every platform. All of fastcdc's bounds fit (checked at compile time below).
const MIN_LO: u32 = v2020::MINIMUM_MIN as u32;
const MIN_HI: u32 = v2020::MINIMUM_MAX as u32;
const AVG_LO: u32 = v2020::AVERAGE_MIN as u32;
const AVG_HI: u32 = v2020::AVERAGE_MAX as u32;
const MAX_LO: u32 = v2020::MAXIMUM_MIN as u32;
const MAX_HI: u32 = v2020::MAXIMUM_MAX as u32;
const _: () = assert!(v2020::MAXIMUM_MAX <= u32::MAX as usize);
const _: () = assert!(v2020::MINIMUM_MAX <= v2020::AVERAGE_MAX);

/// Minimum, average and maximum chunk size in bytes for the FastCDC v2020 chunker.
///
/// The fields are private so that every value in circulation has passed
/// [`ChunkParams::new`]; deserializing checks them the same way. All three are
/// part of the storage format: changing any of them moves every cut point.
///
/// Serialized as `{"min": .., "avg": .., "max": ..}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "RawParams")]
pub struct ChunkParams {
    min: u32,
    avg: u32,
    max: u32,
}

/// Unchecked mirror of [`ChunkParams`] that deserialization goes through.
#[derive(serde::Deserialize)]
struct RawParams {
    min: u32,
    avg: u32,
    max: u32,
}

impl TryFrom<RawParams> for ChunkParams {
    type Error = ParamsError;

    fn try_from(raw: RawParams) -> Result<Self, Self::Error> {
        ChunkParams::new(raw.min, raw.avg, raw.max)
    }
}

impl ChunkParams {
    /// Checks the sizes against fastcdc v2020's bounds.
    ///
    /// Each size must lie in its allowed range (`min` 64..=1 MiB, `avg`
    /// 256..=4 MiB, `max` 1 KiB..=16 MiB), be even (fastcdc's scan steps over
    /// two bytes at a time and an odd bound would silently move by one byte),
    /// and `min <= avg <= max` must hold. Ranges are checked first, then
    /// evenness, then order; the first failure is returned.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<ChunkParams, ParamsError> {
        if !(MIN_LO..=MIN_HI).contains(&min) {
            return Err(ParamsError::MinOutOfRange { min });
        }
        if !(AVG_LO..=AVG_HI).contains(&avg) {
            return Err(ParamsError::AvgOutOfRange { avg });
        }
        if !(MAX_LO..=MAX_HI).contains(&max) {
            return Err(ParamsError::MaxOutOfRange { max });
        }
        if min % 2 == 1 {
            return Err(ParamsError::MinOdd { min });
        }
        if avg % 2 == 1 {
            return Err(ParamsError::AvgOdd { avg });
        }
        if max % 2 == 1 {
            return Err(ParamsError::MaxOdd { max });
        }
        if !(min <= avg && avg <= max) {
            return Err(ParamsError::Unordered { min, avg, max });
        }
        Ok(ChunkParams { min, avg, max })
    }

    /// Smallest chunk size; only the last chunk of an input may be shorter.
    pub fn min(&self) -> u32 {
        self.min
    }

    /// Target average chunk size.
    pub fn avg(&self) -> u32 {
        self.avg
    }

    /// Largest chunk size; a chunk is cut here if no content cut point came first.
    pub fn max(&self) -> u32 {
        self.max
    }
}

impl Default for ChunkParams {
    /// 16 KiB / 64 KiB / 256 KiB.
    fn default() -> Self {
        ChunkParams {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
        }
    }
}

/// Why [`ChunkParams::new`] rejected a set of chunk sizes.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ParamsError {
    /// `min` is outside 64..=1048576.
    #[error("min chunk size {min} is out of range {MIN_LO}..={MIN_HI}")]
    MinOutOfRange { min: u32 },
    /// `avg` is outside 256..=4194304.
    #[error("avg chunk size {avg} is out of range {AVG_LO}..={AVG_HI}")]
    AvgOutOfRange { avg: u32 },
    /// `max` is outside 1024..=16777216.
    #[error("max chunk size {max} is out of range {MAX_LO}..={MAX_HI}")]
    MaxOutOfRange { max: u32 },
    /// `min` is odd.
    #[error("min chunk size {min} must be even")]
    MinOdd { min: u32 },
    /// `avg` is odd.
    #[error("avg chunk size {avg} must be even")]
    AvgOdd { avg: u32 },
    /// `max` is odd.
    #[error("max chunk size {max} must be even")]
    MaxOdd { max: u32 },
    /// The sizes are not ordered `min <= avg <= max`.
    #[error("chunk sizes must satisfy min <= avg <= max, got min {min}, avg {avg}, max {max}")]
    Unordered { min: u32, avg: u32, max: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        let d = ChunkParams::default();
        assert_eq!(ChunkParams::new(d.min(), d.avg(), d.max()), Ok(d));
        assert_eq!((d.min(), d.avg(), d.max()), (16384, 65536, 262144));
    }

    #[test]
    fn bounds_are_inclusive() {
        assert!(ChunkParams::new(64, 256, 1024).is_ok());
        assert!(ChunkParams::new(1_048_576, 4_194_304, 16_777_216).is_ok());
        assert!(ChunkParams::new(1024, 1024, 1024).is_ok());
        // min == avg == max at the low end is impossible: max must be >= 1024.
        assert!(ChunkParams::new(256, 256, 1024).is_ok());
    }

    #[test]
    fn errors() {
        use ParamsError::*;
        let cases = [
            ((62, 1024, 4096), MinOutOfRange { min: 62 }),
            (
                (1_048_578, 2_000_000, 4_000_000),
                MinOutOfRange { min: 1_048_578 },
            ),
            ((64, 254, 4096), AvgOutOfRange { avg: 254 }),
            ((64, 4_194_306, 8_000_000), AvgOutOfRange { avg: 4_194_306 }),
            ((64, 256, 1022), MaxOutOfRange { max: 1022 }),
            ((64, 256, 16_777_218), MaxOutOfRange { max: 16_777_218 }),
            ((0, 0, 0), MinOutOfRange { min: 0 }),
            (
                (u32::MAX, u32::MAX, u32::MAX),
                MinOutOfRange { min: u32::MAX },
            ),
            ((257, 1024, 4096), MinOdd { min: 257 }),
            ((256, 1023, 4096), AvgOdd { avg: 1023 }),
            ((256, 1024, 4095), MaxOdd { max: 4095 }),
            // The range check wins over the evenness check.
            ((63, 1023, 4095), MinOutOfRange { min: 63 }),
            (
                (2048, 1024, 4096),
                Unordered {
                    min: 2048,
                    avg: 1024,
                    max: 4096,
                },
            ),
            (
                (256, 8192, 4096),
                Unordered {
                    min: 256,
                    avg: 8192,
                    max: 4096,
                },
            ),
        ];
        for ((min, avg, max), want) in cases {
            assert_eq!(
                ChunkParams::new(min, avg, max),
                Err(want),
                "{min}/{avg}/{max}"
            );
        }
    }

    #[test]
    fn error_messages() {
        let msg = |min, avg, max| ChunkParams::new(min, avg, max).unwrap_err().to_string();
        assert_eq!(
            msg(10, 1024, 4096),
            "min chunk size 10 is out of range 64..=1048576"
        );
        assert_eq!(
            msg(64, 100, 4096),
            "avg chunk size 100 is out of range 256..=4194304"
        );
        assert_eq!(
            msg(64, 256, 20_000_000),
            "max chunk size 20000000 is out of range 1024..=16777216"
        );
        assert_eq!(msg(65, 256, 1024), "min chunk size 65 must be even");
        assert_eq!(msg(64, 257, 1024), "avg chunk size 257 must be even");
        assert_eq!(msg(64, 256, 1025), "max chunk size 1025 must be even");
        assert_eq!(
            msg(4096, 1024, 8192),
            "chunk sizes must satisfy min <= avg <= max, got min 4096, avg 1024, max 8192"
        );
    }

    #[test]
    fn serde_round_trip() {
        let p = ChunkParams::new(256, 1024, 4096).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"min":256,"avg":1024,"max":4096}"#);
        assert_eq!(serde_json::from_str::<ChunkParams>(&json).unwrap(), p);
    }

    #[test]
    fn deserialize_validates() {
        let err = serde_json::from_str::<ChunkParams>(r#"{"min":4096,"avg":1024,"max":8192}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("min <= avg <= max"), "{err}");
        let err = serde_json::from_str::<ChunkParams>(r#"{"min":1,"avg":1024,"max":8192}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("min chunk size 1 is out of range"), "{err}");
        assert!(serde_json::from_str::<ChunkParams>(r#"{"min":256,"avg":1024}"#).is_err());
    }
}
