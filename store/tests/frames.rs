//! The chunk writer groups new chunks into frames: grouping follows the
//! order of `put`, every chunk reads back, and two fresh stores get the
//! same packs whatever the number of compressor threads.

use puzzle_chunker::{ChunkId, ChunkParams};
use puzzle_store::frame::{FrameReader, Grouper};
use puzzle_store::index::ChunkIndex;
use puzzle_store::pack::{self, PackInfo};
use puzzle_store::writer::ChunkWriter;
use puzzle_store::{Store, StoreConfig};
use rand::{Rng, SeedableRng};

/// Chunks of 0..300 KiB, half random bytes, half repetitive text.
fn chunks(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let len = rng.gen_range(0..300 << 10);
            if i % 2 == 0 {
                (0..len).map(|_| rng.gen()).collect()
            } else {
                format!("line {i} of some text that repeats\n")
                    .into_bytes()
                    .into_iter()
                    .cycle()
                    .take(len)
                    .collect()
            }
        })
        .collect()
}

fn write(dir: &std::path::Path, data: &[Vec<u8>], threads: usize) -> (Store, Vec<PackInfo>) {
    let store = Store::open_or_create(dir, &StoreConfig::new(ChunkParams::default(), 3)).unwrap();
    let index = ChunkIndex::open(&store).unwrap();
    let mut w = ChunkWriter::new(&store, &index, threads);
    for c in data {
        w.put(ChunkId::of(c), c.clone()).unwrap();
    }
    let packs = w.finish().unwrap().packs;
    (store, packs)
}

#[test]
fn frames_group_put_order_and_read_back_identically_in_two_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = chunks(7, 60);
    // A repeated chunk is stored once, and does not end a frame.
    data.insert(10, data[3].clone());
    let (store, packs) = write(&tmp.path().join("a"), &data, 2);
    let (_, again) = write(&tmp.path().join("b"), &data, 1);
    let digests = |p: &[PackInfo]| p.iter().map(|p| p.digest).collect::<Vec<_>>();
    assert_eq!(
        digests(&packs),
        digests(&again),
        "packs differ between stores"
    );

    // Frames are what a Grouper makes of the distinct chunks in put order.
    let mut seen = std::collections::HashSet::new();
    let mut grouper = Grouper::new(store.config().compression.frame_target);
    let mut want = Vec::new();
    for c in &data {
        if seen.insert(ChunkId::of(c)) {
            want.extend(grouper.push(ChunkId::of(c), c));
        }
    }
    want.extend(grouper.finish());
    let mut got: Vec<Vec<(ChunkId, u32)>> = Vec::new();
    let mut last = None;
    for p in &packs {
        // The index in the pack file says the same as the writer.
        let f = std::fs::File::open(store.blob_path(&p.digest)).unwrap();
        assert_eq!(pack::read_pack_index(&f, p.size).unwrap(), p.entries);
        for e in &p.entries {
            if last != Some((p.digest, e.offset)) {
                got.push(Vec::new());
                last = Some((p.digest, e.offset));
            }
            got.last_mut().unwrap().push((e.id, e.rlen));
        }
    }
    let want: Vec<Vec<(ChunkId, u32)>> = want.into_iter().map(|g| g.chunks).collect();
    assert_eq!(got, want);
    assert!(
        got.iter().any(|g| g.len() > 1),
        "some frame holds several chunks"
    );

    // Every chunk reads back.
    let mut reader = FrameReader::new(&store, 4 << 20);
    let by_id: std::collections::HashMap<ChunkId, &Vec<u8>> =
        data.iter().map(|c| (ChunkId::of(c), c)).collect();
    for p in &packs {
        for e in &p.entries {
            let bytes = reader.chunk(&e.id, &e.loc(p.digest)).unwrap();
            assert_eq!(&bytes[..], &by_id[&e.id][..]);
        }
    }
}
