//! Tests of packs: header round trips, limits, damage refused.

use super::*;
use crate::frame::Frame;

fn frame(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

/// A pack (frames, index, trailer) of `groups`, each a frame of chunks.
fn pack_of(groups: &[Vec<Vec<u8>>]) -> (Vec<u8>, PackBuilder) {
    let mut b = PackBuilder::default();
    let mut bytes = Vec::new();
    for g in groups {
        let f = frame(&g.concat());
        let chunks: Vec<(ChunkId, u32)> =
            g.iter().map(|c| (ChunkId::of(c), c.len() as u32)).collect();
        b.add_frame(f.len() as u32, &chunks);
        bytes.extend_from_slice(&f);
    }
    bytes.extend_from_slice(&b.header());
    (bytes, b)
}

fn parse(bytes: &[u8]) -> Result<Vec<PackEntry>> {
    let t = parse_trailer(bytes, bytes.len() as u64)?;
    let start = usize::try_from(t.index_offset)
        .ok()
        .filter(|&s| s <= bytes.len() - TRAILER_LEN)
        .ok_or_else(|| Error::Corrupt {
            what: "test".into(),
            why: "index offset".into(),
        })?;
    parse_index(&bytes[start..bytes.len() - TRAILER_LEN], &t)
}

#[test]
fn header_round_trip_and_checks() {
    let groups: Vec<Vec<Vec<u8>>> = vec![
        (0..3u8).map(|i| vec![i; 1000 + i as usize]).collect(),
        vec![vec![9u8; 5000]],
        vec![vec![7u8; 10], vec![], vec![8u8; 20]],
    ];
    let (bytes, b) = pack_of(&groups);
    let t = parse_trailer(&bytes, bytes.len() as u64).unwrap();
    assert_eq!((t.count, t.frames, t.index_offset), (7, 3, b.frames_len()));
    let entries = parse(&bytes).unwrap();
    assert_eq!(entries, b.entries());
    let pack = BlobDigest::of(b"x");
    let chunks: Vec<&Vec<u8>> = groups.iter().flatten().collect();
    for (e, c) in entries.iter().zip(&chunks) {
        let f = &bytes[e.offset as usize..][..e.clen as usize];
        let raw = decompress_frame(f, e.frame_rlen, &e.id, &pack).unwrap();
        assert_eq!(chunk_in_frame(&raw, &e.id, &e.loc(pack)).unwrap(), &c[..]);
    }
    assert_eq!(entries[4].frame_rlen, 30);
    assert_eq!((entries[6].at, entries[6].rlen), (10, 20));
    // A flipped byte anywhere in the trailer is refused.
    for i in bytes.len() - TRAILER_LEN..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x40;
        assert!(parse(&bad).is_err(), "flip at {i} accepted");
    }
    // An entry pointing elsewhere, or claiming another place in its
    // frame, is refused. (The raw length of a frame's last chunk is
    // checked when the frame is decompressed, not here.)
    let idx = t.index_offset as usize;
    for field in [32, 40, 44, 48, 52] {
        for entry in [0, 1, 3, 6] {
            if field == 44 && (entry == 3 || entry == 6) {
                continue;
            }
            let mut bad = bytes.clone();
            bad[idx + entry * ENTRY_LEN + field] ^= 1;
            assert!(
                parse(&bad).is_err(),
                "entry {entry} field {field} changed and accepted"
            );
        }
    }
}

