//! The build as a library call (issue 12): an embedder builds and extracts
//! images with the crates alone, no binary, many builds in one process.

use std::sync::atomic::Ordering;

use puzzle_chunker::ChunkParams;
use puzzle_oci::build::{build, BuildOptions, BuildProgress, Quiet};
use puzzle_oci::source::{self, Platform, SourceRef};
use puzzle_store::index::ChunkIndex;
use puzzle_store::{image, Store, StoreConfig};
use puzzle_testkit::{pseudo_random, text_like, Compression, Entry, Image};

fn layout(dir: &std::path::Path) {
    Image::new()
        .layer(
            &[
                Entry::dir("etc"),
                Entry::file("etc/os-release", b"ID=test\n"),
                Entry::file("usr/lib/big.bin", pseudo_random(1, 3 << 20)),
                Entry::symlink("lib", "usr/lib"),
                Entry::file("gone.txt", b"soon gone"),
            ],
            Compression::Gzip,
        )
        .layer(
            &[
                Entry::file("app/main.py", text_like(2, 200 << 10)),
                Entry::hardlink("app/main-link.py", "app/main.py"),
                Entry::whiteout("gone.txt"),
            ],
            Compression::Zstd,
        )
        .write_oci_layout(dir, "v1")
        .unwrap();
}

/// Counts what the build reports, from both of its threads.
#[derive(Default)]
struct Seen {
    planned: std::sync::Mutex<Option<u64>>,
    read_done: std::sync::atomic::AtomicUsize,
    chunk_done: std::sync::atomic::AtomicUsize,
}

impl BuildProgress for Seen {
    fn planned(&self, bytes: u64) {
        *self.planned.lock().unwrap() = Some(bytes);
    }
    fn read_done(&self, _layer: usize) {
        self.read_done.fetch_add(1, Ordering::SeqCst);
    }
    fn chunk_done(&self, _layer: usize) {
        self.chunk_done.fetch_add(1, Ordering::SeqCst);
    }
}

/// The test image's layout and a new store in `t`, as an embedder opens
/// them: the store, its index and the image's reference.
fn setup(t: &std::path::Path) -> (Store, ChunkIndex, SourceRef) {
    layout(&t.join("layout"));
    let store = Store::open_or_create(
        &t.join("store"),
        &StoreConfig::new(ChunkParams::default(), 3),
    )
    .unwrap();
    let index = ChunkIndex::open(&store).unwrap();
    let src_ref = format!("oci:{}:v1", t.join("layout").display())
        .parse()
        .unwrap();
    (store, index, src_ref)
}

#[test]
fn an_embedder_builds_and_extracts_without_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (store, index, src_ref) = setup(t);
    let lock = store.lock().unwrap();
    let platform: Platform = "linux/amd64".parse().unwrap();
    let opts = BuildOptions::default();

    let seen = Seen::default();
    let src = source::open(&src_ref, &platform).unwrap();
    let first = build(&store, &index, src.as_ref(), "first", &opts, &seen).unwrap();
    assert_eq!(first.layers, 2);
    assert_eq!(first.layers_reused, 0);
    assert!(first.new_chunks > 0);
    let layer_bytes: u64 = src.image().layers.iter().map(|l| l.size).sum();
    assert_eq!(*seen.planned.lock().unwrap(), Some(layer_bytes));
    assert_eq!(seen.read_done.load(Ordering::SeqCst), 2);
    assert!(seen.chunk_done.load(Ordering::SeqCst) >= 2);

    // Built again under another name in the same process: nothing is read
    // or stored again, and the image is the same.
    let src = source::open(&src_ref, &platform).unwrap();
    let again = build(&store, &index, src.as_ref(), "again", &opts, &Quiet).unwrap();
    assert_eq!((again.layers_reused, again.new_chunks), (2, 0));
    assert_eq!(again.manifest, first.manifest);

    // Extracted through the library: the tree the layers make.
    let (opened, _pin) = image::open_pinned(&store, "again").unwrap();
    let out = t.join("rootfs");
    puzzle_store::extract::extract(&store, &opened.meta, &out).unwrap();
    let read = |p: &str| std::fs::read(out.join(p)).unwrap();
    assert_eq!(read("etc/os-release"), b"ID=test\n");
    assert!(read("usr/lib/big.bin") == pseudo_random(1, 3 << 20));
    assert!(
        read("lib/big.bin") == pseudo_random(1, 3 << 20),
        "through the symlink"
    );
    assert!(read("app/main.py") == text_like(2, 200 << 10));
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(out.join(p)).unwrap().ino();
    assert_eq!(ino("app/main.py"), ino("app/main-link.py"), "a hard link");
    assert!(!out.join("gone.txt").exists(), "whited out");
    drop(lock);
}

#[test]
fn a_cancelled_build_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, index, src_ref) = setup(tmp.path());
    let _lock = store.lock().unwrap();
    let src = source::open(&src_ref, &"linux/amd64".parse().unwrap()).unwrap();
    let opts = BuildOptions::default();
    opts.cancel.store(true, Ordering::SeqCst);
    let err = build(&store, &index, src.as_ref(), "x", &opts, &Quiet).unwrap_err();
    assert!(matches!(err, puzzle_oci::Error::Cancelled), "{err}");
    assert!(store.images().unwrap().is_empty());
}
