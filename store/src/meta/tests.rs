//! Tests of the metadata blob: round trips, damage refused, fuzz stand-ins.

use super::*;
use crate::tree::{Extent, FileDigest, Layer, LayerEntry, Meta, Node};

fn loc(id: &ChunkId) -> Result<ChunkLoc> {
    Ok(ChunkLoc {
        pack: BlobDigest::of(&id.as_bytes()[..1]),
        offset: u64::from(id.as_bytes()[1]),
        clen: 10,
        frame_rlen: 300,
        at: u32::from(id.as_bytes()[2] % 3) * 100,
        rlen: 100,
    })
}

fn sample() -> Tree {
    let c1 = ChunkId::of(b"one");
    let c2 = ChunkId::of(b"two");
    let mut entries = vec![
        LayerEntry::Node {
            path: b"bin".to_vec(),
            node: Node::Dir,
            meta: Meta {
                mode: 0o755,
                mtime: 1_700_000_000,
                ..Meta::default()
            },
        },
        LayerEntry::Node {
            path: b"bin/sh".to_vec(),
            node: Node::File {
                size: 150,
                extents: vec![
                    Extent {
                        chunk: c1,
                        offset: 0,
                        len: 100,
                    },
                    Extent {
                        chunk: c2,
                        offset: 0,
                        len: 50,
                    },
                ],
                digest: FileDigest::of(b"sh contents"),
            },
            meta: Meta {
                mode: 0o4755,
                uid: 1000,
                gid: 100,
                mtime: -5,
                mtime_nsec: 123,
                xattrs: vec![
                    (b"user.a".to_vec(), b"1".to_vec()),
                    (b"user.b".to_vec(), vec![0, 255]),
                ],
            },
        },
        LayerEntry::Node {
            path: b"dev/null".to_vec(),
            node: Node::CharDev { major: 1, minor: 3 },
            meta: Meta::default(),
        },
        LayerEntry::Node {
            path: b"link".to_vec(),
            node: Node::Symlink(b"bin/sh".to_vec()),
            meta: Meta::default(),
        },
        LayerEntry::HardLink {
            path: b"bin/bash".to_vec(),
            target: b"bin/sh".to_vec(),
        },
        LayerEntry::Node {
            path: b"empty".to_vec(),
            node: Node::File {
                size: 0,
                extents: vec![],
                digest: FileDigest::of(b""),
            },
            meta: Meta::default(),
        },
    ];
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    let mut t = Tree::new();
    t.apply(&Layer {
        entries,
        ..Layer::default()
    })
    .unwrap();
    t
}

