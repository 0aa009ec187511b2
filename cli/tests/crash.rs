//! kill -9 at random points: `puzzle build` and `puzzle gc` killed with
//! SIGKILL leave a store that verifies, lists no partial image, and a re-run
//! ends exactly where an uninterrupted run ends.
//!
//! The number of kill points is `PUZZLE_CRASH_POINTS` (default 8 for build,
//! 8 for gc, two kills per fresh store); delays come from a fixed seed
//! (`PUZZLE_CRASH_SEED` to change it) spread over the uninterrupted run time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use puzzle_testkit::SplitMix;

use crate::lifecycle::{pack_payload, verify_ok};
use crate::util::*;

/// splitmix64: enough randomness for kill delays, reproducible by seed.
fn rng() -> SplitMix {
    let seed = std::env::var("PUZZLE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0006);
    SplitMix(seed)
}

fn points() -> usize {
    std::env::var("PUZZLE_CRASH_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Runs `cmd`, SIGKILLs it after `delay` unless it finished first. Returns
/// whether it finished (successfully) on its own.
fn kill_after(cmd: &mut Command, delay: Duration) -> bool {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn puzzle");
    let until = Instant::now() + delay;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{cmd:?} failed on its own: {st}");
            return true;
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(5)));
    }
    child.kill().unwrap(); // SIGKILL
    let st = child.wait().unwrap();
    st.success()
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    ok(cmd);
    t.elapsed()
}

fn blob_names(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn copy_store(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn build_killed_anywhere_leaves_a_valid_store_and_reruns_identically() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = format!("oci:{}:django-5.0.7", corpus.display());
    let reference = t.join("ref");
    let started = Instant::now();
    let want = build(&reference, &src, "django");
    let full = started.elapsed();
    let mut rng = rng();
    let n = points();
    let mut finished = 0;
    for i in 0..n.div_ceil(2) {
        let store = t.join(format!("s{i}"));
        for _ in 0..2 {
            let delay = full.mul_f64(rng.unit() * 1.1);
            let done = kill_after(
                puzzle(&store).args(["build", &src, "--tag", "django"]),
                delay,
            );
            finished += usize::from(done);
            if !store.join("puzzle.json").exists() {
                continue; // killed before the store existed
            }
            verify_ok(&store);
            let listed = images(&store);
            assert!(
                listed.is_empty() || (listed.len() == 1 && listed[0].manifest == want.manifest),
                "a partial image is listed after a kill at {delay:?}: {listed:?}"
            );
        }
        let again = build(&store, &src, "django");
        assert_eq!(
            (&again.manifest, &again.metadata),
            (&want.manifest, &want.metadata),
            "a re-run after kills differs from an uninterrupted build"
        );
        verify_ok(&store);
        std::fs::remove_dir_all(&store).unwrap();
    }
    eprintln!("build crash test: {n} kill points, {finished} runs finished before their kill");
}

#[test]
fn gc_killed_anywhere_leaves_a_valid_store_and_reruns_identically() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = |tag: &str| format!("oci:{}:{tag}", corpus.display());
    // 5.0.7 first, so the shared packs hold chunks only 5.0.7 used.
    let template = t.join("template");
    build(&template, &src("django-5.0.7"), "django-5.0.7");
    build(&template, &src("django-5.0.8"), "django-5.0.8");
    ok(puzzle(&template).args(["rm", "django-5.0.7"]));

    let reference = t.join("ref");
    copy_store(&template, &reference);
    let full = timed(puzzle(&reference).args(["gc", "--repack-below", "1"]));
    verify_ok(&reference);
    let want_blobs = blob_names(&reference);
    let want_payload = pack_payload(&reference);
    let x_ref = t.join("x-ref");
    extract(&reference, "django-5.0.8", &x_ref);

    let mut rng = rng();
    let n = points();
    let store = t.join("s");
    for _ in 0..n.div_ceil(2) {
        copy_store(&template, &store);
        for _ in 0..2 {
            let delay = full.mul_f64(rng.unit() * 1.1);
            kill_after(puzzle(&store).args(["gc", "--repack-below", "1"]), delay);
            verify_ok(&store);
            let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
            assert_eq!(names, ["django-5.0.8"], "after a gc kill at {delay:?}");
        }
        ok(puzzle(&store).args(["gc", "--repack-below", "1"]));
        verify_ok(&store);
        assert_eq!(blob_names(&store), want_blobs, "re-run gc ends elsewhere");
        assert_eq!(pack_payload(&store), want_payload);
    }
    let (code, out) = crate::lifecycle::verify(&store, &["--full"]);
    assert_eq!(code, 0, "{out}");
    let x = t.join("x");
    extract(&store, "django-5.0.8", &x);
    assert_same_tree(&x_ref, &x);
    if let Some(rootfs) = umoci_rootfs(&corpus, "django-5.0.8") {
        assert_same_tree(&rootfs, &x);
    }
    eprintln!("gc crash test: {n} kill points; uninterrupted gc took {full:?}");
}

/// Issue 17: gc giving up chunks stored twice (base's chunks in its own pack
/// and again in python3's, two stores merged) killed anywhere leaves a
/// valid store, and a re-run ends where an uninterrupted gc ends.
#[test]
fn gc_of_chunks_stored_twice_killed_anywhere_reruns_identically() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = |tag: &str| format!("oci:{}:{tag}", corpus.display());
    let template = t.join("template");
    build(&template, &src("base"), "base");
    build(&t.join("other"), &src("python3"), "python3");
    merge_stores(&t.join("other"), &template);

    let reference = t.join("ref");
    copy_store(&template, &reference);
    let full = timed(puzzle(&reference).args(["gc"]));
    let want_blobs = blob_names(&reference);
    assert!(pack_payload(&reference) < pack_payload(&template) * 2 / 3);

    let mut rng = rng();
    let n = points();
    let store = t.join("s");
    for _ in 0..n.div_ceil(2) {
        copy_store(&template, &store);
        for _ in 0..2 {
            let delay = full.mul_f64(rng.unit() * 1.1);
            kill_after(puzzle(&store).args(["gc"]), delay);
            verify_ok(&store);
            let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
            assert_eq!(names, ["base", "python3"], "after a gc kill at {delay:?}");
        }
        ok(puzzle(&store).args(["gc"]));
        verify_ok(&store);
        assert_eq!(blob_names(&store), want_blobs, "re-run gc ends elsewhere");
    }
    for tag in ["base", "python3"] {
        let x = t.join(tag);
        extract(&store, tag, &x);
        if let Some(rootfs) = umoci_rootfs(&corpus, tag) {
            assert_same_tree(&rootfs, &x);
        }
    }
    eprintln!("dedup gc crash test: {n} kill points; uninterrupted gc took {full:?}");
}
