//! Tests of traces and prefetch lists: recording, the text form, resolving.

use proptest::prelude::*;

use super::*;
use crate::meta::{encode as encode_meta, SourceInfo};
use crate::pack::ChunkLoc;
use crate::tree::{Extent, FileDigest, Layer, LayerEntry, Meta, Node, Tree};
use puzzle_chunker::ChunkId;

fn entry(path: &str, offset: u64, len: u64) -> TraceEntry {
    TraceEntry {
        path: path.as_bytes().to_vec(),
        offset,
        len,
    }
}

#[test]
fn first_accesses_in_order_each_byte_once_continuations_merged() {
    let mut t = TraceLog::new();
    t.record(5, 0, 4096);
    t.record(5, 4096, 4096); // continues: merged
    t.record(7, 100, 10);
    t.record(5, 0, 8192); // all seen: nothing
    t.record(5, 4000, 6000); // only 8192..10000 is new
    t.record(7, 50, 100); // 50..100 and 110..150 are new
    t.record(7, 150, 0); // empty
    t.record(9, u64::MAX - 1, 5); // clipped at 2^64
    assert_eq!(
        t.ranges(),
        &[
            (5, 0, 8192),
            (7, 100, 10),
            (5, 8192, 1808),
            (7, 50, 50),
            (7, 110, 40),
            (9, u64::MAX - 1, 1),
        ]
    );
}

#[test]
fn text_form_is_documented_shape() {
    let e = vec![
        entry("/usr/lib/os.py", 0, 4096),
        TraceEntry {
            path: b"/a b/%\n\xff".to_vec(),
            offset: 7,
            len: 1,
        },
    ];
    let text = encode(&e);
    assert_eq!(
        String::from_utf8(text.clone()).unwrap(),
        "puzzle-trace v1\n/usr/lib/os.py 0 4096\n/a%20b/%25%0A%FF 7 1\n"
    );
    assert_eq!(parse(&text).unwrap(), e);
}

#[test]
fn parse_skips_comments_and_refuses_bad_lines() {
    let ok = parse(b"puzzle-trace v1\n# note\n\n/x 1 2\n").unwrap();
    assert_eq!(ok, vec![entry("/x", 1, 2)]);
    for (bad, line) in [
        (&b"puzzle-trace v2\n/x 1 2\n"[..], "line 1"),
        (b"", "line 1"),
        (b"puzzle-trace v1\n/x 1\n", "line 2"),
        (b"puzzle-trace v1\n/x 1 2 3\n", "line 2"),
        (b"puzzle-trace v1\nx 1 2\n", "line 2"),
        (b"puzzle-trace v1\n/x 1 0\n", "line 2"),
        (b"puzzle-trace v1\n/x -1 2\n", "line 2"),
        (b"puzzle-trace v1\n/x +1 2\n", "line 2"),
        (b"puzzle-trace v1\n/x 1 99999999999999999999\n", "line 2"),
        (b"puzzle-trace v1\n/x 18446744073709551615 1\n", "line 2"),
        (b"puzzle-trace v1\n\n/%4 1 2\n", "line 3"),
        (b"puzzle-trace v1\n\n/%zz 1 2\n", "line 3"),
        (b"puzzle-trace v1\n/x 1 2\n/\xff 1 2\n", "line 3"),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(line), "{bad:?}: {e}");
    }
}

