//! `puzzle pull docker://...` against a local `docker-registry` holding a
//! puzzle image (copied in from a store with `skopeo copy`), behind the
//! logging proxy of regkit.rs: only Range requests for the frames a store
//! lacks, the image the remote one, and every command working on it.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::regkit::*;
use crate::util::*;

/// `puzzle pull --json`'s summary, as a consumer reads it.
#[derive(Debug, Deserialize)]
struct Pulled {
    image: String,
    remote_manifest: String,
    manifest: String,
    identical: bool,
    chunks: u64,
    chunks_local: u64,
    chunks_fetched: u64,
    frames_fetched: u64,
    frame_bytes_fetched: u64,
    blobs: usize,
    blobs_skipped: usize,
    bytes_transferred: u64,
    requests: u64,
    chunk_bytes_fetched: u64,
    packs_adopted: usize,
    pack_bytes_adopted: u64,
    stored_bytes: u64,
}

fn pull(store: &Path, src: &str, tag: &str) -> Pulled {
    let r = ok(puzzle(store).args(["pull", src, "--tag", tag, "--json"]));
    let line: Line<Pulled> = serde_json::from_str(r.stdout.trim()).expect("one pull line");
    assert_eq!(line.kind, "pull");
    line.data
}

/// Copies image `tag` of store `store` to `dest` in the registry, blobs and
/// manifest byte for byte.
fn push_store(reg: &Registry, store: &Path, tag: &str, dest: &str) {
    reg.copy_from(store, tag, dest, &["--preserve-digests"]);
}

fn image<'a>(list: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    list.iter()
        .map(|l| &l["data"])
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no image {name}"))
}

fn images_json(store: &Path) -> Vec<serde_json::Value> {
    ok(puzzle(store).args(["images", "--json"]))
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What the proxy logged since the last take: the blob GETs, the Range
/// headers they carried as (blob, first byte, last byte), and the manifest GETs.
fn blob_requests(proxy: &Proxy) -> (usize, Vec<(String, u64, u64)>, usize) {
    let log = proxy.take_log();
    let (mut gets, mut manifests) = (0, 0);
    let mut ranges = Vec::new();
    let mut blob = None;
    for l in &log {
        if let Some(get) = l.strip_prefix("GET ") {
            blob = get
                .split_once("/blobs/")
                .map(|(_, d)| d.split(' ').next().unwrap().to_owned());
            gets += usize::from(blob.is_some());
            manifests += usize::from(get.contains("/manifests/"));
        } else if let Some(r) = l.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let (a, b) = r.split_once('-').unwrap();
            let d = blob.take().expect("a Range on a blob GET");
            ranges.push((d, a.parse().unwrap(), b.parse().unwrap()));
        }
    }
    (gets, ranges, manifests)
}

