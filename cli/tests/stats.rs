//! `puzzle stats`: exact figures on a synthetic store whose answers are
//! planned, figures checked against independent readings of the small
//! corpus (extracted trees, pack trailers), the JSON decoded by consumer-side
//! types, the HTML page drawn by headless Chromium, and the time for 25 images.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use puzzle_testkit::{pseudo_random, Compression, Entry, Image};
use serde::Deserialize;

use crate::util::*;

// ---- consumer-side types: any change of shape fails to decode ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<T> {
    #[serde(rename = "type")]
    kind: String,
    schema: u32,
    data: T,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stats {
    images: Vec<ImageStats>,
    totals: Totals,
    histogram: Vec<Bucket>,
    refcounts: Vec<RefCount>,
    sharing: Sharing,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageStats {
    name: String,
    files: u64,
    logical_bytes: u64,
    chunks: u64,
    chunk_bytes: u64,
    unique_bytes: u64,
    shared_bytes: u64,
    stored_bytes: u64,
    unique_stored_bytes: u64,
    source_layers: u64,
    source_bytes: u64,
    metadata_bytes: u64,
    packs: u64,
    dedup_ratio: Option<f64>,
    compression_ratio: Option<f64>,
    overall_ratio: Option<f64>,
    shared_fraction: Option<f64>,
    source_ratio: Option<f64>,
    unique_stored_vs_source: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Totals {
    images: u64,
    files: u64,
    logical_bytes: u64,
    file_contents: u64,
    file_dedup_bytes: u64,
    chunks: u64,
    chunk_bytes: u64,
    stored_bytes: u64,
    source_layers: u64,
    source_bytes: u64,
    source_bytes_per_image: u64,
    metadata_bytes: u64,
    packs: u64,
    pack_bytes: u64,
    pack_frame_bytes: u64,
    unreferenced_frame_bytes: u64,
    dedup_ratio: Option<f64>,
    compression_ratio: Option<f64>,
    overall_ratio: Option<f64>,
    file_dedup_ratio: Option<f64>,
    chunking_gain: Option<f64>,
    source_ratio: Option<f64>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Bucket {
    min: u64,
    max: u64,
    chunks: u64,
    bytes: u64,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RefCount {
    images: u64,
    chunks: u64,
    bytes: u64,
    stored_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sharing {
    images: Vec<String>,
    bytes: Vec<Vec<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffC {
    a: String,
    b: String,
    new_chunks: u64,
    new_chunk_bytes: u64,
    new_stored_bytes: u64,
    dropped_chunks: u64,
    dropped_chunk_bytes: u64,
    added: u64,
    removed: u64,
    modified: u64,
    rechunked: u64,
    unchanged: u64,
    files: Vec<FileChange>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChange {
    path: PathC,
    change: String,
    size_a: Option<u64>,
    size_b: Option<u64>,
    new_bytes: u64,
    content_in_a: bool,
}

/// `{"text": ...}` for UTF-8 paths, `{"bytes": base64}` otherwise.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PathC {
    Text { text: String },
    Bytes { bytes: String },
}

impl PathC {
    fn text(&self) -> &str {
        match self {
            PathC::Text { text } => text,
            PathC::Bytes { bytes } => panic!("non-UTF-8 path {bytes}"),
        }
    }
}

/// Runs `puzzle stats --json [args]`: the stats line and the diff line, if any.
fn stats_json(store: &Path, args: &[&str]) -> (Stats, Option<DiffC>) {
    let r = ok(puzzle(store).args(["stats", "--json"]).args(args));
    let mut lines = r.stdout.lines();
    let s: Envelope<Stats> = serde_json::from_str(lines.next().expect("a stats line"))
        .unwrap_or_else(|e| panic!("stats line ({e}):\n{}", r.stdout));
    assert_eq!((s.kind.as_str(), s.schema), ("stats", 1));
    let d = lines.next().map(|l| {
        let d: Envelope<DiffC> =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("diff line ({e}):\n{l}"));
        assert_eq!((d.kind.as_str(), d.schema), ("diff", 1));
        d.data
    });
    assert!(lines.next().is_none(), "one or two lines:\n{}", r.stdout);
    (s.data, d)
}

// ---- the synthetic store ----

/// Contents: every layer's files total under the 16 KiB minimum chunk, so
/// each layer's stream is exactly one chunk and every answer is known.
fn p() -> Vec<u8> {
    pseudo_random(1, 9000)
}
fn q() -> Vec<u8> {
    pseudo_random(2, 3000)
}
fn r_() -> Vec<u8> {
    pseudo_random(3, 1000)
}
fn s_() -> Vec<u8> {
    pseudo_random(4, 1000)
}

struct Synthetic {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    /// Gzip bytes of each image's layers, by layer digest.
    layers: HashMap<String, Vec<(String, u64)>>,
}

fn synthetic() -> Synthetic {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let store = tmp.path().join("store");
    let l0 = vec![Entry::dir("base"), Entry::file("base/lib", p())];
    let l1 = vec![
        Entry::dir("app"),
        Entry::file("app/a", q()),
        Entry::file("app/b", r_()),
    ];
    let l2 = vec![
        Entry::dir("app"),
        Entry::file("app/a", q()),
        Entry::file("app/b", s_()),
    ];
    let l3 = vec![Entry::dir("app"), Entry::file("app/a", q())];
    let l4 = vec![Entry::dir("dup"), Entry::file("dup/a", q())];
    let g = Compression::Gzip;
    let images = [
        ("one", Image::new().layer(&l0, g).layer(&l1, g)),
        ("two", Image::new().layer(&l0, g).layer(&l2, g)),
        (
            "three",
            Image::new().layer(&l0, g).layer(&l3, g).layer(&l4, g),
        ),
    ];
    let mut layers = HashMap::new();
    for (tag, img) in images {
        let w = img.write_oci_layout(&layout, tag).unwrap();
        let sizes = w
            .layer_digests
            .iter()
            .map(|d| {
                let path = layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:"));
                (d.clone(), std::fs::metadata(path).unwrap().len())
            })
            .collect();
        layers.insert(tag.to_string(), sizes);
        build(&store, &format!("oci:{}:{tag}", layout.display()), tag);
    }
    Synthetic {
        _tmp: tmp,
        store,
        layers,
    }
}

fn zlen(data: &[u8]) -> u64 {
    zstd::bulk::compress(data, 3).unwrap().len() as u64
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

/// `images` shows each image's logical size and the stored bytes only it
/// holds, the figures `stats` gives over the whole store.
#[test]
fn images_show_size_and_what_only_each_image_holds() {
    let syn = synthetic();
    let f01 = zlen(&cat(&p(), &cat(&q(), &r_())));
    let (c1, c2, c3) = (
        f01 - f01 * 9000 / 13000,
        zlen(&cat(&q(), &s_())),
        zlen(&q()),
    );
    type Sizes = (String, Option<u64>, Option<u64>, Option<u64>, Option<u64>);
    let listed: Vec<Sizes> = images(&syn.store)
        .into_iter()
        .map(|i| {
            (
                i.name,
                i.files,
                i.logical_bytes,
                i.unique_bytes,
                i.unique_stored_bytes,
            )
        })
        .collect();
    let expect = [
        ("one", 3, 13000, 4000, c1),
        ("three", 3, 15000, 3000, c3),
        ("two", 3, 13000, 4000, c2),
    ];
    let expect: Vec<_> = expect
        .iter()
        .map(|e| (e.0.to_string(), Some(e.1), Some(e.2), Some(e.3), Some(e.4)))
        .collect();
    assert_eq!(listed, expect);
    let (s, _) = stats_json(&syn.store, &[]);
    for (i, e) in s.images.iter().zip(&expect) {
        assert_eq!(
            (Some(i.logical_bytes), Some(i.unique_stored_bytes)),
            (e.2, e.4)
        );
    }

    // The table: NAME MANIFEST SIZE UNIQUE METADATA PACKS, sizes in binary units.
    let human = ok(puzzle(&syn.store).arg("images")).stdout;
    let rows: Vec<Vec<&str>> = human
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "MANIFEST", "SIZE", "UNIQUE", "METADATA", "PACKS"],
        "{human}"
    );
    let kib = |n: u64| format!("{:.1} KiB", n as f64 / 1024.0);
    for (row, e) in rows[1..].iter().zip(&expect) {
        assert_eq!(row[0], e.0, "{human}");
        assert_eq!(row[2..4].join(" "), kib(e.2.unwrap()), "{human}");
        assert_eq!(row[4..6].join(" "), kib(e.4.unwrap()), "{human}");
    }
    assert_eq!(rows.len(), 4, "{human}");

    // An image whose metadata blob is gone: every image is still listed,
    // without sizes (UNIQUE depends on every image's chunks), and a warning.
    let three = images(&syn.store)
        .into_iter()
        .find(|i| i.name == "three")
        .unwrap();
    let hex = three.metadata.trim_start_matches("sha256:");
    std::fs::remove_file(syn.store.join("blobs/sha256").join(hex)).unwrap();
    let r = ok(puzzle(&syn.store).arg("images"));
    assert!(
        r.stderr.contains("puzzle: warning: no sizes"),
        "{}",
        r.stderr
    );
    let rows: Vec<Vec<&str>> = r
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(names, ["one", "three", "two"], "{}", r.stdout);
    assert!(
        rows.iter().all(|r| r[2] == "-" && r[3] == "-"),
        "{}",
        r.stdout
    );
    for i in images(&syn.store) {
        assert_eq!(
            (
                i.files,
                i.logical_bytes,
                i.unique_bytes,
                i.unique_stored_bytes
            ),
            (None, None, None, None)
        );
    }
}

#[test]
fn synthetic_store_figures_are_exact() {
    let syn = synthetic();
    let (s, d) = stats_json(&syn.store, &["--diff", "one", "two"]);
    // Chunks: c0 = P (every image), c1 = Q|R (one), c2 = Q|S (two), c3 = Q (three, twice).
    // One's build stores c0 and c1 in one frame; each chunk's stored bytes
    // are its share of the frame by raw length (P is 9000 of its 13000 bytes).
    let f01 = zlen(&cat(&p(), &cat(&q(), &r_())));
    let (c0, c1, c2, c3) = (
        f01 * 9000 / 13000,
        f01 - f01 * 9000 / 13000,
        zlen(&cat(&q(), &s_())),
        zlen(&q()),
    );
    let names: Vec<&str> = s.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["one", "three", "two"], "sorted by name");
    // The metadata blob files' sizes on disk (`images` reports the manifest's
    // figure; stats must agree with what is stored).
    let metas: HashMap<String, u64> = images(&syn.store)
        .into_iter()
        .map(|i| {
            let hex = i.metadata.trim_start_matches("sha256:");
            let path = syn.store.join("blobs/sha256").join(hex);
            (i.name, std::fs::metadata(path).unwrap().len())
        })
        .collect();
    // (name, files, logical, chunks, chunk bytes, unique, shared, stored, stored alone).
    // Each build writes one pack: one's holds c0 and c1, two's c2, three's c3.
    let packs = [1, 2, 2];
    let expect = [
        ("one", 3, 13000, 2, 13000, 4000, 9000, c0 + c1, c1),
        ("three", 3, 15000, 2, 12000, 3000, 9000, c0 + c3, c3),
        ("two", 3, 13000, 2, 13000, 4000, 9000, c0 + c2, c2),
    ];
    for ((img, e), packs) in s.images.iter().zip(expect).zip(packs) {
        let got = (
            img.name.as_str(),
            img.files,
            img.logical_bytes,
            img.chunks,
            img.chunk_bytes,
            img.unique_bytes,
            img.shared_bytes,
            img.stored_bytes,
            img.unique_stored_bytes,
        );
        assert_eq!(got, e);
        let layers = &syn.layers[&img.name];
        let source: u64 = layers.iter().map(|l| l.1).sum();
        assert_eq!(
            (img.source_layers, img.source_bytes),
            (layers.len() as u64, source)
        );
        assert_eq!(img.metadata_bytes, metas[&img.name]);
        assert_eq!(img.packs, packs, "{}", img.name);
        let close = |a: Option<f64>, b: f64| {
            let a = a.expect("ratio");
            assert!((a - b).abs() < 1e-9, "{} ratio {a} != {b}", img.name);
        };
        close(img.dedup_ratio, e.2 as f64 / e.4 as f64);
        close(img.compression_ratio, e.4 as f64 / e.7 as f64);
        close(img.overall_ratio, e.2 as f64 / e.7 as f64);
        close(img.shared_fraction, e.6 as f64 / e.4 as f64);
        close(img.source_ratio, source as f64 / e.7 as f64);
        close(img.unique_stored_vs_source, e.8 as f64 / source as f64);
    }
    let t = &s.totals;
    let stored = c0 + c1 + c2 + c3;
    let distinct_layers: HashMap<&String, u64> = syn
        .layers
        .values()
        .flatten()
        .map(|(d, n)| (d, *n))
        .collect();
    let per_image: u64 = syn.layers.values().flatten().map(|l| l.1).sum();
    assert_eq!((t.images, t.files, t.logical_bytes), (3, 9, 41000));
    // Contents P, Q, R, S.
    assert_eq!((t.file_contents, t.file_dedup_bytes), (4, 14000));
    assert_eq!(
        (t.chunks, t.chunk_bytes, t.stored_bytes),
        (4, 20000, stored)
    );
    assert_eq!(
        (t.source_layers, t.source_bytes, t.source_bytes_per_image),
        (5, distinct_layers.values().sum::<u64>(), per_image)
    );
    assert_eq!(t.metadata_bytes, metas.values().sum::<u64>());
    assert_eq!(t.packs, 3);
    assert_eq!(t.pack_frame_bytes, stored);
    assert_eq!(t.pack_bytes, stored + 4 * 56 + 3 * 32);
    assert_eq!(t.unreferenced_frame_bytes, 0);
    // JSON floats round-trip to within an ulp or so.
    let close = |a: Option<f64>, b: f64| {
        let a = a.expect("ratio");
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    };
    close(t.dedup_ratio, 41000.0 / 20000.0);
    close(t.compression_ratio, 20000.0 / stored as f64);
    close(t.overall_ratio, 41000.0 / stored as f64);
    close(t.file_dedup_ratio, 41000.0 / 14000.0);
    // Small files packed in per-layer chunks dedup worse than whole files here.
    close(t.chunking_gain, 14000.0 / 20000.0);
    close(
        t.source_ratio,
        distinct_layers.values().sum::<u64>() as f64 / stored as f64,
    );
    assert_eq!(
        s.histogram,
        vec![
            Bucket {
                min: 2048,
                max: 4096,
                chunks: 3,
                bytes: 11000
            },
            Bucket {
                min: 4096,
                max: 8192,
                chunks: 0,
                bytes: 0
            },
            Bucket {
                min: 8192,
                max: 16384,
                chunks: 1,
                bytes: 9000
            },
        ]
    );
    assert_eq!(
        s.refcounts,
        vec![
            RefCount {
                images: 1,
                chunks: 3,
                bytes: 11000,
                stored_bytes: c1 + c2 + c3
            },
            RefCount {
                images: 2,
                chunks: 0,
                bytes: 0,
                stored_bytes: 0
            },
            RefCount {
                images: 3,
                chunks: 1,
                bytes: 9000,
                stored_bytes: c0
            },
        ]
    );
    assert_eq!(s.sharing.images, ["one", "three", "two"]);
    assert_eq!(
        s.sharing.bytes,
        vec![
            vec![13000, 9000, 9000],
            vec![9000, 12000, 9000],
            vec![9000, 9000, 13000]
        ]
    );

    // one -> two: app/b changed (R -> S); app/a kept its contents but lives
    // in the new chunk Q|S now.
    let d = d.expect("a diff line");
    assert_eq!((d.a.as_str(), d.b.as_str()), ("one", "two"));
    assert_eq!(
        (d.new_chunks, d.new_chunk_bytes, d.new_stored_bytes),
        (1, 4000, c2)
    );
    assert_eq!((d.dropped_chunks, d.dropped_chunk_bytes), (1, 4000));
    assert_eq!(
        (d.added, d.removed, d.modified, d.rechunked, d.unchanged),
        (0, 0, 1, 1, 1)
    );
    let files: Vec<_> = d
        .files
        .iter()
        .map(|f| {
            (
                f.path.text(),
                f.change.as_str(),
                f.size_a,
                f.size_b,
                f.new_bytes,
                f.content_in_a,
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("app/a", "rechunked", Some(3000), Some(3000), 3000, true),
            ("app/b", "modified", Some(1000), Some(1000), 1000, false),
        ]
    );

    // one -> three: app/b removed, dup/a added with contents one already has.
    let (_, d) = stats_json(&syn.store, &["--diff", "one", "three"]);
    let d = d.unwrap();
    let files: Vec<_> = d
        .files
        .iter()
        .map(|f| {
            (
                f.path.text(),
                f.change.as_str(),
                f.new_bytes,
                f.content_in_a,
            )
        })
        .collect();
    assert_eq!(
        files,
        [
            ("app/a", "rechunked", 3000, true),
            ("dup/a", "added", 3000, true),
            ("app/b", "removed", 0, true),
        ]
    );
    assert_eq!((d.new_chunks, d.new_chunk_bytes), (1, 3000));

    // NAMES restricts the set: "other images" are the named ones.
    let (s, _) = stats_json(&syn.store, &["one", "two"]);
    assert_eq!(s.images.len(), 2);
    assert_eq!(
        (s.images[0].unique_bytes, s.images[0].shared_bytes),
        (4000, 9000)
    );
    assert_eq!(s.totals.chunks, 3);
    // Packs count when a named image references them: three's pack is out.
    assert_eq!((s.totals.packs, s.totals.unreferenced_frame_bytes), (2, 0));

    // The table names every image; unknown names exit 3.
    let t = ok(puzzle(&syn.store).args(["stats", "--diff", "one", "two"]));
    for n in ["one", "two", "three", "rechunked", "app/b"] {
        assert!(t.stdout.contains(n), "{n} missing from:\n{}", t.stdout);
    }
    let bad = run(puzzle(&syn.store).args(["stats", "nope"]));
    assert_eq!(bad.code, 3, "{}", bad.stderr);
}

#[test]
fn diff_paths_that_are_not_utf8_are_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let store = tmp.path().join("store");
    let a = Image::new().layer(&[Entry::file("same", b"1")], Compression::None);
    let b = Image::new().layer(
        &[Entry::file("same", b"1"), Entry::file(b"caf\xe9", b"new")],
        Compression::None,
    );
    for (tag, img) in [("a", a), ("b", b)] {
        img.write_oci_layout(&layout, tag).unwrap();
        build(&store, &format!("oci:{}:{tag}", layout.display()), tag);
    }
    let (_, d) = stats_json(&store, &["--diff", "a", "b"]);
    let d = d.unwrap();
    let added: Vec<_> = d.files.iter().filter(|f| f.change == "added").collect();
    assert_eq!(added.len(), 1);
    match &added[0].path {
        PathC::Bytes { bytes } => assert_eq!(bytes, "Y2Fm6Q=="),
        other => panic!("{other:?}"),
    }
}

// ---- the small corpus ----

fn src(corpus: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", corpus.display())
}

/// Regular files of an extracted tree by relative path, and the sum of
/// their sizes counting each inode once.
fn tree_files(root: &Path) -> (BTreeMap<String, PathBuf>, u64) {
    let mut files = BTreeMap::new();
    let mut inodes = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                if inodes.insert(md.ino()) {
                    total += md.len();
                }
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                files.insert(rel, e.path());
            }
        }
    }
    (files, total)
}

