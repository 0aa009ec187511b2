//! Chunks stored twice: which copy gc keeps in use.
//!
//! A chunk is stored twice when two packs hold it and images use both
//! copies: a build that ran against a lost (empty) index stored every
//! chunk again, or two stores' blobs were merged. gc keeps one copy of each
//! such chunk, its *canonical* copy, points every image at it, and counts
//! the others as dead. The choice is a pure function of which packs images
//! use (docs/FORMAT.md, "Garbage collection"):
//!
//! 1. a copy in a pack a pinned manifest uses (such a pack stays anyway, so
//!    using it frees the others now);
//! 2. then the copy in the pack with the most live bytes (all its live
//!    chunks counted, copies or not): the fuller pack is the one that stays
//!    with the fewest dead bytes, and chunks shared by the same packs all
//!    go the same way, so the losing packs empty out rather than each
//!    keeping a part;
//! 3. then the pack with the smallest digest.
//!
//! The index plays no part: after `puzzle verify --rebuild-index` it names
//! whichever pack was read last, which says nothing about what is cheap to
//! keep. gc points it at the canonical copy instead.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use puzzle_chunker::ChunkId;

use crate::digest::BlobDigest;
use crate::pack::ChunkLoc;

/// The live chunks of each pack (as gc collects them from the roots).
pub(super) type Live = HashMap<BlobDigest, HashMap<ChunkId, ChunkLoc>>;

/// For every chunk live in more than one pack, its canonical copy (see the
/// module docs); chunks live in one pack only are not listed.
pub(super) fn canonical(live: &Live, pinned: &HashSet<BlobDigest>) -> HashMap<ChunkId, ChunkLoc> {
    // A total order on packs: every chunk goes to its best-ranked copy.
    let live_bytes = |p: &BlobDigest| -> u64 { live[p].values().map(ChunkLoc::stored_share).sum() };
    let mut packs: Vec<(bool, Reverse<u64>, BlobDigest)> = live
        .keys()
        .map(|p| (!pinned.contains(p), Reverse(live_bytes(p)), *p))
        .collect();
    packs.sort();
    let rank: HashMap<BlobDigest, usize> = packs
        .iter()
        .enumerate()
        .map(|(i, (_, _, p))| (*p, i))
        .collect();

    let mut best: HashMap<ChunkId, (usize, ChunkLoc)> = HashMap::new();
    let mut copies: HashMap<ChunkId, usize> = HashMap::new();
    for (p, chunks) in live {
        let r = rank[p];
        for (id, loc) in chunks {
            *copies.entry(*id).or_default() += 1;
            let b = best.entry(*id).or_insert((r, *loc));
            if r < b.0 {
                *b = (r, *loc);
            }
        }
    }
    best.into_iter()
        .filter(|(id, _)| copies[id] > 1)
        .map(|(id, (_, loc))| (id, loc))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8) -> BlobDigest {
        BlobDigest::from_bytes([n; 32])
    }

    fn chunk(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    /// A chunk of `len` raw bytes alone in its frame, stored at that size.
    fn loc(p: u8, offset: u64, len: u32) -> ChunkLoc {
        ChunkLoc {
            pack: pack(p),
            offset,
            clen: len,
            frame_rlen: len,
            at: 0,
            rlen: len,
        }
    }

    /// Packs built from (pack, [(chunk, len)]), chunks laid out in order.
    fn live(packs: &[(u8, &[(u8, u32)])]) -> Live {
        let mut out = Live::new();
        for (p, chunks) in packs {
            let mut off = 0;
            let m = out.entry(pack(*p)).or_default();
            for (c, len) in *chunks {
                m.insert(chunk(*c), loc(*p, off, *len));
                off += u64::from(*len);
            }
        }
        out
    }

    #[test]
    fn chunks_in_one_pack_only_have_no_canonical_copy() {
        let l = live(&[(1, &[(1, 10), (2, 10)]), (2, &[(3, 10)])]);
        assert!(canonical(&l, &HashSet::new()).is_empty());
    }

    #[test]
    fn the_fuller_pack_wins_every_chunk_it_shares() {
        // Pack 9 holds the base (chunks 1-3) and more; pack 1 the base only.
        let l = live(&[
            (1, &[(1, 100), (2, 100), (3, 100)]),
            (9, &[(1, 100), (2, 100), (3, 100), (4, 50)]),
        ]);
        let c = canonical(&l, &HashSet::new());
        assert_eq!(c.len(), 3);
        for n in 1..=3 {
            assert_eq!(c[&chunk(n)].pack, pack(9), "chunk {n}");
        }
        // The same place in the pack as the images use.
        assert_eq!(c[&chunk(2)], l[&pack(9)][&chunk(2)]);
    }

    #[test]
    fn a_pinned_pack_wins_over_a_fuller_one() {
        let l = live(&[(1, &[(1, 100)]), (2, &[(1, 100), (2, 900)])]);
        let c = canonical(&l, &[pack(1)].into());
        assert_eq!(c[&chunk(1)].pack, pack(1));
    }

    #[test]
    fn ties_go_to_the_smaller_digest_whatever_the_map_order() {
        for order in [[3u8, 7], [7, 3]] {
            let l = live(&[(order[0], &[(1, 100)]), (order[1], &[(1, 100)])]);
            let c = canonical(&l, &HashSet::new());
            assert_eq!(c[&chunk(1)].pack, pack(3));
        }
    }

    #[test]
    fn three_packs_sharing_pairwise_keep_one_copy_each() {
        // 1 = {a, b}, 2 = {b, c}, 3 = {c, a}; pack 1 is fullest.
        let l = live(&[
            (1, &[(1, 200), (2, 200)]),
            (2, &[(2, 200), (3, 100)]),
            (3, &[(3, 100), (1, 200)]),
        ]);
        let c = canonical(&l, &HashSet::new());
        assert_eq!(c[&chunk(1)].pack, pack(1));
        assert_eq!(c[&chunk(2)].pack, pack(1));
        // 2 and 3 hold 300 live bytes each: the smaller digest.
        assert_eq!(c[&chunk(3)].pack, pack(2));
    }
}