#[test]
fn a_pull_fetches_only_the_frames_the_store_lacks() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b) = (t.join("a"), t.join("b"));
    build(&a, &format!("oci:{}:django-5.0.7", corpus.display()), "d7");
    build(&b, &format!("oci:{}:django-5.0.8", corpus.display()), "d8");
    push_store(&reg, &b, "d8", "lib/django:puzzle");
    let b_images = images_json(&b);
    let remote = image(&b_images, "d8");
    let remote_digest = remote["manifest"].as_str().unwrap().to_owned();
    let pack_bytes = remote["pack_bytes"].as_u64().unwrap();
    let proxy = Proxy::start(reg.port, None);
    let src = format!("docker://127.0.0.1:{}/lib/django:puzzle", proxy.port);

    let s = pull(&a, &src, "d8");
    let (gets, ranges, _) = blob_requests(&proxy);
    assert_eq!(s.image, "d8");
    assert_eq!(s.remote_manifest, remote_digest);
    assert_ne!(s.manifest, remote_digest, "the packs differ: a local twin");
    assert!(!s.identical);
    // Only Range requests, one per blob GET; what they asked for is what
    // came, and far less than the image's packs.
    assert_eq!(ranges.len(), gets, "a blob GET without Range");
    assert_eq!(gets as u64, s.requests);
    let asked: u64 = ranges.iter().map(|(_, a, b)| b - a + 1).sum();
    let metadata = remote["metadata_bytes"].as_u64().unwrap();
    assert!(s.chunks_fetched > 0 && s.chunks_local > 0, "{s:?}");
    assert!(s.frames_fetched > 0);
    assert!(asked >= metadata + s.frame_bytes_fetched, "{asked} {s:?}");
    assert!(
        asked < pack_bytes / 5,
        "{asked} bytes asked for, the packs are {pack_bytes}"
    );
    assert!(s.bytes_transferred >= asked && s.bytes_transferred < asked + 4096);
    assert_eq!(s.blobs, remote["packs"].as_u64().unwrap() as usize);

    // images shows both digests; the tree is the remote one.
    let a_images = images_json(&a);
    let pulled = image(&a_images, "d8");
    assert_eq!(pulled["manifest"], s.manifest.as_str());
    assert_eq!(pulled["remote_manifest"], remote_digest.as_str());
    assert!(pulled["origin"]
        .as_str()
        .unwrap()
        .ends_with("/lib/django:puzzle"));
    assert_eq!(
        image(&a_images, "d7")["remote_manifest"],
        serde_json::Value::Null
    );
    let human = ok(puzzle(&a).arg("images")).stdout;
    assert!(human.lines().next().unwrap().ends_with("PULLED"), "{human}");
    assert!(human.contains(&remote_digest[..19]), "{human}");
    let (ta, tb) = (t.join("ta"), t.join("tb"));
    extract(&b, "d8", &tb);
    extract(&a, "d8", &ta);
    assert_same_tree(&tb, &ta);
    ok(puzzle(&a).args(["verify", "--full"]));
    let stats = ok(puzzle(&a).args(["stats", "--json", "d7", "d8"]));
    assert!(stats.stdout.contains("\"d8\""), "{}", stats.stdout);
    if crate::mount::can_mount() {
        let mut m = crate::mount::Mount::new(&a, "d8", &t.join("mnt"), &[]);
        assert_same_tree(&tb, &m.dir);
        m.umount();
    }

    // Again: every chunk is local, only the manifest and metadata come.
    let again = pull(&a, &src, "d8");
    let (gets, ranges, manifests) = blob_requests(&proxy);
    assert_eq!((again.frames_fetched, again.chunks_fetched), (0, 0));
    assert_eq!(again.chunks_local, again.chunks);
    assert_eq!(again.blobs_skipped, again.blobs);
    assert_eq!((gets, manifests), (1, 1), "only the metadata blob");
    let md = remote["metadata"].as_str().unwrap().to_owned();
    assert_eq!(ranges, vec![(md, 0, metadata - 1)]);
    assert_eq!(again.manifest, s.manifest);

    // gc keeps it (and its origin) even when it rewrites it.
    ok(puzzle(&a).args(["rm", "d7"]));
    ok(puzzle(&a).args(["gc", "--repack-below", "1"]));
    let after = images_json(&a);
    let kept = image(&after, "d8");
    assert_ne!(kept["manifest"], s.manifest.as_str(), "gc rewrote it");
    assert_eq!(kept["remote_manifest"], remote_digest.as_str());
    ok(puzzle(&a).args(["verify", "--full"]));
    let tc = t.join("tc");
    extract(&a, "d8", &tc);
    assert_same_tree(&tb, &tc);
    // rm + gc frees it.
    ok(puzzle(&a).args(["rm", "d8"]));
    ok(puzzle(&a).arg("gc"));
    let left = std::fs::read_dir(a.join("blobs/sha256")).unwrap().count();
    assert_eq!(left, 0, "blobs left after the last image went");
}