proptest! {
    #[test]
    fn any_paths_and_ranges_round_trip(
        list in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..20), any::<u64>(), 1..u64::MAX),
            0..20,
        )
    ) {
        let e: Vec<TraceEntry> = list
            .into_iter()
            .map(|(p, offset, len)| {
                let mut path = vec![b'/'];
                path.extend(p);
                TraceEntry { path, offset: offset.min(u64::MAX - len), len }
            })
            .collect();
        prop_assert_eq!(parse(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn recording_covers_exactly_the_bytes_read(
        reads in prop::collection::vec((0u32..3, 0u64..200, 0u64..60), 0..40)
    ) {
        let mut t = TraceLog::new();
        for &(ino, off, len) in &reads {
            t.record(ino, off, len);
        }
        for ino in 0..3 {
            let mut want = std::collections::BTreeSet::new();
            for &(i, off, len) in &reads {
                if i == ino {
                    want.extend(off..off + len);
                }
            }
            let mut got = Vec::new();
            for &(i, off, len) in t.ranges() {
                if i == ino {
                    got.extend(off..off + len);
                }
            }
            let n = got.len();
            let got: std::collections::BTreeSet<u64> = got.into_iter().collect();
            prop_assert_eq!(n, got.len(), "a byte recorded twice");
            prop_assert_eq!(got, want);
        }
        // Adjacent ranges of one inode were merged.
        for w in t.ranges().windows(2) {
            prop_assert!(!(w[0].0 == w[1].0 && w[0].1 + w[0].2 == w[1].1));
        }
    }
}

/// `bin/sh` of 150 bytes in chunks a (100) and b (50), `bin/bash` a hard
/// link to it, `etc/conf` of 80 bytes: chunk b (30) then c (50); a and b
/// share a frame.
fn image() -> Vec<u8> {
    let (a, b, c) = (ChunkId::of(b"a"), ChunkId::of(b"b"), ChunkId::of(b"c"));
    let file = |size, ext: Vec<(ChunkId, u32)>| Node::File {
        size,
        extents: ext
            .into_iter()
            .map(|(chunk, len)| Extent {
                chunk,
                offset: 0,
                len,
            })
            .collect(),
        digest: FileDigest::of(&size.to_le_bytes()),
    };
    let mut entries = vec![
        LayerEntry::Node {
            path: b"bin/sh".to_vec(),
            node: file(150, vec![(a, 100), (b, 50)]),
            meta: Meta::default(),
        },
        LayerEntry::HardLink {
            path: b"bin/bash".to_vec(),
            target: b"bin/sh".to_vec(),
        },
        LayerEntry::Node {
            path: b"etc/conf".to_vec(),
            node: file(80, vec![(b, 30), (c, 50)]),
            meta: Meta::default(),
        },
        LayerEntry::Node {
            path: b"link".to_vec(),
            node: Node::Symlink(b"etc/conf".to_vec()),
            meta: Meta::default(),
        },
    ];
    entries.sort_by(|x, y| x.path().cmp(y.path()));
    let mut t = Tree::new();
    t.apply(&Layer {
        entries,
        ..Layer::default()
    })
    .unwrap();
    encode_meta(&t, &SourceInfo::default(), |id| {
        let frame = if *id == c { 1000 } else { 0 };
        Ok(ChunkLoc {
            pack: BlobDigest::of(b"pack"),
            offset: frame,
            clen: 77,
            frame_rlen: 200,
            at: 0,
            rlen: 100,
        })
    })
    .unwrap()
}

fn ino(m: &MetaBlob<&[u8]>, path: &str) -> u32 {
    find_file(m, path.as_bytes()).unwrap().unwrap().ino
}

#[test]
fn entries_name_each_inode_by_its_first_path() {
    let bytes = image();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    let (sh, conf) = (ino(&m, "/bin/sh"), ino(&m, "/etc/conf"));
    assert_eq!(ino(&m, "/bin/bash"), sh);
    let mut t = TraceLog::new();
    t.record(conf, 10, 5);
    t.record(sh, 0, 150);
    assert_eq!(
        t.entries(&m).unwrap(),
        vec![entry("/etc/conf", 10, 5), entry("/bin/bash", 0, 150)]
    );
}

#[test]
fn normalize_drops_what_the_image_lacks_and_clips() {
    let bytes = image();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    let text = encode(&[
        entry("/nope", 0, 1),
        entry("/etc/conf", 70, 100),
        entry("/link", 0, 1),
        entry("/bin", 0, 1),
        entry("/etc/conf", 500, 1),
        entry("/nope", 5, 1),
        entry("//bin/./sh", 0, 1),
    ]);
    let n = normalize(&m, &text).unwrap();
    assert_eq!(n.entries, 1);
    assert_eq!(parse(&n.bytes).unwrap(), vec![entry("/etc/conf", 70, 10)]);
    let missing: Vec<&[u8]> = n.missing.iter().map(Vec::as_slice).collect();
    assert_eq!(
        missing,
        vec![&b"/nope"[..], b"/link", b"/bin", b"//bin/./sh"]
    );
}

#[test]
fn frames_in_list_order_each_once() {
    let bytes = image();
    let m = MetaBlob::open(&bytes[..]).unwrap();
    let pack = BlobDigest::of(b"pack");
    let f = |offset| FrameRef {
        pack,
        offset,
        clen: 77,
    };
    // conf's second extent (chunk c) first, then sh (chunks a, b: frame 0).
    let list = [
        entry("/etc/conf", 40, 10),
        entry("/nope", 0, 10),
        entry("/bin/bash", 0, 150),
        entry("/etc/conf", 0, 80),
    ];
    assert_eq!(frames(&m, &list).unwrap(), vec![f(1000), f(0)]);
    // Past the end: nothing.
    assert_eq!(frames(&m, &[entry("/bin/sh", 150, 10)]).unwrap(), vec![]);
    // The range picks extents: sh's bytes 0..100 are chunk a alone.
    assert_eq!(
        frames(&m, &[entry("/etc/conf", 0, 30)]).unwrap(),
        vec![f(0)]
    );
}
