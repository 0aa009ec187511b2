//! Inputs and readers shared by the tests.

use fastcdc::v2020;
use puzzle_chunker::ChunkParams;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{self, Read};

/// Small sizes so property tests see many chunks in little data.
pub fn small_params() -> ChunkParams {
    ChunkParams::new(256, 1024, 4096).unwrap()
}

/// `len` bytes from ChaCha8 seeded with `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Test data of three kinds: 0 random, 1 random with runs of zeros (which
/// force cuts at `max`), 2 text-like bytes from a small alphabet.
pub fn mixed_bytes(seed: u64, len: usize, kind: u8) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    match kind % 3 {
        0 => rng.fill_bytes(&mut data),
        1 => {
            let mut pos = 0;
            while pos < len {
                let run = rng.gen_range(1..20_000).min(len - pos);
                if rng.gen_bool(0.5) {
                    rng.fill_bytes(&mut data[pos..pos + run]);
                }
                pos += run;
            }
        }
        _ => {
            const ALPHABET: &[u8] = b"etaoin shrdlu\n{}";
            rng.fill_bytes(&mut data);
            for b in &mut data {
                *b = ALPHABET[usize::from(*b) % ALPHABET.len()];
            }
        }
    }
    data
}

/// A reader over a slice that returns reads of random short lengths (0 only at
/// the end), and sometimes `Interrupted` first.
pub struct ShortReads<'a> {
    data: &'a [u8],
    rng: ChaCha8Rng,
    max_read: usize,
}

impl<'a> ShortReads<'a> {
    pub fn new(data: &'a [u8], seed: u64, max_read: usize) -> Self {
        ShortReads {
            data,
            rng: ChaCha8Rng::seed_from_u64(seed),
            max_read: max_read.max(1),
        }
    }
}

impl Read for ShortReads<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rng.gen_ratio(1, 16) {
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

/// The v2020 cut points by the textbook definition, one byte at a time, with
/// none of fastcdc's two-bytes-per-step unrolling: after skipping `min`
/// bytes, cut before the first byte whose gear hash matches the strict mask
/// (below `avg`) or the loose one (from `avg` on), else at `max`. fastcdc
/// tests candidate positions in pairs, so an odd last byte is never one.
pub fn reference_cuts(data: &[u8], params: ChunkParams) -> Vec<(usize, usize)> {
    let (min, avg, max) = (
        params.min() as usize,
        params.avg() as usize,
        params.max() as usize,
    );
    let (gear, _) = v2020::get_gear_with_seed(0);
    let (mask_s, mask_l) = v2020::select_masks(avg, v2020::Normalization::Level1);
    let mut cuts = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let window = &data[start..data.len().min(start + max)];
        let mut len = window.len();
        let mut hash = 0u64;
        for (i, &b) in window.iter().enumerate().take(window.len() & !1).skip(min) {
            hash = (hash << 1).wrapping_add(gear[b as usize]);
            let mask = if i < avg { mask_s } else { mask_l };
            if hash & mask == 0 {
                len = i;
                break;
            }
        }
        cuts.push((start, len));
        start += len;
    }
    cuts
}
