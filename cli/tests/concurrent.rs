//! Several processes on one store at once: builds serialize on the writer
//! lock, readers pin what they read, gc keeps what is pinned.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lifecycle::{pack_chunks, verify_ok};
use crate::util::*;

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn puzzle")
}

fn wait_ok(c: Child, what: &str) {
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_umoci(corpus: &Path, tag: &str, x: &Path) {
    if let Some(rootfs) = umoci_rootfs(corpus, tag) {
        assert_same_tree(&rootfs, x);
    }
}

#[test]
fn two_builds_sharing_a_base_into_a_new_store_at_once() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let src = |tag: &str| format!("oci:{}:{tag}", corpus.display());
    // Both also race to create the store.
    let a = spawn(puzzle(&store).args(["build", &src("django-5.0.7"), "--tag", "a"]));
    let b = spawn(puzzle(&store).args(["build", &src("django-5.0.8"), "--tag", "b"]));
    wait_ok(a, "build a");
    wait_ok(b, "build b");
    verify_ok(&store);
    // The shared base was stored once: the same chunks as building both in
    // turn (frames may group them otherwise if b went first).
    let seq = t.join("seq");
    build(&seq, &src("django-5.0.7"), "a");
    build(&seq, &src("django-5.0.8"), "b");
    assert_eq!(pack_chunks(&store), pack_chunks(&seq));
    for (name, tag) in [("a", "django-5.0.7"), ("b", "django-5.0.8")] {
        let x = t.join(format!("x-{name}"));
        extract(&store, name, &x);
        check_umoci(&corpus, tag, &x);
    }
}

#[test]
fn build_extract_rm_and_gc_at_once() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let src = |tag: &str| format!("oci:{}:{tag}", corpus.display());
    build(&store, &src("django-5.0.7"), "django-5.0.7");
    build(&store, &src("django-5.0.8"), "django-5.0.8");

    // A reader of 5.0.7 (it pins the image), then: 5.0.7 is removed and
    // collected with every sparse pack repacked, while another build runs.
    let x7 = t.join("x7");
    let reader = spawn(puzzle(&store).arg("extract").arg("django-5.0.7").arg(&x7));
    let pins = store.join("pins");
    let until = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&pins).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < until, "extract never pinned its image");
        std::thread::sleep(Duration::from_millis(2));
    }
    let builder = spawn(puzzle(&store).args(["build", &src("python3"), "--tag", "python3"]));
    ok(puzzle(&store).args(["rm", "django-5.0.7"]));
    // Reading the image must survive every gc that runs meanwhile.
    for _ in 0..3 {
        ok(puzzle(&store).args(["gc", "--repack-below", "1"]));
    }
    let reader_out = reader.wait_with_output().unwrap();
    assert!(
        reader_out.status.success(),
        "extract during gc failed: {}",
        String::from_utf8_lossy(&reader_out.stderr)
    );
    wait_ok(builder, "build python3");
    // Unpinned now: this gc collects 5.0.7 for real.
    ok(puzzle(&store).args(["gc", "--repack-below", "1"]));
    verify_ok(&store);
    let (code, out) = crate::lifecycle::verify(&store, &["--full"]);
    assert_eq!(code, 0, "{out}");
    let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["django-5.0.8", "python3"]);
    check_umoci(&corpus, "django-5.0.7", &x7);
    for tag in ["django-5.0.8", "python3"] {
        let x = t.join(format!("x-{tag}"));
        extract(&store, tag, &x);
        check_umoci(&corpus, tag, &x);
    }
}
