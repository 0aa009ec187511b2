//! Tests of parsing a layer and finishing it without a live spool.

use std::io::{self, Read};

use puzzle_chunker::{ChunkId, ChunkParams};
use puzzle_store::tree::{Extent, FileDigest};
use tar::EntryType;

use super::entry::HEADER_BUDGET;
use super::*;

#[test]
fn stream_key_follows_contents_in_chunking_order_only() {
    use puzzle_testkit::{layer_tar, Entry};
    let tmp = tempfile::tempdir().unwrap();
    let key = |entries: &[Entry], params: ChunkParams| {
        let tar = layer_tar(entries);
        let sp = spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
        sp.stream_key(params)
    };
    let p = ChunkParams::default();
    let base = key(&[Entry::file("a", b"1"), Entry::file("b", b"22")], p);
    // Tar order, mtimes and names that keep the order: same stream.
    let same = key(
        &[
            Entry::file("b2", b"22").mtime(5, 0),
            Entry::file("a", b"1").owner(3, 3),
        ],
        p,
    );
    assert_eq!(base, same);
    // Other contents, another order of contents, other chunk parameters.
    let other = key(&[Entry::file("a", b"1"), Entry::file("b", b"23")], p);
    let swapped = key(&[Entry::file("a", b"22"), Entry::file("b", b"1")], p);
    let params = ChunkParams::new(8192, 32768, 131072).unwrap();
    let other_params = key(&[Entry::file("a", b"1"), Entry::file("b", b"22")], params);
    for k in [other, swapped, other_params] {
        assert_ne!(k, base);
    }
}

#[test]
fn reuse_refuses_extents_that_do_not_fit() {
    use puzzle_testkit::{layer_tar, Entry};
    let tmp = tempfile::tempdir().unwrap();
    let tar = layer_tar(&[Entry::file("a", b"hello")]);
    let ext = |len| Extent {
        chunk: ChunkId::of(b"hello"),
        offset: 0,
        len,
    };
    let sp = || spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
    assert!(sp().reuse(vec![vec![ext(4)]]).is_err());
    assert!(sp().reuse(vec![]).is_err());
    assert!(sp().reuse(vec![vec![ext(5)]]).is_ok());
}