/// Sum of frame bytes (from each pack's trailer) and of frame lengths (from
/// each pack's index: the entry of a frame's first chunk) over every pack
/// blob in the store.
fn pack_frames(store: &Path) -> (u64, u64) {
    let (mut by_trailer, mut by_entries) = (0u64, 0u64);
    for e in std::fs::read_dir(store.join("blobs/sha256")).unwrap() {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        if b.len() < 32 || &b[b.len() - 32..b.len() - 24] != b"PZLPACK\0" {
            continue;
        }
        let t = &b[b.len() - 32..];
        let count = u32::from_le_bytes(t[12..16].try_into().unwrap()) as usize;
        let index_offset = u64::from_le_bytes(t[16..24].try_into().unwrap());
        by_trailer += index_offset;
        let index = &b[index_offset as usize..b.len() - 32];
        assert_eq!(index.len(), count * 56);
        for entry in index.chunks_exact(56) {
            let at = u32::from_le_bytes(entry[48..52].try_into().unwrap());
            if at == 0 {
                by_entries += u64::from(u32::from_le_bytes(entry[40..44].try_into().unwrap()));
            }
        }
    }
    (by_trailer, by_entries)
}

#[test]
fn corpus_figures_match_extracted_trees_and_packs() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    for tag in ["base", "python3", "django-5.0.7", "django-5.0.8"] {
        build(&store, &src(&corpus, tag), tag);
    }
    let (s, d) = stats_json(&store, &["--diff", "django-5.0.7", "django-5.0.8"]);

    // Stored total = bytes of chunk frames in the packs.
    let (frames, entry_bytes) = pack_frames(&store);
    assert_eq!(frames, entry_bytes);
    assert_eq!(s.totals.pack_frame_bytes, frames);
    assert_eq!(
        s.totals.stored_bytes + s.totals.unreferenced_frame_bytes,
        frames
    );
    assert_eq!(
        s.totals.stored_bytes, frames,
        "every stored chunk is used by some image"
    );

    // Logical bytes = sum of file sizes of the extracted tree.
    let mut trees = HashMap::new();
    for tag in ["django-5.0.7", "django-5.0.8"] {
        let x = t.join(tag);
        extract(&store, tag, &x);
        let (files, total) = tree_files(&x);
        let img = s.images.iter().find(|i| i.name == tag).unwrap();
        assert_eq!(img.logical_bytes, total, "{tag}");
        trees.insert(tag, files);
    }

    // The diff lists exactly the files whose contents differ.
    let (a, b) = (&trees["django-5.0.7"], &trees["django-5.0.8"]);
    let mut want: BTreeMap<&str, &str> = BTreeMap::new();
    for (p, pa) in a {
        match b.get(p) {
            None => {
                want.insert(p, "removed");
            }
            Some(pb) => {
                if std::fs::read(pa).unwrap() != std::fs::read(pb).unwrap() {
                    want.insert(p, "modified");
                }
            }
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            want.insert(p, "added");
        }
    }
    let d = d.unwrap();
    let got: BTreeMap<&str, &str> = d
        .files
        .iter()
        .filter(|f| f.change != "rechunked")
        .map(|f| (f.path.text(), f.change.as_str()))
        .collect();
    assert_eq!(got, want);
    assert!(!want.is_empty());
    for f in d.files.iter().filter(|f| f.change == "rechunked") {
        let p = f.path.text();
        assert_eq!(
            std::fs::read(&a[p]).unwrap(),
            std::fs::read(&b[p]).unwrap(),
            "{p} is rechunked, so its contents are the same"
        );
        assert!(f.new_bytes > 0);
    }
    let paths: BTreeSet<&str> = d.files.iter().map(|f| f.path.text()).collect();
    assert_eq!(paths.len(), d.files.len(), "each path once");
    assert!(
        d.files.windows(2).all(|w| w[0].new_bytes >= w[1].new_bytes),
        "sorted by cost"
    );
    eprintln!(
        "django 5.0.7 -> 5.0.8: {} added, {} removed, {} modified, {} rechunked; {} new chunk bytes",
        d.added, d.removed, d.modified, d.rechunked, d.new_chunk_bytes
    );
}

