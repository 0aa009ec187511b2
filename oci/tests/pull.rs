//! Pull as a library call, with an in-memory "registry" ([`MemBlobs`]): only
//! the frames holding chunks the store lacks are read, and the pulled image
//! is the remote one.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;

use puzzle_chunker::ChunkParams;
use puzzle_oci::build::{build, BuildOptions, Quiet};
use puzzle_oci::pull::{pull, PullOptions, PullSummary, Remote};
use puzzle_oci::source;
use puzzle_store::blobs::MemBlobs;
use puzzle_store::index::ChunkIndex;
use puzzle_store::manifest::{ANNOTATION_ORIGIN_MANIFEST, ANNOTATION_ORIGIN_REF};
use puzzle_store::{image, BlobDigest, Store, StoreConfig};
use puzzle_testkit::{
    compare_trees, pseudo_random, text_like, CompareOpts, Compression, Entry, Image,
};

/// Version 1 and 2 of an image: 2 shares v1's big file (first in chunking
/// order) and adds a new one after it.
fn layout(dir: &Path, version: u32) {
    let mut entries = vec![
        Entry::dir("etc"),
        Entry::file("etc/os-release", format!("VERSION={version}\n")),
        Entry::file("usr/lib/big.bin", pseudo_random(1, 3 << 20)),
        Entry::file(
            "usr/share/doc.txt",
            text_like(u64::from(version), 300 << 10),
        ),
    ];
    if version == 2 {
        entries.push(Entry::file("zz/new.bin", pseudo_random(7, 2 << 20)));
        entries.push(Entry::hardlink("zz/new-link.bin", "zz/new.bin"));
    }
    Image::new()
        .layer(&entries, Compression::Gzip)
        .write_oci_layout(dir, "img")
        .unwrap();
}

fn store_at(dir: &Path, level: i32) -> (Store, ChunkIndex) {
    let store =
        Store::open_or_create(dir, &StoreConfig::new(ChunkParams::default(), level)).unwrap();
    let index = ChunkIndex::open(&store).unwrap();
    (store, index)
}

/// A store holding version `version` as `v`.
fn built(t: &Path, name: &str, version: u32, level: i32) -> (Store, ChunkIndex) {
    let layout_dir = t.join(format!("layout-{name}"));
    layout(&layout_dir, version);
    let (store, index) = store_at(&t.join(name), level);
    let _lock = store.lock().unwrap();
    let src_ref = format!("oci:{}:img", layout_dir.display()).parse().unwrap();
    let src = source::open(&src_ref, &"linux/amd64".parse().unwrap()).unwrap();
    build(
        &store,
        &index,
        src.as_ref(),
        "v",
        &BuildOptions::default(),
        &Quiet,
    )
    .unwrap();
    (store, index)
}

/// Every blob of `store` in memory, and the bytes of the manifest `v`.
fn registry(store: &Store) -> (MemBlobs, Vec<u8>) {
    let mut m = MemBlobs::new();
    for (d, _) in store.blobs().unwrap() {
        m.add(std::fs::read(store.blob_path(&d)).unwrap());
    }
    let manifest =
        std::fs::read(store.blob_path(&store.resolve("v").unwrap().manifest.digest)).unwrap();
    (m, manifest)
}

/// The frames (pack, offset, length) of image `v` in `store` that hold a
/// chunk `index` lacks; and all its frames.
fn frames(store: &Store, lacking: &ChunkIndex) -> (BTreeSet<(BlobDigest, u64, usize)>, usize) {
    let img = image::open(store, "v").unwrap();
    let mut all = BTreeSet::new();
    let mut missing = BTreeSet::new();
    for i in 0..img.meta.chunk_count() {
        let c = img.meta.chunk(i as u32).unwrap();
        let f = (c.loc.pack, c.loc.offset, c.loc.clen as usize);
        all.insert(f);
        if !lacking.has(&c.id).unwrap() {
            missing.insert(f);
        }
    }
    (missing, all.len())
}

fn packs_of(store: &Store) -> BTreeSet<BlobDigest> {
    let img = image::open(store, "v").unwrap();
    img.manifest.packs().map(|p| p.digest).collect()
}

/// Pack ranges read from `m` since the last call.
fn pack_reads(m: &MemBlobs, packs: &BTreeSet<BlobDigest>) -> Vec<(BlobDigest, u64, usize)> {
    std::mem::take(&mut *m.reads.lock().unwrap())
        .into_iter()
        .filter(|r| packs.contains(&r.0))
        .collect()
}