#[test]
fn files_are_hashed_while_spooled() {
    use puzzle_testkit::{layer_tar, Entry};
    let big = puzzle_testkit::pseudo_random(3, 200_000);
    let tar = layer_tar(&[
        Entry::file("b", &big),
        Entry::file("a", b"hello"),
        Entry::file("e", b""),
        Entry::hardlink("h", "a"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let sp = spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap();
    let digests: Vec<(&[u8], FileDigest)> = sp
        .entries
        .iter()
        .filter_map(|(p, e)| match e {
            Pending::File { digest, .. } => Some((p.as_slice(), *digest)),
            _ => None,
        })
        .collect();
    assert_eq!(
        digests,
        vec![
            (&b"a"[..], FileDigest::of(b"hello")),
            (&b"b"[..], FileDigest::of(&big)),
            (&b"e"[..], FileDigest::of(b"")),
        ]
    );
}

fn spool_entries(entries: &[puzzle_testkit::Entry]) -> Spooled {
    let tar = puzzle_testkit::layer_tar(entries);
    let tmp = tempfile::tempdir().unwrap();
    spool(&mut &tar[..], tmp.path(), &mut |_| {}).unwrap()
}

/// (path, "file <digest>" | "link <path>" | "lower <path>") per entry.
fn shape(sp: &Spooled) -> Vec<(String, String)> {
    sp.entries
        .iter()
        .map(|(p, e)| {
            let what = match e {
                Pending::File { digest, .. } => format!("file {digest}"),
                Pending::Node { .. } => "node".to_string(),
                Pending::Link(LinkTo::Path(t)) => {
                    format!("link {}", String::from_utf8_lossy(t))
                }
                Pending::Link(LinkTo::Lower(t)) => {
                    format!("lower {}", String::from_utf8_lossy(t))
                }
                Pending::Link(LinkTo::Entry(_)) => "unsettled".to_string(),
            };
            (String::from_utf8_lossy(p).into_owned(), what)
        })
        .collect()
}

fn s(a: &str, b: String) -> (String, String) {
    (a.to_string(), b)
}

#[test]
fn links_follow_tar_order() {
    use puzzle_testkit::Entry;
    let x = format!("file {}", FileDigest::of(b"X"));
    let y = format!("file {}", FileDigest::of(b"Y"));
    // `b` links to the first `a`; the second `a` replaces only the name.
    let sp = spool_entries(&[
        Entry::file("a", b"X"),
        Entry::hardlink("b", "a"),
        Entry::file("a", b"Y"),
    ]);
    assert_eq!(shape(&sp), vec![s("a", y.clone()), s("b", x.clone())]);
    assert_eq!(sp.counts.files, 2);
    // The superseded data goes to the smallest remaining name.
    let sp = spool_entries(&[
        Entry::file("m", b"X"),
        Entry::hardlink("z", "m"),
        Entry::hardlink("c", "z"),
        Entry::file("m", b"Y"),
    ]);
    assert_eq!(
        shape(&sp),
        vec![s("c", x.clone()), s("m", y), s("z", "link c".into())]
    );
    // A superseded data entry nobody links to is dropped.
    let sp = spool_entries(&[Entry::file("a", b"X"), Entry::file("a", b"Y")]);
    assert_eq!(sp.counts.files, 1);
    // Links to paths not (yet) defined in the layer are lower links,
    // even when the layer defines the path later.
    let sp = spool_entries(&[
        Entry::hardlink("b", "a"),
        Entry::file("a", b"X"),
        Entry::hardlink("c", "b"),
        Entry::hardlink("d", "a"),
    ]);
    assert_eq!(
        shape(&sp),
        vec![
            s("a", x),
            s("b", "lower a".into()),
            s("c", "lower a".into()),
            s("d", "link a".into()),
        ]
    );
    // A later non-directory at an ancestor removes what was under it;
    // data linked from elsewhere survives under the link.
    let sp = spool_entries(&[
        Entry::dir("d"),
        Entry::file("d/x", b"X"),
        Entry::hardlink("e", "d/x"),
        Entry::dir("d/sub"),
        Entry::file("d/sub/y", b"Y"),
        Entry::file("d", b"Y"),
        Entry::dir("k"),
        Entry::file("k/x", b"X"),
        Entry::dir("k"),
    ]);
    assert_eq!(
        shape(&sp),
        vec![
            s("d", format!("file {}", FileDigest::of(b"Y"))),
            s("e", format!("file {}", FileDigest::of(b"X"))),
            s("k", "node".into()),
            s("k/x", format!("file {}", FileDigest::of(b"X"))),
        ]
    );
    // A hard link to a directory of the layer is refused.
    let tar = puzzle_testkit::layer_tar(&[Entry::dir("d"), Entry::hardlink("l", "d")]);
    let tmp = tempfile::tempdir().unwrap();
    let err = spool(&mut &tar[..], tmp.path(), &mut |_| {}).err().unwrap();
    assert!(err.to_string().contains("directory"), "{err}");
}

/// A tar whose second member is a PAX header of `pax_len` bytes.
fn tar_with_big_pax(pax_len: u64) -> impl Read {
    let mut first = tar::Header::new_ustar();
    first.set_path("ok").unwrap();
    first.set_size(2);
    first.set_mode(0o644);
    first.set_uid(0);
    first.set_gid(0);
    first.set_mtime(0);
    first.set_entry_type(EntryType::Regular);
    first.set_cksum();
    let mut head = first.as_bytes().to_vec();
    head.extend_from_slice(b"ok");
    head.resize(1024, 0);
    let mut pax = tar::Header::new_ustar();
    pax.set_path("PaxHeaders/x").unwrap();
    pax.set_size(pax_len);
    pax.set_entry_type(EntryType::XHeader);
    pax.set_cksum();
    head.extend_from_slice(pax.as_bytes());
    let record = format!("{pax_len} comment=");
    head.extend_from_slice(record.as_bytes());
    io::Cursor::new(head)
        .chain(io::repeat(b'a').take(pax_len - record.len() as u64 - 1))
        .chain(&b"\n"[..])
        .chain(io::repeat(0).take(4096))
}

#[test]
fn huge_extension_records_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = spool(&mut tar_with_big_pax(64 << 20), tmp.path(), &mut |_| {})
        .err()
        .expect("a 64 MiB PAX record is refused");
    let msg = format!("{err}: {err:?}");
    assert!(msg.contains("the entry after /ok"), "{msg}");
    assert!(msg.contains("8 MiB of tar headers"), "{msg}");
    // Just under the budget is read (and then fails as a tar with no entry
    // after the record, not on the budget).
    let err = spool(&mut tar_with_big_pax(1 << 20), tmp.path(), &mut |_| {});
    if let Err(e) = err {
        let msg = format!("{e}: {:?}", std::error::Error::source(&e));
        assert!(!msg.contains("8 MiB"), "{msg}");
    }
}

#[test]
fn budget_is_lifted_for_file_contents() {
    use puzzle_testkit::Entry;
    let big = vec![7u8; (HEADER_BUDGET + (1 << 20)) as usize];
    let sp = spool_entries(&[Entry::file("big", &big), Entry::symlink("s", "big")]);
    assert_eq!(sp.counts.file_bytes, big.len() as u64);
}