#[test]
fn encode_and_read_back() {
    let source = SourceInfo {
        config: "sha256:x".into(),
        ..SourceInfo::default()
    };
    let bytes = encode(&sample(), &source, loc).unwrap();
    assert_eq!(
        bytes,
        encode(&sample(), &source, loc).unwrap(),
        "deterministic"
    );
    let m = MetaBlob::open(&bytes[..]).unwrap();
    assert_eq!(m.source().unwrap(), source);
    let root = m.root().unwrap();
    assert_eq!(root.count(), 4); // bin, dev, empty, link
    assert_eq!(root.nlink, 4); // 2 + bin + dev
    let bin = m.inode(m.lookup(&root, b"bin").unwrap().unwrap()).unwrap();
    assert_eq!(
        (bin.kind, bin.mode, bin.mtime),
        (Kind::Dir, 0o755, 1_700_000_000)
    );
    let sh = m.lookup(&bin, b"sh").unwrap().unwrap();
    assert_eq!(
        m.lookup(&bin, b"bash").unwrap(),
        Some(sh),
        "hard link shares the inode"
    );
    assert_eq!(m.lookup(&bin, b"zsh").unwrap(), None);
    let sh = m.inode(sh).unwrap();
    assert_eq!(
        (sh.mode, sh.uid, sh.gid, sh.nlink, sh.size),
        (0o4755, 1000, 100, 2, 150)
    );
    assert_eq!((sh.mtime, sh.mtime_nsec), (-5, 123));
    assert_eq!(
        m.xattrs(&sh).unwrap(),
        vec![
            (&b"user.a"[..], &b"1"[..]),
            (&b"user.b"[..], &[0u8, 255][..])
        ]
    );
    assert_eq!(m.find_extent(&sh, 0).unwrap(), Some(0));
    assert_eq!(m.find_extent(&sh, 99).unwrap(), Some(0));
    assert_eq!(m.find_extent(&sh, 100).unwrap(), Some(1));
    assert_eq!(m.find_extent(&sh, 150).unwrap(), None);
    let e = m.extent(&sh, 1).unwrap();
    assert_eq!((e.file_offset, e.len), (100, 50));
    assert_eq!(m.chunk(e.chunk).unwrap().id, ChunkId::of(b"two"));
    let dev = m.lookup(&root, b"dev").unwrap().unwrap();
    let dev = m.inode(dev).unwrap();
    let null = m.inode(m.lookup(&dev, b"null").unwrap().unwrap()).unwrap();
    assert_eq!((null.kind, null.rdev()), (Kind::CharDev, (1, 3)));
    let link = m.inode(m.lookup(&root, b"link").unwrap().unwrap()).unwrap();
    assert_eq!(m.symlink_target(&link).unwrap(), b"bin/sh");
    assert_eq!(m.chunk_count(), 2);
    // File digests: one per file inode, shared by hard links; none for others.
    assert_eq!(m.file_digest(&sh).unwrap(), FileDigest::of(b"sh contents"));
    let empty = m
        .inode(m.lookup(&root, b"empty").unwrap().unwrap())
        .unwrap();
    assert_eq!(m.file_digest(&empty).unwrap(), FileDigest::of(b""));
    assert!(m.file_digest(&link).is_err());
    assert!(m.file_digest(&bin).is_err());
}

#[test]
fn digests_section_layout() {
    let bytes = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    let sec = |i: usize| {
        let off = u64_at(&bytes, 16 + i * 16) as usize;
        let len = u64_at(&bytes, 24 + i * 16) as usize;
        (off, len)
    };
    // Nine sections; digests last, one 32-byte record per inode, zeros
    // for everything but regular files.
    assert_eq!(HEADER_LEN, 160);
    let (off, len) = sec(S_DIGESTS);
    assert_eq!(len as u64, 32 * m.inode_count());
    assert_eq!(off % 8, 0);
    for ino in 0..m.inode_count() as u32 {
        let rec = &bytes[off + 32 * ino as usize..][..32];
        let i = m.inode(ino).unwrap();
        if i.kind == Kind::File {
            assert_eq!(rec, m.file_digest(&i).unwrap().as_bytes());
            assert_ne!(rec, &[0u8; 32][..]);
        } else {
            assert_eq!(rec, &[0u8; 32][..], "inode {ino} ({:?})", i.kind);
        }
    }
    // A digests section that does not match the inode count is refused.
    let mut short = bytes.clone();
    short[24 + S_DIGESTS * 16..32 + S_DIGESTS * 16]
        .copy_from_slice(&(len as u64 - 32).to_le_bytes());
    assert!(MetaBlob::open(&short[..]).is_err());
}

