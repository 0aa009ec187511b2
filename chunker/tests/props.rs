//! Property tests of the chunkers on small parameters.

use crate::common::{mixed_bytes, random_bytes, reference_cuts, small_params, ShortReads};
use fastcdc::v2020;
use proptest::prelude::*;
use puzzle_chunker::{chunk_slice, ChunkId, ChunkParams, StreamChunker};
use std::collections::BTreeSet;

/// Small valid parameters, `avg` not always a power of two.
fn params() -> impl Strategy<Value = ChunkParams> {
    (32u32..=512, 0u32..=1024, 0u32..=2048).prop_map(|(m, da, dm)| {
        let min = 2 * m;
        let avg = (min + 2 * da).max(256);
        let max = (avg + 2 * dm).max(1024);
        ChunkParams::new(min, avg, max).unwrap()
    })
}

proptest! {
    /// Chunks cover the input exactly, in order, each `min..=max` long except
    /// the last, which may be shorter than `min`.
    #[test]
    fn chunks_cover_input_within_bounds(
        seed: u64, len in 0usize..40_000, kind in 0u8..3, params in params(),
    ) {
        let data = mixed_bytes(seed, len, kind);
        let cuts: Vec<_> = chunk_slice(&data, params).collect();
        let mut next = 0;
        for (i, &(offset, len)) in cuts.iter().enumerate() {
            prop_assert_eq!(offset, next);
            prop_assert!(len >= 1 && len <= params.max() as usize, "chunk {} len {}", i, len);
            if i + 1 < cuts.len() {
                prop_assert!(len >= params.min() as usize, "chunk {} len {} < min", i, len);
            }
            next += len;
        }
        prop_assert_eq!(next, data.len());
        prop_assert_eq!(cuts.is_empty(), data.is_empty());
    }

    /// The slice chunker, fastcdc's own iterator and the byte-at-a-time
    /// reference agree.
    #[test]
    fn slice_matches_reference_and_fastcdc(
        seed: u64, len in 0usize..40_000, kind in 0u8..3, params in params(),
    ) {
        let data = mixed_bytes(seed, len, kind);
        let cuts: Vec<_> = chunk_slice(&data, params).collect();
        prop_assert_eq!(&cuts, &reference_cuts(&data, params));
        let fast: Vec<_> = v2020::FastCDC::new(
            &data,
            params.min() as usize,
            params.avg() as usize,
            params.max() as usize,
        )
        .map(|c| (c.offset, c.length))
        .collect();
        prop_assert_eq!(&cuts, &fast);
    }

    /// Whatever lengths the reads have, the stream chunker returns the slice
    /// chunker's cut points and the right bytes.
    #[test]
    fn stream_matches_slice_for_any_read_split(
        seed: u64, len in 0usize..40_000, kind in 0u8..3, params in params(),
        read_seed: u64, max_read in prop_oneof![1usize..64, 1usize..10_000, 1usize..200_000],
    ) {
        let data = mixed_bytes(seed, len, kind);
        let cuts: Vec<_> = chunk_slice(&data, params).collect();
        let chunks = StreamChunker::new(ShortReads::new(&data, read_seed, max_read), params)
            .collect::<std::io::Result<Vec<_>>>()
            .unwrap();
        prop_assert_eq!(chunks.len(), cuts.len());
        for (chunk, &(offset, len)) in chunks.iter().zip(&cuts) {
            prop_assert_eq!(chunk.offset, offset as u64);
            prop_assert!(chunk.data == data[offset..offset + len], "bytes differ at {}", offset);
        }
    }

    /// Replacing, inserting or deleting one byte at `pos` leaves every chunk
    /// that ends before `pos` alone, and the chunk lists fall back in step
    /// soon after: from some common boundary `r` on, at most `RESYNC` bytes
    /// past the edit, both lists hold the same chunks (same lengths and ids).
    #[test]
    fn one_byte_edit_changes_only_nearby_chunks(
        seed: u64, pos in 0usize..20_000, extra in 0usize..10_000,
        edit in 0u8..3, bit in 0u8..8, byte: u8,
    ) {
        let params = small_params();
        let max = params.max() as usize;
        // Measured on random data with these params (1M edits): the resync
        // distance was > 8 KiB (2 * max) in 5e-4 of cases, > 16 KiB in 2e-6,
        // and its tail halves with every further KiB, so 48 KiB is never
        // reached by chance; a chunker that does not resync (say fixed-size
        // blocks after an insertion) fails at once.
        const RESYNC: usize = 12 * 4096;
        let len = pos + RESYNC + max + extra;
        let original = random_bytes(seed, len);
        let mut edited = original.clone();
        let shift: isize = match edit {
            0 => {
                edited[pos] ^= 1 << bit;
                0
            }
            1 => {
                edited.insert(pos, byte);
                1
            }
            _ => {
                edited.remove(pos);
                -1
            }
        };
        let chunks = |data: &[u8]| -> Vec<(usize, usize, ChunkId)> {
            chunk_slice(data, params)
                .map(|(o, l)| (o, l, ChunkId::of(&data[o..o + l])))
                .collect()
        };
        let a = chunks(&original);
        let b = chunks(&edited);

        // The cut ending a chunk depends on the bytes up to and including
        // the first byte after it, so chunks ending before `pos` are fixed.
        let prefix = a.iter().take_while(|&&(o, l, _)| o + l < pos).count();
        prop_assert_eq!(&a[..prefix], &b[..prefix]);

        let a_ends: BTreeSet<usize> = a.iter().map(|&(o, l, _)| o + l).collect();
        let r = b
            .iter()
            .map(|&(o, l, _)| o + l)
            .find(|&e| e > pos && a_ends.contains(&e.wrapping_add_signed(-shift)));
        let r = r.expect("the edited chunk list shares a later boundary");
        prop_assert!(r <= pos + RESYNC, "resync at {} for an edit at {}", r, pos);
        let tail = |list: &[(usize, usize, ChunkId)], from: usize| -> Vec<(usize, ChunkId)> {
            list.iter().filter(|c| c.0 >= from).map(|&(_, l, id)| (l, id)).collect()
        };
        let a_tail = tail(&a, r.wrapping_add_signed(-shift));
        let b_tail = tail(&b, r);
        // `len` leaves at least `max` bytes after `pos + RESYNC`.
        prop_assert!(!b_tail.is_empty());
        prop_assert_eq!(a_tail, b_tail);
    }
}
