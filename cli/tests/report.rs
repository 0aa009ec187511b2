//! Issue 15, item 5: commands say what they wait for and what they leave.
//! A writer waiting for the store lock names the holder; an interrupted
//! build stores nothing and leaves no temp files; gc reports the dead
//! chunks it keeps and the temp files it removes; a failed extract removes
//! what it wrote.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use puzzle_testkit::{pseudo_random, Compression, Entry, Image};
use serde::Deserialize;

use crate::lifecycle::verify_ok;
use crate::util::*;

/// A spawned `puzzle`, killed (and resumed first, if stopped) when dropped.
struct Proc {
    child: Option<Child>,
    pid: u32,
}

impl Proc {
    fn new(cmd: &mut std::process::Command) -> Proc {
        let child = cmd.spawn().expect("spawn puzzle");
        Proc {
            pid: child.id(),
            child: Some(child),
        }
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// Waits for it to end; its output.
    fn wait(mut self) -> std::process::Output {
        let child = self.child.take().expect("running");
        child.wait_with_output().unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {}", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(self.pid.to_string())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Lines of a child's stderr as they come, with the time each arrived.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<(Instant, String)> {
    let err = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    rx
}

fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn small_image(dir: &Path, tag: &str, seed: u64) -> String {
    Image::new()
        .layer(
            &[Entry::file("f.bin", pseudo_random(seed, 1 << 20))],
            Compression::Gzip,
        )
        .write_oci_layout(dir, tag)
        .unwrap();
    format!("oci:{}:{tag}", dir.display())
}

fn lock_pid(store: &Path) -> Option<u32> {
    std::fs::read_to_string(store.join("lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn tmp_entries(store: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(store.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Whether process `pid` has a file open under `dir` (a spool or a temp
/// file, unlinked or not).
fn has_open_file_under(pid: u32, dir: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|p| p.starts_with(dir))
}

/// A writer waiting for the lock says, after about a second, which PID
/// holds it (the holder records it in the lock file); the build's
/// `seconds` leave out the wait.
#[test]
fn waiting_for_the_lock_names_the_holder_and_is_not_timed() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let small = small_image(&t.join("layout"), "small", 1);
    build(&store, &small, "first");

    // The holder: a build, frozen as soon as it has taken the lock.
    let holder = Proc::new(
        puzzle(&store)
            .args(["build", &format!("oci:{}:python3", corpus.display())])
            .args(["--tag", "python3"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    until("the build to record its PID in the lock file", 60, || {
        lock_pid(&store) == Some(holder.pid())
    });
    holder.signal("-STOP");

    let started = Instant::now();
    let mut waiter = Proc::new(
        puzzle(&store)
            .args(["build", &small, "--tag", "second", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let lines = stderr_lines(waiter.child());
    let want = format!("waiting for the store lock held by PID {}", holder.pid());
    let (at, line) = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("the waiting build says why it waits");
    assert_eq!(line, want);
    let after = at - started;
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(10),
        "said after {after:?}"
    );
    // Keep it waiting a while longer, then let the holder finish.
    std::thread::sleep(Duration::from_millis(1500));
    let waited = started.elapsed();
    holder.signal("-CONT");
    let out = waiter.wait();
    assert!(out.status.success(), "{out:?}");
    let line: Line<BuildSummary> =
        serde_json::from_slice(&out.stdout).expect("one build line on stdout");
    // Building a 1 MiB image takes a fraction of a second; the wait alone
    // was over 2 s.
    assert!(waited > Duration::from_secs(2));
    assert!(
        line.data.seconds < 1.2,
        "seconds {} counts the {waited:?} (or more) spent waiting",
        line.data.seconds
    );
    assert!(holder.wait().status.success());
    let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["first", "python3", "second"]);
}

fn blob_names(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// SIGINT or SIGTERM while a build converts: it stops promptly, says so in
/// one line, exits 130, and the store is as before (no tag, no blob, tmp/
/// empty); the next build succeeds.
#[test]
fn interrupted_build_stores_nothing() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let src = |tag: &str| format!("oci:{}:{tag}", corpus.display());
    build(&store, &src("base"), "base");
    let images_before: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    let blobs_before = blob_names(&store);
    let tmp_dir = store.join("tmp").canonicalize().unwrap();
    for sig in ["-INT", "-TERM"] {
        // With --json (the TERM run) the failure is also a JSON error record.
        let json = sig == "-TERM";
        let b = Proc::new(
            puzzle(&store)
                .args(["build", &src("python3"), "--tag", "python3"])
                .args(json.then_some("--json"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        // Converting: it holds a spool or temp file in the store's tmp/.
        until("the build to start converting", 60, || {
            has_open_file_under(b.pid(), &tmp_dir)
        });
        let sent = Instant::now();
        b.signal(sig);
        let out = b.wait();
        let took = sent.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{sig}: {stderr}");
        assert_eq!(stderr, "interrupted, nothing stored\n", "{sig}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if json {
            assert_eq!(
                stdout,
                "{\"type\":\"error\",\"schema\":1,\"data\":{\"message\":\"interrupted, nothing stored\",\"code\":130}}\n"
            );
        } else {
            assert!(stdout.is_empty(), "{sig}: {stdout}");
        }
        assert!(
            took < Duration::from_secs(5),
            "{sig}: stopped after {took:?}"
        );
        assert_eq!(tmp_entries(&store), Vec::<PathBuf>::new(), "{sig}: tmp/");
        assert_eq!(blob_names(&store), blobs_before, "{sig}: blobs");
        let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
        assert_eq!(names, images_before, "{sig}");
    }
    verify_ok(&store);
    build(&store, &src("python3"), "python3");
    verify_ok(&store);
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
struct GcReport {
    dry_run: bool,
    chunks_removed: u64,
    dead_chunks_kept: u64,
    dead_bytes_kept: u64,
    tmp_files_removed: u64,
    tmp_bytes_removed: u64,
    bytes_removed: u64,
    bytes_written: u64,
    freed_bytes: i64,
}

fn gc_json(store: &Path, extra: &[&str]) -> (GcReport, String) {
    let r = ok(puzzle(store).args(["gc", "--json"]).args(extra));
    let line: Line<GcReport> = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("gc --json printed something else ({e}):\n{}", r.stdout));
    assert_eq!(line.kind, "gc");
    (line.data, r.stderr)
}

/// gc says how many chunks no image needs it keeps (their packs are mostly
/// live) and counts the temp files it removes in what it frees.
#[test]
fn gc_reports_dead_chunks_it_keeps_and_temp_files_it_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    let base = [Entry::file("base.bin", pseudo_random(1, 3 << 20))];
    Image::new()
        .layer(&base, Compression::Gzip)
        .write_oci_layout(&layout, "a")
        .unwrap();
    // One layer: its pack holds the base (3 MiB, live once b is gone, kept
    // by a) and b.bin (2 MiB, dead): 60 % live, above the default 0.5.
    Image::new()
        .layer(
            &[
                Entry::file("base.bin", pseudo_random(1, 3 << 20)),
                Entry::file("b.bin", pseudo_random(2, 2 << 20)),
            ],
            Compression::Gzip,
        )
        .write_oci_layout(&layout, "b")
        .unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:b", layout.display()), "b");
    build(&store, &format!("oci:{}:a", layout.display()), "a");
    ok(puzzle(&store).args(["rm", "b"]));
    // Debris of a crashed writer.
    std::fs::write(store.join("tmp/blob-left"), vec![7u8; 1000]).unwrap();

    let (dry, _) = gc_json(&store, &["--dry-run"]);
    assert_eq!((dry.tmp_files_removed, dry.tmp_bytes_removed), (1, 1000));
    assert_eq!(tmp_entries(&store).len(), 1, "a dry run removes nothing");

    let (r, human) = gc_json(&store, &[]);
    assert_eq!(r.chunks_removed, 0);
    assert!(r.dead_chunks_kept > 0, "{r:?}");
    // b.bin is random: stored at about its size.
    assert!((2_000_000..2_300_000).contains(&r.dead_bytes_kept), "{r:?}");
    assert_eq!((r.tmp_files_removed, r.tmp_bytes_removed), (1, 1000));
    assert_eq!(
        r.freed_bytes,
        r.bytes_removed as i64 - r.bytes_written as i64 + 1000
    );
    assert!(tmp_entries(&store).is_empty());
    assert_eq!(
        (dry.dead_chunks_kept, dry.dead_bytes_kept),
        (r.dead_chunks_kept, r.dead_bytes_kept)
    );
    let kept = format!("chunks no image needs: 0 removed, {} (", r.dead_chunks_kept);
    assert!(
        human.contains(&kept)
            && human.contains("kept in packs at or above --repack-below 0.5")
            && human.contains("1000 B of temp files removed"),
        "{human}"
    );
    // Repacking everything removes exactly the chunks reported kept.
    let (all, _) = gc_json(&store, &["--repack-below", "1"]);
    assert_eq!(all.chunks_removed, r.dead_chunks_kept);
    assert_eq!(all.dead_chunks_kept, 0);
    verify_ok(&store);
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// An extract that finds a corrupt chunk partway removes what it wrote (the
/// target it created, or the entries it made in an empty directory), or
/// keeps it with `--keep-partial`; its one error line says which.
#[test]
fn failed_extract_removes_what_it_wrote_unless_asked_to_keep_it() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    crate::mount::two_file_image()
        .write_oci_layout(&layout, "two")
        .unwrap();
    let store = t.join("store");
    build(&store, &format!("oci:{}:two", layout.display()), "two");
    // The frame of data/b's first chunk (which also holds data/a's last
    // ones) is corrupt: the extract fails partway, once data/ and data/a
    // are made.
    crate::mount::corrupt_first_chunk(&store, "two", &[b"data", b"b"]);
    let extract = |dir: &Path, extra: &[&str]| {
        run(puzzle(&store)
            .arg("extract")
            .arg("two")
            .arg(dir)
            .args(extra))
    };

    let fresh = t.join("fresh");
    let r = extract(&fresh, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("corrupt")
            && r.stderr
                .contains("(partial tree removed; --keep-partial keeps it)"),
        "{}",
        r.stderr
    );
    assert!(!fresh.exists(), "the target it created is removed");

    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o751)).unwrap();
    let r = extract(&empty, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("partial tree removed"), "{}", r.stderr);
    assert_eq!(entries(&empty), Vec::<String>::new());
    let mode = std::fs::metadata(&empty).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o751);

    let kept = t.join("kept");
    let r = extract(&kept, &["--keep-partial"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "extracting two into {} (partial tree kept, --keep-partial): ",
            kept.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(entries(&kept.join("data")), ["a"]);

    // A target refused up front is left alone.
    let r = extract(&kept, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("is not empty"), "{}", r.stderr);
    assert!(!r.stderr.contains("partial tree"), "{}", r.stderr);
    assert_eq!(entries(&kept.join("data")), ["a"]);
}

/// SIGINT during an extract: it stops, removes what it wrote, says so in
/// one line and exits 130.
#[test]
fn interrupted_extract_removes_what_it_wrote() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    build(
        &store,
        &format!("oci:{}:django-5.0.7", corpus.display()),
        "django",
    );
    let x = t.join("x");
    let p = Proc::new(
        puzzle(&store)
            .arg("extract")
            .arg("django")
            .arg(&x)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    until("the extract to write entries", 30, || {
        std::fs::read_dir(&x).is_ok_and(|mut d| d.next().is_some())
    });
    p.signal("-INT");
    let out = p.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(
        stderr,
        "interrupted, partial tree removed; --keep-partial keeps it\n"
    );
    assert!(!x.exists(), "the target it created is removed");
}
