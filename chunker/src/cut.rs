//! The core: the next cut point of a byte slice, and the slice iterator over it.

use crate::ChunkParams;
use fastcdc::v2020::{self, Normalization};

/// Normalization level 1 is what `v2020::FastCDC::new` uses. It is part of the
/// format, like the gear table (fastcdc's default, i.e. seed 0).
const LEVEL: Normalization = Normalization::Level1;

/// `ChunkParams` plus the masks fastcdc derives from `avg`, computed once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cutter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

impl Cutter {
    pub(crate) fn new(params: ChunkParams) -> Cutter {
        let avg = params.avg() as usize;
        let (mask_s, mask_l) = v2020::select_masks(avg, LEVEL);
        Cutter {
            min: params.min() as usize,
            avg,
            max: params.max() as usize,
            mask_s,
            mask_l,
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// Length of the chunk that starts at `data[0]`, in `1..=data.len().min(max)`
    /// for non-empty `data`.
    ///
    /// Looks at `data[..max]` only. When `data` is shorter than `max` and ends
    /// before the input does, only a result `< data.len()` is final: that cut
    /// was found by the hash scan, which reads bytes in order and picks the same
    /// mask for each position whatever the length, so more data can't change
    /// it. A result of `data.len()` just means "no cut point yet".
    #[inline]
    pub(crate) fn cut(&self, data: &[u8]) -> usize {
        let (_hash, len) = v2020::cut(
            data,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        len
    }
}

/// Cut points of a byte slice as `(offset, len)` pairs, in order, covering
/// `data` exactly; no bytes are copied.
///
/// Every chunk is `params.min()..=params.max()` bytes long except the last,
/// which may be shorter than `min`. Empty input yields nothing.
///
/// ```
/// use puzzle_chunker::{chunk_slice, ChunkParams};
///
/// let data = vec![0u8; 1_000_000]; // no content cut points: cut at max
/// let cuts: Vec<_> = chunk_slice(&data, ChunkParams::default()).collect();
/// assert_eq!(cuts, [(0, 262144), (262144, 262144), (524288, 262144), (786432, 213568)]);
/// ```
pub fn chunk_slice(data: &[u8], params: ChunkParams) -> impl Iterator<Item = (usize, usize)> + '_ {
    SliceChunks {
        data,
        pos: 0,
        cutter: Cutter::new(params),
    }
}

struct SliceChunks<'a> {
    data: &'a [u8],
    pos: usize,
    cutter: Cutter,
}

impl Iterator for SliceChunks<'_> {
    type Item = (usize, usize);

    #[inline]
    fn next(&mut self) -> Option<(usize, usize)> {
        let rest = &self.data[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let len = self.cutter.cut(rest);
        let offset = self.pos;
        self.pos += len;
        Some((offset, len))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let rest = self.data.len() - self.pos;
        (
            rest.div_ceil(self.cutter.max),
            Some(rest.div_ceil(self.cutter.min)),
        )
    }
}

impl std::iter::FusedIterator for SliceChunks<'_> {}