#[test]
fn damaged_blobs_give_errors_not_panics() {
    let bytes = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    // Truncations and single-byte flips anywhere: open and walk must not panic.
    for cut in [
        0,
        8,
        HEADER_LEN - 1,
        HEADER_LEN,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let _ = MetaBlob::open(&bytes[..cut]).map(|m| walk(&m));
    }
    for i in 0..bytes.len() {
        for bit in [0x01, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            if let Ok(m) = MetaBlob::open(&b[..]) {
                let _ = walk(&m);
                let _ = m.check();
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
    /// Fuzz stand-in (fuzz/fuzz_targets/meta_blob.rs): any overwritten
    /// bytes and any truncation of a valid blob: open, check, walk and
    /// relocate return errors, never panic.
    #[test]
    fn mutated_blobs_never_panic(
        edits in proptest::collection::vec((0usize..1 << 16, proptest::prelude::any::<u8>()), 1..8),
        cut in proptest::option::of(0usize..1 << 16),
    ) {
        let mut b = encode(&sample(), &SourceInfo::default(), loc).unwrap();
        for (at, v) in edits {
            let i = at % b.len();
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        if let Ok(m) = MetaBlob::open(&b[..]) {
            let _ = walk(&m);
            if m.check().is_ok() {
                // A blob that checks out can be walked and relocated.
                walk(&m).unwrap();
                m.relocate(|r| Ok(r.loc)).unwrap();
            }
        }
    }

    /// Fuzz stand-in (fuzz/fuzz_targets/meta_stored.rs): a stored blob
    /// with overwritten bytes or cut short decompresses to an error or
    /// to at most the limit, never panics.
    #[test]
    fn mutated_stored_blobs_never_panic(
        edits in proptest::collection::vec((0usize..1 << 16, proptest::prelude::any::<u8>()), 1..8),
        cut in proptest::option::of(0usize..1 << 16),
    ) {
        let mut b = compress(&encode(&sample(), &SourceInfo::default(), loc).unwrap());
        for (at, v) in edits {
            let i = at % b.len();
            b[i] = v;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        if let Ok(raw) = decompress(&b, 1 << 20) {
            proptest::prop_assert!(raw.len() <= 1 << 20);
            if let Ok(m) = MetaBlob::open(&raw[..]) {
                let _ = walk(&m);
            }
        }
    }
}

#[test]
fn stored_blob_round_trips_and_is_refused_past_the_limit() {
    let raw = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    let stored = compress(&raw);
    assert!(stored.len() < raw.len());
    assert_eq!(decompress(&stored, raw.len() as u64).unwrap(), raw);
    assert!(decompress(&stored, raw.len() as u64 - 1).is_err());
    assert!(decompress(&raw, 1 << 20).is_err(), "not a zstd frame");
    let two = [&stored[..], &stored[..]].concat();
    assert!(decompress(&two, 1 << 20).is_err(), "two frames");
    // A skippable frame after it decompresses to nothing more, and is
    // still not the format.
    let skippable = [
        &stored[..],
        &[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4],
    ]
    .concat();
    assert!(decompress(&skippable, 1 << 20).is_err(), "skippable frame");
    assert!(
        decompress(&stored[..stored.len() - 1], 1 << 20).is_err(),
        "cut short"
    );
    let no_size = zstd::stream::encode_all(&raw[..], 1).unwrap();
    assert!(decompress(&no_size, 1 << 20).is_err(), "no content size");
}

#[test]
fn relocate_moves_chunks_and_keeps_the_tree() {
    let bytes = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    m.check().unwrap();
    let moved = BlobDigest::of(b"new pack");
    let out = m
        .relocate(|r| {
            Ok(ChunkLoc {
                pack: moved,
                offset: r.loc.offset + 1000,
                ..r.loc
            })
        })
        .unwrap();
    let m2 = MetaBlob::open(&out[..]).unwrap();
    m2.check().unwrap();
    assert_eq!(m2.packs().unwrap(), vec![moved]);
    assert_eq!(m2.chunk_count(), m.chunk_count());
    for i in 0..m.chunk_count() as u32 {
        let (a, b) = (m.chunk(i).unwrap(), m2.chunk(i).unwrap());
        assert_eq!((a.id, a.loc.offset + 1000), (b.id, b.loc.offset));
    }
    assert_eq!(m2.inode_count(), m.inode_count());
    // Relocating to where chunks already are gives the same bytes.
    assert_eq!(m.relocate(|r| Ok(r.loc)).unwrap(), bytes);
}

fn walk(m: &MetaBlob<&[u8]>) -> Result<()> {
    let mut stack = vec![(m.root()?, 0)];
    while let Some((ino, depth)) = stack.pop() {
        if depth > 64 {
            break;
        }
        let _ = m.xattrs(&ino)?;
        match ino.kind {
            Kind::Dir => {
                for i in 0..ino.count() {
                    let (_, c) = m.dirent(&ino, i)?;
                    stack.push((m.inode(c)?, depth + 1));
                }
            }
            Kind::File => {
                for i in 0..ino.count() {
                    let e = m.extent(&ino, i)?;
                    m.chunk(e.chunk)?;
                }
                let _ = m.find_extent(&ino, ino.size / 2)?;
                m.file_digest(&ino)?;
            }
            Kind::Symlink => {
                m.symlink_target(&ino)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// (offset, length) of section `s` of an encoded blob.
fn sec(bytes: &[u8], s: usize) -> (usize, usize) {
    (
        u64_at(bytes, 16 + s * 16) as usize,
        u64_at(bytes, 24 + s * 16) as usize,
    )
}

/// `bytes` with `new` written at byte `at` of record `i` of section `s`.
fn patch(bytes: &[u8], s: usize, i: u64, at: usize, new: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let start = sec(bytes, s).0 + i as usize * REC[s] + at;
    out[start..start + new.len()].copy_from_slice(new);
    out
}

/// `bytes` with section `s`'s header entry set to (`off`, `len`).
fn with_section(bytes: &[u8], s: usize, off: u64, len: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[16 + s * 16..24 + s * 16].copy_from_slice(&off.to_le_bytes());
    out[24 + s * 16..32 + s * 16].copy_from_slice(&len.to_le_bytes());
    out
}

/// Each kind of damage `check` looks for, one at a time, in a blob that
/// still opens: `check` refuses it (mount and extract trust what passed).
#[test]
fn check_refuses_each_kind_of_damage() {
    let bytes = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    m.check().unwrap();
    let root = m.root().unwrap();
    let ino = |dir: &InodeRec, name: &[u8]| m.inode(m.lookup(dir, name).unwrap().unwrap()).unwrap();
    let bin = ino(&root, b"bin");
    let sh = ino(&bin, b"sh");
    let link = ino(&root, b"link");
    // Root's first entry is "bin": its name in the string table.
    let first = sec(&bytes, S_DIRENTS).0 + root.a as usize * REC[S_DIRENTS];
    let name_at = u64_at(&bytes, first);
    let strings = |name: &[u8]| {
        let mut b = patch(
            &bytes,
            S_DIRENTS,
            root.a,
            8,
            &(name.len() as u32).to_le_bytes(),
        );
        let at = sec(&bytes, S_STRINGS).0 + name_at as usize;
        b[at..at + name.len()].copy_from_slice(name);
        b
    };
    let u32b = |v: u32| v.to_le_bytes().to_vec();
    let u64b = |v: u64| v.to_le_bytes().to_vec();
    let mut swapped = bytes.clone();
    let r = REC[S_DIRENTS];
    let (a, b) = swapped[first..first + 2 * r].split_at_mut(r);
    a.swap_with_slice(b);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty name", strings(b"")),
        ("name .", strings(b".")),
        ("name ..", strings(b"..")),
        ("name with /", strings(b"b/n")),
        ("name with NUL", strings(b"b\0n")),
        ("entries not sorted", swapped),
        (
            "entry names the root",
            patch(&bytes, S_DIRENTS, root.a, 12, &u32b(0)),
        ),
        (
            "entry past the inodes",
            patch(&bytes, S_DIRENTS, root.a, 12, &u32b(m.inode_count() as u32)),
        ),
        (
            "extent not where the last ended",
            patch(&bytes, S_EXTENTS, sh.a + 1, 0, &u64b(101)),
        ),
        (
            "extent names no chunk",
            patch(&bytes, S_EXTENTS, sh.a + 1, 8, &u32b(2)),
        ),
        (
            "extent overruns its chunk",
            patch(&bytes, S_EXTENTS, sh.a, 12, &u32b(1)),
        ),
        (
            "extents short of the size",
            patch(&bytes, S_INODES, u64::from(sh.ino), 32, &u64b(151)),
        ),
        (
            "extents past the size",
            patch(&bytes, S_INODES, u64::from(sh.ino), 32, &u64b(149)),
        ),
        (
            "symlink target outside",
            patch(&bytes, S_INODES, u64::from(link.ino), 40, &u64b(1 << 40)),
        ),
        (
            "xattr outside",
            patch(&bytes, S_XATTRS, sh.xattr_first, 16, &u32b(1 << 20)),
        ),
        (
            "chunk names no pack",
            patch(&bytes, S_CHUNKS, 0, 32, &u32b(m.pack_count() as u32)),
        ),
        (
            "chunk in an empty frame",
            patch(&bytes, S_CHUNKS, 1, 48, &u32b(0)),
        ),
        (
            "chunk in an oversized frame",
            patch(&bytes, S_CHUNKS, 1, 48, &u32b(crate::pack::MAX_FRAME + 1)),
        ),
        ("source not JSON", patch(&bytes, S_SOURCE, 0, 0, b"x")),
    ];
    for (what, b) in cases {
        let m = MetaBlob::open(&b[..]).unwrap_or_else(|e| panic!("{what}: {e}"));
        let e = m.check().expect_err(what);
        assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e}");
    }
}

/// `open` refuses a header it cannot trust, and accepts sections placed
/// anywhere inside the blob.
#[test]
fn open_refuses_bad_headers() {
    let bytes = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    let len = bytes.len() as u64;
    let (ioff, _) = sec(&bytes, S_INODES);
    let (doff, _) = sec(&bytes, S_DIGESTS);
    let (coff, clen) = sec(&bytes, S_CHUNKS);
    let mut magic = bytes.clone();
    magic[0] ^= 1;
    let mut version = bytes.clone();
    version[8..12].copy_from_slice(&(META_VERSION + 1).to_le_bytes());
    let mut root_file = bytes.clone();
    root_file[ioff] = Kind::File as u8;
    let mut root_kind = bytes.clone();
    root_kind[ioff] = 7;
    let no_inodes = with_section(
        &with_section(&bytes, S_INODES, ioff as u64, 0),
        S_DIGESTS,
        doff as u64,
        0,
    );
    for (what, b) in [
        ("short", bytes[..HEADER_LEN - 1].to_vec()),
        ("magic", magic),
        ("version", version),
        (
            "inside the header",
            with_section(&bytes, S_SOURCE, HEADER_LEN as u64 - 8, 8),
        ),
        ("past the end", with_section(&bytes, S_STRINGS, len - 7, 8)),
        (
            "overflowing",
            with_section(&bytes, S_STRINGS, 8 << 60, 8 << 60),
        ),
        (
            "part of a record",
            with_section(&bytes, S_CHUNKS, coff as u64, clen as u64 - 1),
        ),
        ("root a file", root_file),
        ("root of no kind", root_kind),
        ("no inodes", no_inodes),
    ] {
        assert!(MetaBlob::open(&b[..]).is_err(), "{what}");
    }
    // A section may end exactly at the end of the blob, or be empty there.
    let at_end = with_section(&bytes, S_STRINGS, len - 8, 8);
    let m = MetaBlob::open(&at_end[..]).unwrap();
    assert_eq!(m.section(S_STRINGS).len(), 8);
    assert!(MetaBlob::open(&with_section(&bytes, S_XATTRS, len, 0)[..]).is_ok());
}

/// Every accessor refuses an index past its table, or a record of the
/// wrong kind, instead of reading another record's bytes.
#[test]
fn accessors_refuse_what_is_not_there() {
    let bytes = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    let root = m.root().unwrap();
    let bin = m.inode(m.lookup(&root, b"bin").unwrap().unwrap()).unwrap();
    let sh = m.inode(m.lookup(&bin, b"sh").unwrap().unwrap()).unwrap();
    let link = m.inode(m.lookup(&root, b"link").unwrap().unwrap()).unwrap();
    assert_eq!(m.inode_count(), 7);
    assert!(m.inode(6).is_ok());
    assert!(m.inode(7).is_err());
    assert!(m.chunk(1).is_ok());
    assert!(m.chunk(2).is_err());
    assert_eq!(m.pack_count(), m.packs().unwrap().len() as u64);
    assert!(m.pack(m.pack_count() as u32).is_err());
    assert_eq!(m.xattr_total(), 2);
    assert_eq!(sh.xattr_count(), 2);
    assert_eq!(root.xattr_count(), 0);
    assert!(m.dirent(&root, root.count() - 1).is_ok());
    assert!(m.dirent(&root, root.count()).is_err());
    assert!(m.dirent(&sh, 0).is_err(), "a file has no entries");
    assert!(m.extent(&sh, 1).is_ok());
    assert!(m.extent(&sh, 2).is_err());
    assert!(m.extent(&bin, 0).is_err(), "a directory has no extents");
    assert!(m.symlink_target(&sh).is_err());
    assert_eq!((link.count(), link.rdev()), (0, (0, 0)));
    assert_eq!(sh.rdev(), (0, 0));
    // Lookups find every entry of a directory, and nothing between them.
    for (i, name) in [&b"bin"[..], b"dev", b"empty", b"link"].iter().enumerate() {
        let (n, c) = m.dirent(&root, i as u32).unwrap();
        assert_eq!(n, *name);
        assert_eq!(m.lookup(&root, name).unwrap(), Some(c));
    }
    for absent in [&b"a"[..], b"bio", b"c", b"e", b"links", b"z"] {
        assert_eq!(m.lookup(&root, absent).unwrap(), None, "{absent:?}");
    }
    // An extent table with a hole: offsets in it are corrupt, not absent.
    let holed = patch(&bytes, S_EXTENTS, sh.a + 1, 0, &110u64.to_le_bytes());
    let h = MetaBlob::open(&holed[..]).unwrap();
    assert_eq!(h.find_extent(&sh, 99).unwrap(), Some(0));
    assert_eq!(h.find_extent(&sh, 110).unwrap(), Some(1));
    assert!(h.find_extent(&sh, 105).is_err());
    assert_eq!(h.find_extent(&sh, 149).unwrap(), Some(1));
    assert_eq!(h.find_extent(&sh, 150).unwrap(), None);
}

/// In a file of many extents of different lengths each offset maps to the
/// extent holding it; and a directory's entries, even where they share record
/// numbers with a file's extents, are not extents.
#[test]
fn find_extent_in_many_extents() {
    let lens = [1u32, 7, 100, 3, 50, 2, 99, 10, 1];
    let size: u64 = lens.iter().map(|&l| u64::from(l)).sum();
    let extents = lens
        .iter()
        .map(|&len| Extent {
            chunk: ChunkId::of(b"c"),
            offset: 0,
            len,
        })
        .collect();
    let mut t = Tree::new();
    let node = Node::File {
        size,
        extents,
        digest: FileDigest::of(b""),
    };
    let entries = vec![LayerEntry::Node {
        path: b"f".to_vec(),
        node,
        meta: Meta::default(),
    }];
    t.apply(&Layer {
        entries,
        ..Layer::default()
    })
    .unwrap();
    let bytes = encode(&t, &SourceInfo::default(), loc).unwrap();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    let root = m.root().unwrap();
    let f = m.inode(m.lookup(&root, b"f").unwrap().unwrap()).unwrap();
    assert_eq!((root.a, f.a), (0, 0), "both tables start at record 0");
    let mut start = 0;
    for (i, &len) in lens.iter().enumerate() {
        for off in [start, start + u64::from(len) - 1] {
            assert_eq!(m.find_extent(&f, off).unwrap(), Some(i as u32), "{off}");
        }
        start += u64::from(len);
    }
    assert_eq!(m.find_extent(&f, size).unwrap(), None);
    assert!(m.extent(&root, 0).is_err());
}

/// What `encode` writes beyond the sample: link counts of nested
/// directories, device numbers, FIFOs, permission bits without the file
/// type, a chunk used twice stored once, and refusals.
#[test]
fn encode_counts_links_and_shares_chunks() {
    let c = ChunkId::of(b"shared");
    let file = |size: u64| Node::File {
        size,
        extents: vec![Extent {
            chunk: c,
            offset: 0,
            len: size as u32,
        }],
        digest: FileDigest::of(b"f"),
    };
    let node = |path: &[u8], node: Node, mode: u32| LayerEntry::Node {
        path: path.to_vec(),
        node,
        meta: Meta {
            mode,
            ..Meta::default()
        },
    };
    let entries = vec![
        node(b"a", Node::Dir, 0o40755),
        node(b"a/b", Node::Dir, 0o700),
        node(b"a/c", Node::Dir, 0o700),
        node(b"a/f", file(10), 0o100644),
        node(b"a/g", file(10), 0o644),
        node(
            b"blk",
            Node::BlockDev {
                major: 8,
                minor: 1 << 20,
            },
            0o660,
        ),
        node(b"fifo", Node::Fifo, 0o600),
    ];
    // Extended attributes on two inodes: each reads back its own.
    let mut entries = entries;
    for (i, xattrs) in [
        (4, vec![(b"user.g".to_vec(), b"1".to_vec())]),
        (
            5,
            vec![
                (b"trusted.x".to_vec(), vec![]),
                (b"user.blk".to_vec(), b"2".to_vec()),
            ],
        ),
    ] {
        if let LayerEntry::Node { meta, .. } = &mut entries[i] {
            meta.xattrs = xattrs;
        }
    }
    let mut t = Tree::new();
    t.apply(&Layer {
        entries,
        ..Layer::default()
    })
    .unwrap();
    let mut asked = 0;
    let bytes = encode(&t, &SourceInfo::default(), |id| {
        asked += 1;
        loc(id)
    })
    .unwrap();
    assert_eq!(asked, 1, "one chunk, located once");
    let m = MetaBlob::open(&bytes[..]).unwrap();
    m.check().unwrap();
    assert_eq!((m.chunk_count(), m.pack_count()), (1, 1));
    let root = m.root().unwrap();
    let get = |dir: &InodeRec, name: &[u8]| m.inode(m.lookup(dir, name).unwrap().unwrap()).unwrap();
    let a = get(&root, b"a");
    assert_eq!((root.nlink, a.nlink, a.mode), (3, 4, 0o755));
    assert_eq!(get(&a, b"b").nlink, 2);
    let f = get(&a, b"f");
    assert_eq!((f.nlink, f.mode, f.kind), (1, 0o644, Kind::File));
    assert_eq!(
        m.extent(&f, 0).unwrap().chunk,
        m.extent(&get(&a, b"g"), 0).unwrap().chunk
    );
    let blk = get(&root, b"blk");
    assert_eq!(
        (blk.kind, blk.rdev(), blk.count()),
        (Kind::BlockDev, (8, 1 << 20), 0)
    );
    assert_eq!(get(&root, b"fifo").kind, Kind::Fifo);
    assert_eq!(
        m.xattrs(&get(&a, b"g")).unwrap(),
        vec![(&b"user.g"[..], &b"1"[..])]
    );
    assert_eq!(
        m.xattrs(&blk).unwrap(),
        vec![(&b"trusted.x"[..], &b""[..]), (&b"user.blk"[..], &b"2"[..])]
    );
    assert!(m.xattrs(&f).unwrap().is_empty());

    // Extents that do not add up to the size, and a chunk that cannot be
    // located, are errors.
    let mut t = Tree::new();
    t.apply(&Layer {
        entries: vec![LayerEntry::Node {
            path: b"f".to_vec(),
            node: Node::File {
                size: 11,
                extents: vec![Extent {
                    chunk: c,
                    offset: 0,
                    len: 10,
                }],
                digest: FileDigest::of(b"f"),
            },
            meta: Meta::default(),
        }],
        ..Layer::default()
    })
    .unwrap();
    assert!(encode(&t, &SourceInfo::default(), loc).is_err());
    let e = encode(&sample(), &SourceInfo::default(), |id| {
        Err(Error::ChunkNotFound(*id))
    });
    assert!(matches!(e, Err(Error::ChunkNotFound(_))));
}

/// Relocating to packs used in another order numbers them by first use
/// in the chunk table, and a failure to locate a chunk is passed on.
#[test]
fn relocate_numbers_packs_by_first_use() {
    let bytes = encode(&sample(), &SourceInfo::default(), loc).unwrap();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    let (p, q) = (BlobDigest::of(b"p"), BlobDigest::of(b"q"));
    let out = m
        .relocate(|r| {
            let pack = if r.id == ChunkId::of(b"one") { q } else { p };
            Ok(ChunkLoc { pack, ..r.loc })
        })
        .unwrap();
    let m2 = MetaBlob::open(&out[..]).unwrap();
    let first = if m.chunk(0).unwrap().id == ChunkId::of(b"one") {
        q
    } else {
        p
    };
    assert_eq!(m2.pack(0).unwrap(), first);
    assert_eq!(m2.pack_count(), 2);
    let e = m.relocate(|r| Err(Error::ChunkNotFound(r.id)));
    assert!(matches!(e, Err(Error::ChunkNotFound(_))));
}
