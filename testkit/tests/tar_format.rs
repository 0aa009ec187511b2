//! The layer tars parse back, with the `tar` crate, into the entries they
//! were written from.

use std::io::Read;

use puzzle_testkit::{
    all_kinds_layers, layer_tar, layer_tar_gnu, long_path, long_target, Entry, Kind,
};

struct Parsed {
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    data: Vec<u8>,
    dev: Option<(u32, u32)>,
    pax: Vec<(String, Vec<u8>)>,
}

fn parse(tar_bytes: &[u8]) -> Vec<Parsed> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut pax = Vec::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                pax.push((x.key().unwrap().to_string(), x.value_bytes().to_vec()));
            }
        }
        let h = e.header().clone();
        let kind = h.entry_type();
        let dev = match kind {
            tar::EntryType::Char | tar::EntryType::Block => Some((
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            )),
            _ => None,
        };
        let path = e.path_bytes().into_owned();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(Parsed {
            path,
            link,
            kind,
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            data,
            dev,
            pax,
        });
    }
    out
}

fn pax_value<'a>(p: &'a Parsed, key: &str) -> Option<&'a [u8]> {
    p.pax
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

fn check_roundtrip(entries: &[Entry], parsed: &[Parsed]) {
    assert_eq!(entries.len(), parsed.len());
    for (e, p) in entries.iter().zip(parsed) {
        let what = String::from_utf8_lossy(&e.path);
        assert_eq!(p.path, e.tar_path(), "{what}");
        assert_eq!(p.mode, e.mode, "{what}");
        let uid =
            pax_value(p, "uid").map_or(p.uid, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
        let gid =
            pax_value(p, "gid").map_or(p.gid, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
        assert_eq!((uid, gid), (e.uid, e.gid), "{what}");
        let (kind, link, data, dev): (_, Option<&[u8]>, &[u8], _) = match &e.kind {
            Kind::File(d) => (tar::EntryType::Regular, None, d.as_slice(), None),
            Kind::Dir => (tar::EntryType::Directory, None, &[], None),
            Kind::Symlink(t) => (tar::EntryType::Symlink, Some(t), &[], None),
            Kind::HardLink(t) => (tar::EntryType::Link, Some(t), &[], None),
            Kind::CharDev(a, b) => (tar::EntryType::Char, None, &[], Some((*a, *b))),
            Kind::BlockDev(a, b) => (tar::EntryType::Block, None, &[], Some((*a, *b))),
            Kind::Fifo => (tar::EntryType::Fifo, None, &[], None),
        };
        assert_eq!(p.kind, kind, "{what}");
        if let Some(l) = link {
            assert_eq!(p.link.as_deref(), Some(l), "{what}");
        }
        assert_eq!(p.data, data, "{what}");
        assert_eq!(p.dev, dev, "{what}");
        if e.mtime_nsec != 0 {
            let want = format!("{}.{:09}", e.mtime, e.mtime_nsec);
            assert_eq!(pax_value(p, "mtime"), Some(want.as_bytes()), "{what}");
        }
        let xattrs: Vec<(String, Vec<u8>)> = p
            .pax
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_string(), v.clone())))
            .collect();
        assert_eq!(xattrs, e.xattrs, "{what}");
    }
}

#[test]
fn all_kinds_layers_parse_back() {
    for (entries, _) in all_kinds_layers() {
        check_roundtrip(&entries, &parse(&layer_tar(&entries)));
        check_roundtrip(&entries, &parse(&layer_tar_gnu(&entries)));
    }
}

#[test]
fn long_names_use_pax_or_gnu_records() {
    let entries = [
        Entry::file(long_path(), "x"),
        Entry::symlink("s", long_target()),
        Entry::hardlink(format!("{}-link", long_path()), long_path()),
    ];
    assert!(long_path().len() > 100 && long_target().len() > 100);
    let pax = layer_tar(&entries);
    let parsed = parse(&pax);
    assert_eq!(pax_value(&parsed[0], "path"), Some(long_path().as_bytes()));
    assert_eq!(
        pax_value(&parsed[1], "linkpath"),
        Some(long_target().as_bytes())
    );
    // A PAX extended header has type 'x' at offset 156 of the first block.
    assert_eq!(pax[156], b'x');

    let gnu = layer_tar_gnu(&entries);
    assert_eq!(gnu[156], b'L');
    assert_eq!(&gnu[257..265], b"ustar  \0");
    let parsed = parse(&gnu);
    assert!(parsed.iter().all(|p| p.pax.is_empty()));
    check_roundtrip(&entries, &parsed);
}

#[test]
fn non_utf8_long_names_are_marked_binary() {
    let mut name = b"dir/\xff".to_vec();
    name.extend(std::iter::repeat_n(b'a', 120));
    let entries = [Entry::file(&name, "x")];
    let parsed = parse(&layer_tar(&entries));
    assert_eq!(pax_value(&parsed[0], "hdrcharset"), Some(&b"BINARY"[..]));
    check_roundtrip(&entries, &parsed);
}

#[test]
fn writes_in_the_given_order_with_end_marker() {
    let entries = [
        Entry::file("z", "1"),
        Entry::file("a", "2"),
        Entry::dir("m"),
    ];
    let t = layer_tar(&entries);
    assert_eq!(t.len() % 512, 0);
    assert!(t[t.len() - 1024..].iter().all(|&b| b == 0));
    let paths: Vec<Vec<u8>> = parse(&t).into_iter().map(|p| p.path).collect();
    assert_eq!(paths, vec![b"z".to_vec(), b"a".to_vec(), b"m/".to_vec()]);
}
