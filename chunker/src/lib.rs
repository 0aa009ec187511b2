//! Content-defined chunking for puzzle: FastCDC v2020 cut points and BLAKE3 chunk ids.
//!
//! A byte stream is cut where a rolling gear hash of the content matches a
//! mask, so an edit moves only the cut points near it and the chunks after it
//! come out the same as before. Identical chunks are then stored once.
//!
//! - [`ChunkParams`]: the minimum, average and maximum chunk size, checked once
//!   by [`ChunkParams::new`] (errors are [`ParamsError`]).
//! - [`chunk_slice`]: the cut points of an in-memory slice as `(offset, len)`
//!   pairs, without copying.
//! - [`StreamChunker`]: the same cut points over any [`std::io::Read`], yielding
//!   owned [`Chunk`]s.
//! - [`ChunkId`]: the BLAKE3-256 hash of a chunk, shown as lowercase hex.
//!
//! Both chunkers wrap one function, `fastcdc::v2020::cut` (fastcdc
//! [`FASTCDC_VERSION`], normalization level 1, the default gear table), so
//! they agree byte for byte. Cut points are part of the storage format: a
//! store records [`ALGORITHM`], [`FASTCDC_VERSION`] and its `ChunkParams`, and
//! any change to them gives different chunks for the same data.
//!
//! # Example
//!
//! ```
//! use puzzle_chunker::{chunk_slice, ChunkId, ChunkParams, StreamChunker};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let params = ChunkParams::new(1024, 4096, 16384)?;
//! // Some data with content for the hash to find cut points in.
//! let data: Vec<u8> = (0u32..200_000)
//!     .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
//!     .collect();
//!
//! let cuts: Vec<(usize, usize)> = chunk_slice(&data, params).collect();
//! assert_eq!(cuts.iter().map(|&(_, len)| len).sum::<usize>(), data.len());
//!
//! // Any reader gives the same chunks; here a byte slice.
//! let chunks = StreamChunker::new(&data[..], params).collect::<std::io::Result<Vec<_>>>()?;
//! assert_eq!(chunks.len(), cuts.len());
//! for (chunk, &(offset, len)) in chunks.iter().zip(&cuts) {
//!     assert_eq!(chunk.offset, offset as u64);
//!     assert_eq!(ChunkId::of(&chunk.data), ChunkId::of(&data[offset..offset + len]));
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Choosing min, avg and max
//!
//! - **avg** sets the dedup granularity. Smaller chunks find more shared data
//!   between similar files but cost more index entries, more per-chunk
//!   overhead (hash, compression frame, header entry) and compress worse one
//!   by one. Container layers do well with tens of KiB; the default is 64 KiB.
//! - **min** is skipped without hashing after each cut, which makes chunking
//!   faster and prevents tiny chunks, but no cut can fall within `min` bytes
//!   of the previous one, so a large `min` makes the chunking take longer to
//!   fall back in step after an edit. `avg / 4` is a good start.
//! - **max** is a hard cut for data where the hash never matches (runs of
//!   zeros, for instance). Such runs still dedup, as identical `max`-sized
//!   chunks. It bounds the memory per chunk; `avg * 4` is a good start.
//!
//! Normalized chunking (level 1) uses a stricter mask below `avg` and a looser
//! one above it, so most chunks end up near `avg`. The defaults are
//! 16 KiB / 64 KiB / 256 KiB. All three must be even and within the bounds
//! fastcdc accepts (see [`ChunkParams::new`]).

mod cut;
mod id;
mod params;
mod stream;

pub use cut::chunk_slice;
pub use id::{ChunkId, ParseChunkIdError};
pub use params::{ChunkParams, ParamsError};
pub use stream::{Chunk, StreamChunker};

/// Exact version of the fastcdc crate, recorded in store configs because cut points are format.
pub const FASTCDC_VERSION: &str = "5.0.0";
/// Name of the chunking algorithm, recorded in store configs next to [`FASTCDC_VERSION`].
pub const ALGORITHM: &str = "fastcdc-v2020";