#[test]
fn a_frame_over_the_raw_limit_is_refused() {
    let mut b = PackBuilder::default();
    let id = ChunkId::of(b"a");
    b.add_frame(10, &[(id, MAX_CHUNK), (id, 1)]);
    let mut bytes = vec![0u8; 10];
    bytes.extend_from_slice(&b.header());
    let e = parse(&bytes).unwrap_err().to_string();
    assert!(e.contains("over the limit"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    /// Fuzz stand-in (fuzz/fuzz_targets/pack_header.rs): a pack tail with
    /// overwritten bytes parses or is refused, never panics, and whatever
    /// parses is self-consistent.
    #[test]
    fn mutated_pack_headers_never_panic(
        sizes in proptest::collection::vec(proptest::collection::vec(0usize..300, 1..4), 0..5),
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
        claimed_len in proptest::option::of(proptest::prelude::any::<u64>()),
    ) {
        let groups: Vec<Vec<Vec<u8>>> = sizes
            .iter()
            .enumerate()
            .map(|(i, g)| g.iter().map(|&n| vec![i as u8; n]).collect())
            .collect();
        let (mut bytes, _) = pack_of(&groups);
        let len = bytes.len();
        for (at, v) in edits {
            bytes[at % len] = v;
        }
        let pack_len = claimed_len.unwrap_or(len as u64);
        if let Ok(t) = parse_trailer(&bytes, pack_len) {
            let start = usize::try_from(t.index_offset).ok().filter(|&s| s <= len - TRAILER_LEN);
            if let (Some(start), true) = (start, pack_len == len as u64) {
                if let Ok(entries) = parse_index(&bytes[start..len - TRAILER_LEN], &t) {
                    check_layout(&entries, &t)?;
                }
            }
        }
    }
}

/// What a parsed index promises: frames contiguous from 0, chunks
/// contiguous inside each frame, frame lengths consistent.
fn check_layout(
    entries: &[PackEntry],
    t: &Trailer,
) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
    let (mut next, mut frames) = (0u64, 0u32);
    let mut prev: Option<&PackEntry> = None;
    for e in entries {
        match prev {
            Some(p) if p.offset == e.offset => {
                proptest::prop_assert_eq!(e.at, p.at + p.rlen);
                proptest::prop_assert_eq!(e.frame_rlen, p.frame_rlen);
            }
            _ => {
                proptest::prop_assert_eq!((e.offset, e.at), (next, 0));
                next += u64::from(e.clen);
                frames += 1;
            }
        }
        proptest::prop_assert!(e.at + e.rlen <= e.frame_rlen);
        proptest::prop_assert!(e.loc(BlobDigest::of(b"p")).check().is_ok());
        prev = Some(e);
    }
    proptest::prop_assert_eq!(next, t.index_offset);
    proptest::prop_assert_eq!(frames, t.frames);
    Ok(())
}

/// The trailer of `bytes` with `count`, `frames` and the reserved word
/// overwritten (`None` keeps the field).
fn with_trailer(bytes: &[u8], count: Option<u32>, frames: Option<u32>, reserved: u32) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let t = out.len() - TRAILER_LEN;
    if let Some(c) = count {
        out[t + 12..t + 16].copy_from_slice(&c.to_le_bytes());
    }
    if let Some(f) = frames {
        out[t + 24..t + 28].copy_from_slice(&f.to_le_bytes());
    }
    out[t + 28..t + 32].copy_from_slice(&reserved.to_le_bytes());
    out
}

/// A pack whose frames each hold one chunk (the common case for big
/// chunks) and a pack of one chunk parse; so does an empty pack.
#[test]
fn packs_of_one_chunk_per_frame_parse() {
    let one: Vec<Vec<Vec<u8>>> = vec![vec![vec![1u8; 100]]];
    let three: Vec<Vec<Vec<u8>>> = (0..3u8).map(|i| vec![vec![i; 50 + i as usize]]).collect();
    for groups in [one, three] {
        let (bytes, b) = pack_of(&groups);
        let t = parse_trailer(&bytes, bytes.len() as u64).unwrap();
        assert_eq!(
            (t.count, t.frames),
            (groups.len() as u32, groups.len() as u32)
        );
        assert_eq!(parse(&bytes).unwrap(), b.entries());
    }
    let (empty, _) = pack_of(&[]);
    assert_eq!(empty.len(), TRAILER_LEN);
    let t = parse_trailer(&empty, TRAILER_LEN as u64).unwrap();
    assert_eq!((t.count, t.frames, t.index_offset), (0, 0, 0));
    assert!(parse(&empty).unwrap().is_empty());
}

