//! Seeded, compressible inputs for benchmarks and tests.

/// splitmix64 from a seed: the stream [`pseudo_random`](crate::pseudo_random)
/// writes out, and reproducible randomness for tests (kill delays, picks).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (multiply-shift; the bias is far below what matters here).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// In `0..n`, skewed towards 0 like word frequencies (the square of a uniform).
    fn skewed(&mut self, n: usize) -> usize {
        let u = self.below(1 << 16);
        (u * u * n) >> 32
    }
}

/// Letters, most frequent first, so skewed picks give English-like spellings.
const LETTERS: &[u8; 26] = b"etaoinshrdlcumwfgypbvkjxqz";
const PUNCT: &[u8] = b",.;:=(){}\"'";

/// Deterministic text-like bytes, a stand-in for the source files, configs and
/// docs of a container layer: indented lines of words from a seeded
/// 4096-word vocabulary (frequent words much more common than rare ones),
/// numbers and punctuation, and now and then a repeat of an earlier stretch
/// of up to 4 KiB (boilerplate, licence headers). zstd level 3 compresses
/// 64 KiB pieces of it about 2.5:1; the same `seed` and `len` always give the
/// same bytes.
pub fn text_like(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let words: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let n = 2 + rng.below(10);
            (0..n).map(|_| LETTERS[rng.skewed(LETTERS.len())]).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        if out.len() > 64 << 10 && rng.below(24) == 0 {
            // Repeat something from the last MiB.
            let n = 256 + rng.below(4096 - 256);
            let back = n + rng.below((out.len() - n).min(1 << 20));
            let start = out.len() - back;
            out.extend_from_within(start..start + n);
            continue;
        }
        for _ in 0..rng.below(5) {
            out.extend_from_slice(b"    ");
        }
        for w in 0..3 + rng.below(10) {
            if w > 0 {
                out.push(b' ');
            }
            match rng.below(16) {
                0 => out.extend_from_slice(rng.below(100_000).to_string().as_bytes()),
                1 => out.push(PUNCT[rng.below(PUNCT.len())]),
                _ => out.extend_from_slice(&words[rng.skewed(words.len())]),
            }
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_like_is_seeded_and_compressible() {
        let a = text_like(7, 1 << 20);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(a, text_like(7, 1 << 20));
        assert_eq!(&a[..1000], &text_like(7, 1000)[..]);
        assert_ne!(a, text_like(8, 1 << 20));
        assert!(a.iter().all(|b| b.is_ascii()));
        // As documented: 64 KiB pieces compress about 2.5:1 at level 3.
        let z: usize = a
            .chunks(64 << 10)
            .map(|c| zstd::bulk::compress(c, 3).unwrap().len())
            .sum();
        let ratio = a.len() as f64 / z as f64;
        assert!((2.0..3.0).contains(&ratio), "ratio {ratio:.2}");
    }

    #[test]
    fn splitmix_matches_pseudo_random() {
        let mut rng = SplitMix(5);
        let words: Vec<u8> = (0..4).flat_map(|_| rng.next_u64().to_le_bytes()).collect();
        assert_eq!(words, crate::pseudo_random(5, 32));
    }
}