#[test]
fn a_pull_into_an_empty_or_the_pushing_store() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let b = t.join("b");
    build_with(
        &b,
        &format!("oci:{}:python3", corpus.display()),
        "p",
        &["--zstd-level", "5"],
    );
    push_store(&reg, &b, "p", "lib/python:puzzle");
    let proxy = Proxy::start(reg.port, None);
    let src = format!("docker://127.0.0.1:{}/lib/python:puzzle", proxy.port);

    // A new store takes the image's settings and fetches every pack once
    // (adopted whole).
    let e = t.join("e");
    let s = pull(&e, &src, "p");
    let (_, ranges, _) = blob_requests(&proxy);
    assert_eq!(s.chunks_local, 0);
    assert_eq!(s.chunks_fetched, s.chunks);
    assert_eq!(s.blobs_skipped, 0);
    let mut sorted = ranges.clone();
    sorted.sort();
    assert!(
        sorted
            .windows(2)
            .all(|w| w[0].0 != w[1].0 || w[0].2 < w[1].1),
        "a byte asked for twice: {sorted:?}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.join("puzzle.json")).unwrap()).unwrap();
    assert_eq!(config["compression"]["level"], 5);
    let (tb, te) = (t.join("tb"), t.join("te"));
    extract(&b, "p", &tb);
    extract(&e, "p", &te);
    assert_same_tree(&tb, &te);
    ok(puzzle(&e).arg("verify"));

    // On a terminal: a bar per pack fetched from, bytes with percent and rate.
    if have("script") {
        let cmd = format!(
            "stty cols 160 rows 40; exec {} --store {} pull {src} --tag p",
            env!("CARGO_BIN_EXE_puzzle"),
            t.join("e2").display()
        );
        let out = ok(std::process::Command::new("script")
            .args(["-qfec", &cmd, "/dev/null"])
            .env_remove("PUZZLE_STORE"))
        .stdout;
        assert!(out.contains("pulled p"), "{out}");
        assert!(
            out.split(['\r', '\n'])
                .any(|l| l.contains("pack ") && l.contains('%') && l.contains("B/s")),
            "no pack bar with percent and rate:\n{out}"
        );
    }

    // Into the store that pushed it: nothing to fetch, and the twin is the
    // remote manifest byte for byte.
    let s = pull(&b, &src, "q");
    assert!(s.identical, "{s:?}");
    assert_eq!(s.manifest, s.remote_manifest);
    assert_eq!(s.frames_fetched, 0);
}