/// `stats` reads trailers alone: a trailer that claims more frames
/// than entries, frames without entries (or the reverse), or a nonzero
/// reserved word is refused by `parse_trailer` itself.
#[test]
fn parse_trailer_alone_refuses_impossible_counts() {
    let groups: Vec<Vec<Vec<u8>>> = vec![vec![vec![1u8; 10], vec![2u8; 20]], vec![vec![3u8; 30]]];
    let (bytes, _) = pack_of(&groups);
    let len = bytes.len() as u64;
    let trailer = |b: &[u8]| parse_trailer(&b[b.len() - TRAILER_LEN..], len);
    assert_eq!(trailer(&bytes).unwrap().frames, 2);
    assert!(trailer(&with_trailer(&bytes, None, Some(3), 0)).is_ok());
    for bad in [
        with_trailer(&bytes, None, Some(4), 0),
        with_trailer(&bytes, None, Some(0), 0),
        with_trailer(&bytes, None, None, 1),
    ] {
        let e = trailer(&bad).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    }
    // No entries (the index offset moved so the length still fits)
    // but a frame.
    let mut empty = pack_of(&[]).0;
    assert!(parse_trailer(&empty, TRAILER_LEN as u64).is_ok());
    empty = with_trailer(&empty, None, Some(1), 0);
    assert!(parse_trailer(&empty, TRAILER_LEN as u64).is_err());
    // Too short for a trailer, by the tail or by the pack's length.
    assert!(parse_trailer(&bytes[..TRAILER_LEN - 1], len).is_err());
    assert!(parse_trailer(&bytes, TRAILER_LEN as u64 - 1).is_err());
}

fn loc(clen: u32, frame_rlen: u32, at: u32, rlen: u32) -> ChunkLoc {
    ChunkLoc {
        pack: BlobDigest::of(b"p"),
        offset: 0,
        clen,
        frame_rlen,
        at,
        rlen,
    }
}

/// A chunk location is all that stands between a damaged metadata blob
/// and a huge allocation: lengths up to the limits pass, one past them
/// (or an empty frame) does not.
#[test]
fn chunk_locations_within_the_limits_and_no_further() {
    // The largest frame accepted compressed is what zstd may make of the
    // largest raw frame at worst (incompressible input).
    let bound = zstd::zstd_safe::compress_bound(MAX_FRAME_RAW as usize);
    assert!(MAX_FRAME as usize >= bound, "{MAX_FRAME} < {bound}");
    // And not much more: a claim of 17 MiB is corrupt, not allocated.
    assert!(loc(17 << 20, 16 << 20, 0, 1).check().is_err());
    for ok in [
        loc(1, 0, 0, 0),
        loc(MAX_FRAME, MAX_FRAME_RAW, 0, MAX_CHUNK),
        loc(10, 100, 40, 60),
        loc(10, 100, 100, 0),
    ] {
        assert_eq!(ok.check(), Ok(()), "{ok:?}");
        check_loc(&ChunkId::of(b"x"), &ok).unwrap();
    }
    for bad in [
        loc(0, 100, 0, 100),
        loc(MAX_FRAME + 1, 100, 0, 100),
        loc(10, MAX_FRAME_RAW + 1, 0, 100),
        loc(10, 100, 40, 61),
        loc(10, 100, 101, 0),
        loc(10, 100, u32::MAX, 1),
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
        let e = check_loc(&ChunkId::of(b"x"), &bad).unwrap_err();
        assert!(matches!(e, Error::CorruptChunk { .. }), "{e}");
    }
    // Refused before anything is read or allocated.
    let file = crate::blobs::MemBlobs::new();
    let id = ChunkId::of(b"x");
    for bad in [loc(0, 10, 0, 10), loc(u32::MAX, 10, 0, 10)] {
        assert!(matches!(
            crate::frame::Frame::read(&file, &id, &bad),
            Err(Error::CorruptChunk { .. })
        ));
    }
}