#[test]
fn stats_of_25_images_is_fast() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // Ten real variants, then tags of them up to 25 images.
    let tags = [
        "base",
        "python3",
        "django-5.0.7",
        "django-5.0.8",
        "django-5.0.8-rebuild",
        "base-asbuilt",
        "python3-asbuilt",
        "django-5.0.7-asbuilt",
        "django-5.0.8-asbuilt",
        "django-5.0.8-rebuild-asbuilt",
    ];
    for i in 0..25 {
        let tag = tags[i % tags.len()];
        build(&store, &src(&corpus, tag), &format!("{tag}-{i}"));
    }
    let started = Instant::now();
    let (s, _) = stats_json(&store, &[]);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "puzzle stats --json over {} images ({} files, {} logical bytes): {secs:.3}s",
        s.images.len(),
        s.totals.files,
        s.totals.logical_bytes
    );
    assert_eq!(s.images.len(), 25);
    assert!(secs < 2.0, "stats took {secs:.2}s for 25 images");
}

// ---- the HTML page in headless Chromium ----

fn chromium() -> Option<String> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if puzzle_testkit::tool_available(c) {
            return Some(c.to_string());
        }
    }
    assert!(
        !require_tools(),
        "chromium is required (PUZZLE_REQUIRE_TOOLS is set)"
    );
    eprintln!("note: chromium is not installed; skipping the HTML test");
    None
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn headless(browser: &str, profile: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

#[test]
fn html_page_draws_its_charts_in_chromium() {
    let syn = synthetic();
    let html = syn.store.parent().unwrap().join("report.html");
    ok(puzzle(&syn.store)
        .args(["stats", "--diff", "one", "two", "--html"])
        .arg(&html));
    let page = std::fs::read_to_string(&html).unwrap();
    for forbidden in ["<script", "http://", "https://", "<link", "@import"] {
        assert!(!page.contains(forbidden), "page contains {forbidden}");
    }
    let Some(browser) = chromium() else { return };
    // The console check catches errors: a page with a script error and a
    // blocked fetch shows both on stderr.
    let bad = syn.store.parent().unwrap().join("bad.html");
    std::fs::write(
        &bad,
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" \
         content=\"default-src 'none'; script-src 'unsafe-inline'\"></head><body>\
         <img src=\"https://example.invalid/x.png\"><script>nope();</script></body></html>",
    )
    .unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = headless(&browser, profile.path())
        .arg("--dump-dom")
        .arg(format!("file://{}", bad.display()))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("Uncaught ReferenceError") && log.contains("Content Security Policy"),
        "the negative control shows no console errors:\n{log}"
    );

    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", html.display());
    let dump = headless(&browser, profile.path())
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&dump.stdout);
    let log = String::from_utf8_lossy(&dump.stderr);
    assert!(dump.status.success(), "chromium failed:\n{log}");
    for bad in ["Uncaught", "CONSOLE", "Refused to", "ERR_"] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
        assert!(lines.is_empty(), "console errors:\n{}", lines.join("\n"));
    }
    // Three images: two bars each plus the stored-alone bar; 3x3 heatmap;
    // three histogram buckets; two files with new bytes in the diff.
    for id in [
        "chart-images",
        "chart-heatmap",
        "chart-histogram",
        "chart-diff",
    ] {
        assert_eq!(count(&dom, &format!("<svg id=\"{id}\"")), 1, "{id}");
    }
    assert_eq!(count(&dom, "class=\"bar-shared\""), 3);
    assert_eq!(count(&dom, "class=\"bar-unique\""), 3);
    assert_eq!(count(&dom, "class=\"bar-own-stored\""), 3);
    assert_eq!(count(&dom, "class=\"cell\""), 9);
    assert_eq!(count(&dom, "class=\"bar-hist\""), 3);
    assert_eq!(count(&dom, "class=\"bar-diff\""), 2);
    assert!(dom.contains("rechunked") && dom.contains("/app/b"));

    let shot = artifacts().join("stats-report.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let out = headless(&browser, profile.path())
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,2400")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot of the stats page: {}", shot.display());
}