#[test]
fn pull_errors_are_one_line() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    reg.push(&corpus, "base", "lib/base:1");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let port = reg.port;
    let cases = [
        (
            format!("docker://127.0.0.1:{port}/lib/base:1"),
            "is not a puzzle image",
        ),
        (format!("docker://127.0.0.1:{port}/lib/base:nope"), "404"),
        (
            format!("docker://127.0.0.1:{}/lib/base:1", free_port()),
            "cannot reach the registry",
        ),
    ];
    for (src, want) in &cases {
        let r = run(puzzle(&store).args(["pull", src, "--tag", "x"]));
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(want), "{}", r.stderr);
        assert!(r.stderr.contains(src.as_str()), "{}", r.stderr);
    }
    assert!(!store.exists(), "a failed pull created the store");
    let r = run(puzzle(&store).args(["pull", "oci:./x", "--tag", "x"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

/// `puzzle push --json` of image `name` of `store` to `dest`: the pushed
/// manifest digest.
fn push(store: &Path, name: &str, dest: &str) -> String {
    let r = ok(puzzle(store).args(["push", name, dest, "--json"]));
    let line: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(line["type"], "push");
    line["data"]["manifest"].as_str().unwrap().to_owned()
}

/// Issue 13: push, then pull into a fresh store: the same manifest digest
/// (every pack adopted whole), and a tree `umoci unpack` agrees with.
#[test]
fn issue_13_push_then_pull_into_a_fresh_store_gives_the_pushed_image() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let a = t.join("a");
    build(&a, &format!("oci:{}:django-5.0.8", corpus.display()), "d8");
    let pushed = push(
        &a,
        "d8",
        &format!("docker://127.0.0.1:{}/lib/django:p", reg.port),
    );
    let pack_bytes = image(&images_json(&a), "d8")["pack_bytes"]
        .as_u64()
        .unwrap();
    let proxy = Proxy::start(reg.port, None);
    let src = format!("docker://127.0.0.1:{}/lib/django:p", proxy.port);
    let e = t.join("e");
    let s = pull(&e, &src, "d8");
    eprintln!(
        "fresh-store pull of django-5.0.8: {} bytes transferred in {} requests, \
         {} of {} packs adopted ({} bytes; packs {pack_bytes} bytes), {} frames ({} bytes) fetched",
        s.bytes_transferred,
        s.requests,
        s.packs_adopted,
        s.blobs,
        s.pack_bytes_adopted,
        s.frames_fetched,
        s.frame_bytes_fetched
    );
    assert_eq!(s.manifest, pushed, "{s:?}");
    assert!(s.identical, "{s:?}");
    assert_eq!(s.packs_adopted, s.blobs, "{s:?}");
    assert_eq!(s.pack_bytes_adopted, pack_bytes, "{s:?}");
    let listed = images_json(&e);
    assert_eq!(image(&listed, "d8")["manifest"], pushed.as_str());
    ok(puzzle(&e).args(["verify", "--full"]));
    let x = t.join("x");
    extract(&e, "d8", &x);
    match umoci_rootfs(&corpus, "django-5.0.8") {
        Some(rootfs) => assert_same_tree(&rootfs, &x),
        None => assert!(!require_tools(), "umoci is required"),
    }
}

/// The compressed bytes of the frames of image `tag` of store `from` that
/// hold a chunk store `lacking` does not have: what a pull into `lacking`
/// must fetch at least, at frame granularity.
fn frames_lacking(from: &Path, tag: &str, lacking: &Path) -> u64 {
    use puzzle_store::{image, index::ChunkIndex, Store};
    let from = Store::open(from).unwrap();
    let lacking = Store::open(lacking).unwrap();
    let index = ChunkIndex::open(&lacking).unwrap();
    let img = image::open(&from, tag).unwrap();
    let mut frames = std::collections::BTreeMap::new();
    for i in 0..img.meta.chunk_count() {
        let c = img.meta.chunk(i as u32).unwrap();
        if !index.has(&c.id).unwrap() {
            frames.insert((c.loc.pack, c.loc.offset), u64::from(c.loc.clen));
        }
    }
    frames.values().sum()
}

/// The chunks of image `tag` of store `from` that store `lacking` does not
/// hold, each compressed alone with zstd at `from`'s level (what a store
/// of one frame per chunk would keep of them): (compressed bytes, raw
/// bytes, chunks). Each chunk counts once.
fn chunks_lacking(from: &Path, tag: &str, lacking: &Path) -> (u64, u64, u64) {
    use puzzle_store::{frame::FrameReader, image, index::ChunkIndex, Store};
    let from = Store::open(from).unwrap();
    let level = from.config().compression.level;
    let index = ChunkIndex::open(&Store::open(lacking).unwrap()).unwrap();
    let img = image::open(&from, tag).unwrap();
    let mut frames = FrameReader::new(&from, 8 << 20);
    let mut seen = BTreeSet::new();
    let (mut compressed, mut raw) = (0, 0);
    for i in 0..img.meta.chunk_count() {
        let c = img.meta.chunk(i as u32).unwrap();
        if index.has(&c.id).unwrap() || !seen.insert(c.id) {
            continue;
        }
        let bytes = frames.chunk(&c.id, &c.loc).unwrap();
        compressed += zstd::bulk::compress(&bytes, level).unwrap().len() as u64;
        raw += bytes.len() as u64;
    }
    (compressed, raw, seen.len() as u64)
}

/// Issue 13: django-5.0.7 and 5.0.8 built into two stores; 5.0.8 pushed
/// from one and pulled into the other. With the default frames (1 MiB)
/// only frames come (nothing adopted), exactly those holding the chunks
/// the store lacks, and less than half the gzip layers `skopeo copy` would
/// move; but whole frames around a few chunks are 2.7x those chunks
/// compressed alone. From a store made with `--frame-target 262144`, the
/// pull moves at most 2x the lacking chunks compressed alone (the issue's
/// bound). Figures: benches/RESULTS.md, "Frame target".
#[test]
fn a_pull_between_versions_moves_about_the_frames_the_store_lacks() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let old: BTreeSet<String> = corpus_layers(&corpus, "django-5.0.7")
        .into_iter()
        .map(|l| l.0)
        .collect();
    let gzip: u64 = corpus_layers(&corpus, "django-5.0.8")
        .into_iter()
        .filter(|l| !old.contains(&l.0))
        .map(|l| l.1)
        .sum();
    for (case, target) in [("default", None), ("small", Some("262144"))] {
        let (a, b) = (t.join(format!("a-{case}")), t.join(format!("b-{case}")));
        build(&a, &format!("oci:{}:django-5.0.7", corpus.display()), "d7");
        let extra: Vec<&str> = target.map_or(vec![], |n| vec!["--frame-target", n]);
        build_with(
            &b,
            &format!("oci:{}:django-5.0.8", corpus.display()),
            "d8",
            &extra,
        );
        let src = format!("docker://127.0.0.1:{}/lib/django:{case}", reg.port);
        push(&b, "d8", &src);
        let frames = frames_lacking(&b, "d8", &a);
        let (alone, raw, n) = chunks_lacking(&b, "d8", &a);
        let metadata = image(&images_json(&b), "d8")["metadata_bytes"]
            .as_u64()
            .unwrap();
        let s = pull(&a, &src, "d8");
        eprintln!(
            "django-5.0.7 store pulling 5.0.8 ({case} frames): {} bytes transferred in {} \
             requests ({} of frames, {metadata} of metadata); the {n} lacking chunks \
             ({raw} raw bytes) compressed alone: {alone} bytes ({:.2}x); skopeo copy would \
             move {gzip} bytes of gzip layers ({:.2}x); stored {} bytes",
            s.bytes_transferred,
            s.requests,
            s.frame_bytes_fetched,
            s.bytes_transferred as f64 / alone as f64,
            s.bytes_transferred as f64 / gzip as f64,
            s.stored_bytes,
        );
        assert_eq!(s.packs_adopted, 0, "{s:?}");
        assert_eq!((s.chunks_fetched, s.chunk_bytes_fetched), (n, raw), "{s:?}");
        assert!(frames > 0 && s.frame_bytes_fetched == frames, "{s:?}");
        assert!(s.bytes_transferred <= 2 * frames, "{s:?} {frames}");
        assert!(s.bytes_transferred * 2 < gzip, "{s:?} {gzip}");
        if target.is_some() {
            assert!(
                s.bytes_transferred <= 2 * alone,
                "{} bytes transferred, the lacking chunks compressed alone are {alone}",
                s.bytes_transferred
            );
        }
    }
}

/// Files in `dir` (none if it is missing).
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// The registry stopped in the middle of a pull into a fresh store (one
/// pack adopted, the next coming): one line, a non-zero exit, no image and
/// no blob left, and the store verifies; with the registry restarted on
/// the same data and port, the pull succeeds.
#[test]
fn a_registry_stopped_mid_pull_leaves_nothing_and_a_retry_succeeds() {
    let Some(corpus) = corpus() else { return };
    let Some(mut reg) = Registry::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let b = t.join("b");
    build(&b, &format!("oci:{}:django-5.0.8", corpus.display()), "d8");
    let pushed = push(
        &b,
        "d8",
        &format!("docker://127.0.0.1:{}/lib/django:p", reg.port),
    );
    // About 12 s for the image's 47 MB.
    let proxy = Proxy::slow(reg.port, 4 << 20);
    let src = format!("docker://127.0.0.1:{}/lib/django:p", proxy.port);
    let e = t.join("e");
    let child = puzzle(&e)
        .args(["pull", &src, "--tag", "d8"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once the first pack is in blobs/.
    let start = std::time::Instant::now();
    while files(&e.join("blobs/sha256")).is_empty() {
        assert!(start.elapsed().as_secs() < 60, "no pack adopted in 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    reg.stop();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "registry stopped mid-pull after {:?}: {stderr}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("registry"), "{stderr}");
    assert!(images_json(&e).is_empty());
    assert_eq!(
        files(&e.join("blobs/sha256")),
        Vec::<std::path::PathBuf>::new()
    );
    assert!(
        files(&e.join("tmp")).is_empty(),
        "{:?}",
        files(&e.join("tmp"))
    );
    ok(puzzle(&e).arg("verify"));

    reg.restart();
    let s = pull(&e, &src, "d8");
    assert!(s.identical, "{s:?}");
    assert_eq!(s.manifest, pushed);
    ok(puzzle(&e).args(["verify", "--full"]));
}
