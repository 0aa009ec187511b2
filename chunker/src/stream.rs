//! Chunking a `Read` through a reusable buffer.

use crate::cut::Cutter;
use crate::ChunkParams;
use std::fmt;
use std::io::{self, Read};

/// Smallest buffer we read into; see `StreamChunker::new`.
const MIN_BUFFER: usize = 1 << 20;

/// One chunk read from a stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position of the chunk's first byte in the stream.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for Chunk {
    /// Shows the length instead of dumping up to 16 MiB of bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Streaming chunker over any [`Read`].
///
/// Yields the same cut points as [`chunk_slice`](crate::chunk_slice) over the
/// concatenation of everything the reader returns, however the reads are split.
/// End of input is `None`; empty input yields no chunks.
///
/// Reads go into one buffer of `max(2 * max, 1 MiB)` bytes, allocated once;
/// each chunk is copied out of it once. [`io::ErrorKind::Interrupted`] is
/// retried. Any other read error is returned as `Some(Err(_))` with the bytes
/// read so far kept, so calling `next` again resumes with another read.
pub struct StreamChunker<R: Read> {
    reader: R,
    cutter: Cutter,
    /// `buf[start..end]` holds bytes read but not yet returned in a chunk.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    eof: bool,
}

impl<R: Read> StreamChunker<R> {
    /// Chunks `reader` with `params`.
    pub fn new(reader: R, params: ChunkParams) -> Self {
        // At least twice `max`, so after moving an unfinished chunk (< max bytes)
        // to the front there is room for a whole one. At least 1 MiB, so that
        // move and the re-scan of that tail happen rarely compared to the
        // bytes chunked.
        let capacity = (2 * params.max() as usize).max(MIN_BUFFER);
        Self::with_capacity(reader, params, capacity)
    }

    /// Tests use a small buffer to exercise refills and compaction.
    fn with_capacity(reader: R, params: ChunkParams, capacity: usize) -> Self {
        let cutter = Cutter::new(params);
        assert!(capacity >= 2 * cutter.max());
        StreamChunker {
            reader,
            cutter,
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
        }
    }

    /// Reads until the buffer is full or the reader is exhausted.
    fn fill(&mut self) -> io::Result<()> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for StreamChunker<R> {
    type Item = io::Result<Chunk>;

    fn next(&mut self) -> Option<io::Result<Chunk>> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if !pending.is_empty() {
                let len = self.cutter.cut(pending);
                // Final unless the cut is only "ran out of bytes" (see `Cutter::cut`).
                if len < pending.len() || pending.len() >= self.cutter.max() || self.eof {
                    let chunk = Chunk {
                        offset: self.offset,
                        data: pending[..len].to_vec(),
                    };
                    self.start += len;
                    self.offset += len as u64;
                    return Some(Ok(chunk));
                }
            } else if self.eof {
                return None;
            }
            // Here fewer than `max` bytes are pending and the reader isn't done,
            // so `fill` makes room if needed and reads at least one byte or
            // reaches end of input.
            if let Err(e) = self.fill() {
                return Some(Err(e));
            }
        }
    }
}

/// After `None` (end of input, everything returned) it stays `None`.
impl<R: Read> std::iter::FusedIterator for StreamChunker<R> {}

impl<R: Read> fmt::Debug for StreamChunker<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamChunker")
            .field("offset", &self.offset)
            .field("pending", &(self.end - self.start))
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk_slice;
    use proptest::prelude::*;
    use rand::{Rng, RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Reads of random length in `1..=max_read`, with `Interrupted` now and then.
    struct Jittery<'a> {
        data: &'a [u8],
        rng: ChaCha8Rng,
        max_read: usize,
    }

    impl Read for Jittery<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.rng.gen_ratio(1, 8) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self
                .rng
                .gen_range(1..=self.max_read)
                .min(buf.len())
                .min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// With a buffer of only 2 to 3 times `max`, nearly every chunk needs a
        /// refill and many need the pending tail moved; the cut points must
        /// still be the slice chunker's.
        #[test]
        fn small_buffer_matches_slice(
            seed: u64, len in 0usize..40_000, zeros in any::<bool>(),
            extra in 0usize..=4096, max_read in 1usize..5000,
        ) {
            let params = ChunkParams::new(256, 1024, 2048).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut data = vec![0u8; len];
            rng.fill_bytes(&mut data);
            if zeros {
                // Zero runs force cuts at exactly `max`.
                for block in data.chunks_mut(7000).step_by(2) {
                    block.fill(0);
                }
            }
            let reader = Jittery { data: &data, rng, max_read };
            let chunks = StreamChunker::with_capacity(reader, params, 2 * 2048 + extra)
                .collect::<io::Result<Vec<_>>>()
                .unwrap();
            let cuts: Vec<_> = chunk_slice(&data, params).collect();
            prop_assert_eq!(chunks.len(), cuts.len());
            for (chunk, &(offset, len)) in chunks.iter().zip(&cuts) {
                prop_assert_eq!(chunk.offset, offset as u64);
                prop_assert!(chunk.data == data[offset..offset + len]);
            }
        }
    }
}