fn pull_into(
    store: &Store,
    index: &ChunkIndex,
    m: &MemBlobs,
    manifest: &[u8],
    tag: &str,
) -> PullSummary {
    let _lock = store.lock().unwrap();
    let from = Remote {
        blobs: m,
        manifest,
        origin: "docker://127.0.0.1:5000/lib/img:2",
    };
    pull(
        store,
        index,
        &from,
        tag,
        &PullOptions::default(),
        &puzzle_oci::pull::Quiet,
    )
    .unwrap()
}

fn same_tree(a: (&Store, &str), b: (&Store, &str), t: &Path) {
    let (da, db) = (t.join(format!("x-{}", a.1)), t.join(format!("y-{}", b.1)));
    for ((store, name), dir) in [(a, &da), (b, &db)] {
        let img = image::open(store, name).unwrap();
        puzzle_store::extract::extract(store, &img.meta, dir).unwrap();
    }
    if let Err(d) = compare_trees(&da, &db, &CompareOpts::default()) {
        panic!("the trees differ: {d:?}");
    }
}

#[test]
fn a_pull_reads_only_the_frames_holding_missing_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Built apart at different levels: no pack in common.
    let (a, ai) = built(t, "a", 1, 3);
    let (b, bi) = built(t, "b", 2, 5);
    let (m, manifest) = registry(&b);
    let packs = packs_of(&b);
    assert!(a.blobs().unwrap().iter().all(|(d, _)| !packs.contains(d)));
    let (want, all) = frames(&b, &ai);
    assert!(
        !want.is_empty() && want.len() < all,
        "{} of {all} frames",
        want.len()
    );

    let s = pull_into(&a, &ai, &m, &manifest, "pulled");
    let read: BTreeSet<(BlobDigest, u64, usize)> = pack_reads(&m, &packs).into_iter().collect();
    assert_eq!(read, want, "frames read");
    assert_eq!(s.frames_fetched, want.len() as u64);
    assert_eq!(
        s.frame_bytes_fetched,
        want.iter().map(|f| f.2 as u64).sum::<u64>()
    );
    assert!(s.chunks_local > 0 && s.chunks_fetched > 0, "{s:?}");
    assert!(!s.identical);
    same_tree((&a, "pulled"), (&b, "v"), t);

    // index.json names the local twin and records the origin.
    let r = a.resolve("pulled").unwrap();
    assert_eq!(r.manifest.digest.to_string(), s.manifest);
    let digest = BlobDigest::of(&manifest).to_string();
    assert_eq!(s.remote_manifest, digest);
    assert_eq!(r.manifest.annotations[ANNOTATION_ORIGIN_MANIFEST], digest);
    assert_eq!(
        r.manifest.annotations[ANNOTATION_ORIGIN_REF],
        "docker://127.0.0.1:5000/lib/img:2"
    );
    // Its chunks are indexed: a verify finds nothing wrong.
    let report = puzzle_store::verify::verify(&a, Some(&ai), true).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Again: every chunk is local now, no frame is read.
    let s = pull_into(&a, &ai, &m, &manifest, "again");
    assert!(pack_reads(&m, &packs).is_empty());
    assert_eq!((s.frames_fetched, s.chunks_fetched), (0, 0));
    assert_eq!(s.blobs_skipped, s.blobs);
    assert_eq!(
        s.manifest,
        a.resolve("pulled").unwrap().manifest.digest.to_string()
    );

    // Into the store that holds the remote packs: the twin is the remote
    // manifest itself.
    let s = pull_into(&b, &bi, &m, &manifest, "twin");
    assert!(s.identical, "{s:?}");
    assert_eq!(s.manifest, digest);
}