/// A pack index of `entries` (id, offset, clen, rlen, at) and the
/// trailer that fits it.
fn raw_index(entries: &[(u64, u32, u32, u32)], frames: u32) -> (Vec<u8>, Trailer) {
    let mut out = Vec::new();
    for (i, &(offset, clen, rlen, at)) in entries.iter().enumerate() {
        out.extend_from_slice(ChunkId::of(&[i as u8]).as_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&clen.to_le_bytes());
        out.extend_from_slice(&rlen.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
    let end = entries
        .iter()
        .map(|e| e.0 + u64::from(e.1))
        .max()
        .unwrap_or(0);
    let t = Trailer {
        count: entries.len() as u32,
        frames,
        index_offset: end,
    };
    (out, t)
}

/// The index checks lengths the same way: frames of up to the limits
/// parse, an empty or oversized frame or chunk does not.
#[test]
fn index_entries_within_the_limits_and_no_further() {
    let ok = |entries: &[(u64, u32, u32, u32)], frames| {
        let (index, t) = raw_index(entries, frames);
        parse_index(&index, &t)
    };
    let e = ok(&[(0, MAX_FRAME, MAX_CHUNK, 0)], 1).unwrap();
    assert_eq!(e[0].frame_rlen, MAX_FRAME_RAW);
    let e = ok(&[(0, 5, MAX_CHUNK - 1, 0), (0, 5, 1, MAX_CHUNK - 1)], 1).unwrap();
    assert_eq!(e[1].frame_rlen, MAX_FRAME_RAW);
    assert!(ok(&[(0, 5, 0, 0)], 1).is_ok());
    for bad in [
        &[(0, 0, 10, 0)][..],
        &[(0, MAX_FRAME + 1, 10, 0)],
        &[(0, 10, MAX_CHUNK + 1, 0)],
        &[(0, 10, 10, 0), (0, 0, 10, 10)],
        &[(0, 5, MAX_CHUNK, 0), (0, 5, 1, MAX_CHUNK)],
    ] {
        assert!(ok(bad, 1).is_err(), "{bad:?}");
    }
    // The trailer's frame count must match the index's.
    assert!(ok(&[(0, 5, 1, 0), (5, 5, 1, 0)], 2).is_ok());
    assert!(ok(&[(0, 5, 1, 0), (5, 5, 1, 0)], 1).is_err());
    assert!(ok(&[(0, 5, 1, 0), (0, 5, 1, 1)], 2).is_err());
}

/// A pack that is not there is `BlobMissing` (gc and verify report it
/// as such); a pack that cannot be opened for another reason is an I/O
/// error naming its path.
#[test]
fn missing_pack_and_unreadable_pack_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_or_create(
        dir.path(),
        &crate::StoreConfig::new(puzzle_chunker::ChunkParams::default(), 3),
    )
    .unwrap();
    let data = b"some chunk".to_vec();
    let id = ChunkId::of(&data);
    let f = frame(&data);
    let mut w = PackWriter::new(&store).unwrap();
    w.append_frame(&f, &[(id, data.len() as u32)]).unwrap();
    assert_eq!(w.frames_len(), f.len() as u64);
    let info = w.finish(&store).unwrap();
    let loc = info.entries[0].loc(info.digest);
    let blobs = store.blob_reader();
    let fr = Frame::read(&blobs, &id, &loc).unwrap();
    assert_eq!(fr.chunk(&id, &loc).unwrap(), &data[..]);

    let missing = ChunkLoc {
        pack: BlobDigest::of(b"no such pack"),
        ..loc
    };
    let e = Frame::read(&blobs, &id, &missing).unwrap_err();
    assert!(matches!(e, Error::BlobMissing { .. }), "{e}");

    // A symlink loop where the pack should be: there, but unreadable.
    let looped = ChunkLoc {
        pack: BlobDigest::of(b"looped"),
        ..loc
    };
    let path = store.blob_path(&looped.pack);
    std::os::unix::fs::symlink(&path, &path).unwrap();
    let e = Frame::read(&blobs, &id, &looped).unwrap_err();
    match e {
        Error::Io { path: p, .. } => assert_eq!(p, path),
        e => panic!("want an I/O error, got {e}"),
    }
}

#[test]
fn corrupt_frame_is_an_error_not_wrong_bytes() {
    let data = vec![7u8; 5000];
    let id = ChunkId::of(&data);
    let pack = BlobDigest::of(b"p");
    let mut f = frame(&data);
    let last = f.len() - 5;
    f[last] ^= 1;
    let loc = |rlen| ChunkLoc {
        pack,
        offset: 0,
        clen: 1,
        frame_rlen: 5000,
        at: 0,
        rlen,
    };
    let read = |f: &[u8], id: &ChunkId, rlen| -> Result<Vec<u8>> {
        let raw = decompress_frame(f, 5000, id, &pack)?;
        Ok(chunk_in_frame(&raw, id, &loc(rlen))?.to_vec())
    };
    assert!(read(&f, &id, 5000).is_err());
    let other = ChunkId::of(b"other");
    assert!(matches!(
        read(&frame(&data), &other, 5000),
        Err(Error::CorruptChunk { .. })
    ));
    assert!(read(&frame(&data), &id, 4999).is_err());
    assert!(decompress_frame(&frame(&data), 4999, &id, &pack).is_err());
    assert!(decompress_frame(&frame(&data), 5001, &id, &pack).is_err());
    let raw = decompress_frame(&frame(&data), 5000, &id, &pack).unwrap();
    let outside = ChunkLoc {
        at: 4000,
        ..loc(2000)
    };
    assert!(chunk_in_frame(&raw, &id, &outside).is_err());
    assert!(outside.check().is_err());
}

/// What index rebuilds and verify read from disk: a pack file's index, as
/// written; an empty pack's is empty; a file too short for a trailer, or
/// whose trailer points outside it, is refused.
#[test]
fn read_pack_index_reads_what_was_written() {
    use std::io::Write;
    let groups: Vec<Vec<Vec<u8>>> = vec![vec![vec![1u8; 10], vec![2u8; 20]], vec![vec![3u8; 30]]];
    let (bytes, b) = pack_of(&groups);
    let file_of = |bytes: &[u8]| {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    };
    let len = bytes.len() as u64;
    assert_eq!(read_pack_index(&file_of(&bytes), len).unwrap(), b.entries());
    let (empty, _) = pack_of(&[]);
    assert_eq!(
        read_pack_index(&file_of(&empty), TRAILER_LEN as u64).unwrap(),
        vec![]
    );
    assert!(read_pack_index(&file_of(&empty[1..]), TRAILER_LEN as u64 - 1).is_err());
    // The file is shorter than the length it is said to have.
    assert!(read_pack_index(&file_of(&bytes[..bytes.len() - 1]), len).is_err());
    // Another pack's bytes at the end: its trailer does not fit this length.
    let longer = [&bytes[..], &bytes[..]].concat();
    assert!(read_pack_index(&file_of(&longer), 2 * len).is_err());
}

/// `decompress_frame` takes frames up to the raw limit, not one byte more.
#[test]
fn decompress_frame_up_to_the_raw_limit() {
    let data = vec![0u8; MAX_FRAME_RAW as usize];
    let f = frame(&data);
    let (id, pack) = (ChunkId::of(b"x"), BlobDigest::of(b"p"));
    assert_eq!(
        decompress_frame(&f, MAX_FRAME_RAW, &id, &pack)
            .unwrap()
            .len(),
        data.len()
    );
    let e = decompress_frame(&f, MAX_FRAME_RAW + 1, &id, &pack).unwrap_err();
    assert!(e.to_string().contains("over the limit"), "{e}");
}