/// Issue 13: into an empty store every pack is adopted whole (each read
/// once, front to back) and the twin is the remote manifest itself.
#[test]
fn a_pull_into_an_empty_store_adopts_every_pack_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (b, _) = built(t, "b", 2, 3);
    let (m, manifest) = registry(&b);
    let packs = packs_of(&b);
    let (e, ei) = store_at(&t.join("e"), 3);
    let s = pull_into(&e, &ei, &m, &manifest, "v");
    let mut reads = pack_reads(&m, &packs);
    reads.sort();
    let mut want = Vec::new();
    for p in &packs {
        let size = std::fs::metadata(b.blob_path(p)).unwrap().len();
        // Ranges of at most REQUEST_CAP, front to back.
        let mut at = 0;
        while at < size {
            let n = (size - at).min(puzzle_oci::pull::REQUEST_CAP);
            want.push((*p, at, n as usize));
            at += n;
        }
        assert_eq!(
            std::fs::read(e.blob_path(p)).unwrap(),
            std::fs::read(b.blob_path(p)).unwrap()
        );
    }
    assert_eq!(reads, want);
    assert_eq!((s.chunks_local, s.frames_fetched), (0, 0), "{s:?}");
    assert_eq!(s.packs_adopted, packs.len(), "{s:?}");
    assert_eq!(s.packs_written, 0, "{s:?}");
    assert!(s.identical, "{s:?}");
    assert_eq!(s.manifest, BlobDigest::of(&manifest).to_string());
    same_tree((&e, "v"), (&b, "v"), t);
}

#[test]
fn a_failed_or_cancelled_pull_keeps_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, ai) = built(t, "a", 1, 3);
    let (b, _) = built(t, "b", 2, 3);
    let (m, manifest) = registry(&b);
    let before = a.blobs().unwrap();
    let from = Remote {
        blobs: &m,
        manifest: &manifest,
        origin: "r",
    };
    let _lock = a.lock().unwrap();
    let opts = PullOptions::default();
    opts.cancel.store(true, Ordering::SeqCst);
    let err = pull(&a, &ai, &from, "x", &opts, &puzzle_oci::pull::Quiet).unwrap_err();
    assert!(matches!(err, puzzle_oci::Error::Cancelled), "{err}");

    // A damaged frame: its chunk fails its id, nothing is stored.
    let (want, _) = frames(&b, &ai);
    let (pack, off, _) = *want.iter().next().unwrap();
    let mut bytes = std::fs::read(b.blob_path(&pack)).unwrap();
    bytes[off as usize + 100] ^= 0xff;
    let mut bad = MemBlobs::new();
    for (d, _) in b.blobs().unwrap() {
        let data = if d == pack {
            bytes.clone()
        } else {
            std::fs::read(b.blob_path(&d)).unwrap()
        };
        bad.insert(d, data);
    }
    let from = Remote {
        blobs: &bad,
        ..from
    };
    let err = pull(
        &a,
        &ai,
        &from,
        "x",
        &PullOptions::default(),
        &puzzle_oci::pull::Quiet,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("corrupt") || format!("{err:?}").contains("Corrupt"),
        "{err:?}"
    );
    assert_eq!(a.blobs().unwrap(), before, "blobs were left behind");
    assert!(a.resolve("x").is_err());

    // The same pack adopted whole into an empty store: its digest fails,
    // nothing is stored.
    let (e, ei) = store_at(&t.join("e"), 3);
    let _lock = e.lock().unwrap();
    let err = pull(
        &e,
        &ei,
        &from,
        "x",
        &PullOptions::default(),
        &puzzle_oci::pull::Quiet,
    )
    .unwrap_err();
    assert!(
        matches!(err, puzzle_oci::Error::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(e.images().unwrap().is_empty());
    assert!(e.blobs().unwrap().is_empty(), "{:?}", e.blobs().unwrap());
}

#[test]
fn a_plain_image_or_another_chunker_is_refused_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (b, _) = built(t, "b", 2, 3);
    let (m, manifest) = registry(&b);
    let other = Store::open_or_create(
        &t.join("other"),
        &StoreConfig::new(ChunkParams::new(8192, 32768, 131072).unwrap(), 3),
    )
    .unwrap();
    let oi = ChunkIndex::open(&other).unwrap();
    let _lock = other.lock().unwrap();
    let try_pull = |manifest: &[u8]| {
        let from = Remote {
            blobs: &m,
            manifest,
            origin: "docker://h/r:1",
        };
        pull(
            &other,
            &oi,
            &from,
            "x",
            &PullOptions::default(),
            &puzzle_oci::pull::Quiet,
        )
        .unwrap_err()
        .to_string()
    };
    let e = try_pull(&manifest);
    assert!(
        e.contains("chunked with") && e.contains("8192/32768/131072"),
        "{e}"
    );
    let plain = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":2},"layers":[]}"#;
    let e = try_pull(plain);
    assert!(e.contains("is not a puzzle image"), "{e}");
    for e in [try_pull(&manifest), try_pull(plain)] {
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    assert!(other.images().unwrap().is_empty());
}
