//! `puzzle mount docker://...`: a puzzle image pushed to a local
//! `docker-registry`, mounted lazily into another store. Trees compare
//! identical to umoci; a Python import fetches a small part of the image;
//! fetched frames are kept and reused; a registry that goes away gives EIO
//! within the deadline and reads come back with it; wrong bytes are never
//! served or kept.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use puzzle_testkit::umoci_unpack;

use crate::mount::{can_mount, Mount};
use crate::regfault::FaultProxy;
use crate::regkit::*;
use crate::util::*;

/// Builds corpus image `tag` into `store` as `name` and pushes it to
/// `REPO` of `reg` with `puzzle push`; returns the docker:// reference.
fn publish(reg: &Registry, corpus: &Path, store: &Path, tag: &str, repo: &str) -> String {
    build(store, &format!("oci:{}:{tag}", corpus.display()), tag);
    let dest = format!("docker://127.0.0.1:{}/{repo}", reg.port);
    ok(puzzle(store).args(["push", tag, &dest]));
    dest
}

/// `puzzle mounts --json`'s record of the mount at `dir`.
fn mount_record(store: &Path, dir: &Path) -> serde_json::Value {
    let out = ok(puzzle(store).args(["mounts", "--json"])).stdout;
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["data"]["dir"] == dir.to_str().unwrap())
        .unwrap_or_else(|| panic!("no mount at {} in {out}", dir.display()))["data"]
        .clone()
}

/// The lazy mount's counters, from its record.
fn lazy_stats(store: &Path, dir: &Path) -> serde_json::Value {
    mount_record(store, dir)["lazy"].clone()
}

/// Runs `import django` in a chroot of `dir`; its output.
fn import_django(dir: &Path) -> String {
    ok(Command::new("chroot").arg(dir).args([
        "python3",
        "-c",
        "import django; print(django.VERSION)",
    ]))
    .stdout
}

/// Waits for the mount's stats file to be rewritten (once a second).
fn settled_stats(store: &Path, dir: &Path) -> serde_json::Value {
    std::thread::sleep(Duration::from_millis(1200));
    lazy_stats(store, dir)
}

fn setup() -> Option<(PathBuf, Registry)> {
    let corpus = corpus()?;
    if !can_mount() || !have("umoci") {
        return None;
    }
    let reg = Registry::start()?;
    Some((corpus, reg))
}

#[test]
fn lazy_mounts_of_the_small_corpus_match_umoci() {
    let Some((corpus, reg)) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    for tag in ["base", "python3", "django-5.0.7", "django-5.0.8"] {
        let r = publish(&reg, &corpus, &src, tag, &format!("lib/{tag}:1"));
        let rootfs = umoci_unpack(&corpus, tag, &t.join("bundle")).unwrap();
        let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
        assert_same_tree(&rootfs, &m.dir);
        let s = settled_stats(&lazy, &m.dir);
        assert_eq!(s["failures"], 0, "{s}");
        assert!(s["frames_fetched"].as_u64().unwrap() > 0, "{s}");
        m.umount();
        std::fs::remove_dir_all(t.join("bundle")).unwrap();
    }
    // Nothing is an image of the lazy store, and it verifies.
    assert!(images(&lazy).is_empty());
    ok(puzzle(&lazy).arg("verify"));
}

/// Issue 14: `import django` in a chroot of a lazy mount reads a small
/// part of the image; a remount fetches none of it again.
#[test]
fn a_django_import_fetches_a_small_part_of_the_gzip_image_and_a_remount_none() {
    let Some((corpus, reg)) = setup() else { return };
    if !have("chroot") {
        assert!(!require_tools(), "needs chroot");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    let r = publish(&reg, &corpus, &src, "django-5.0.8", "lib/django:8");
    let gzip: u64 = corpus_layers(&corpus, "django-5.0.8")
        .iter()
        .map(|l| l.1)
        .sum();
    let started = Instant::now();
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
    let mounted = started.elapsed();
    assert!(import_django(&m.dir).contains("(5, 0, 8"));
    let s = settled_stats(&lazy, &m.dir);
    let fetched = s["bytes_received"].as_u64().unwrap();
    eprintln!(
        "lazy mount in {mounted:?}; import django fetched {fetched} bytes in {} requests \
         ({} frames); the gzip image is {gzip} bytes ({:.1} %)",
        s["requests"],
        s["frames_fetched"],
        fetched as f64 * 100.0 / gzip as f64
    );
    // Frames of 1 MiB raw (the default) hold many files a start does not
    // read: 28 % of the gzip image here (measured), less than a fifth from
    // a store of 256 KiB frames (below).
    assert!(fetched * 3 < gzip, "{fetched} of {gzip}: {s}");
    assert!(s["misses"].as_u64().unwrap() > 0);
    m.umount();

    // Pushed from a store of 256 KiB frames (--frame-target 262144), the
    // same import fetches less than a fifth of the gzip image.
    let small = t.join("small");
    build_with(
        &small,
        &format!("oci:{}:django-5.0.8", corpus.display()),
        "d8",
        &["--frame-target", "262144"],
    );
    let r256 = format!("docker://127.0.0.1:{}/lib/django:8-256k", reg.port);
    ok(puzzle(&small).args(["push", "d8", &r256]));
    let mut m = Mount::new(&t.join("lazy256"), &r256, &t.join("mnt"), &[]);
    assert!(import_django(&m.dir).contains("(5, 0, 8"));
    let s256 = settled_stats(&t.join("lazy256"), &m.dir);
    let fetched256 = s256["bytes_received"].as_u64().unwrap();
    eprintln!(
        "with 256 KiB frames: {fetched256} bytes ({:.1} % of the gzip image)",
        fetched256 as f64 * 100.0 / gzip as f64
    );
    assert!(fetched256 * 5 < gzip, "{fetched256} of {gzip}: {s256}");
    m.umount();

    // Remounted: the frames are kept in the store, nothing is fetched.
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
    assert!(import_django(&m.dir).contains("(5, 0, 8"));
    let again = settled_stats(&lazy, &m.dir);
    assert_eq!(again["frames_fetched"], 0, "{again}");
    assert_eq!(again["misses"], 0, "{again}");
    assert!(again["kept_hits"].as_u64().unwrap() > 0, "{again}");
    m.umount();

    // A pull reads the kept frames instead of fetching them again.
    let packs: u64 = std::fs::read_dir(src.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let r = ok(puzzle(&lazy).args(["pull", &r, "--tag", "d8", "--json"]));
    let line: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let pulled = line["data"]["bytes_transferred"].as_u64().unwrap();
    let frames = s["bytes_received"].as_u64().unwrap();
    eprintln!(
        "pull after the lazy mount: {pulled} bytes; the mount fetched {frames}; blobs {packs}"
    );
    assert!(
        pulled + frames < packs + (2 << 20),
        "{pulled} + {frames} vs {packs}"
    );
    ok(puzzle(&lazy).arg("verify"));
}

/// A store holding django 5.0.7 mounts 5.0.8 lazily: chunks the store has
/// are read from its packs, and gc while mounted keeps them even when the
/// image that brought them is removed.
#[test]
fn a_lazy_mount_reads_what_the_store_has_locally_and_gc_keeps_it() {
    let Some((corpus, reg)) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    let r = publish(&reg, &corpus, &src, "django-5.0.8", "lib/django:8");
    build(
        &lazy,
        &format!("oci:{}:django-5.0.7", corpus.display()),
        "d7",
    );
    let rootfs = umoci_unpack(&corpus, "django-5.0.8", &t.join("bundle")).unwrap();
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
    ok(puzzle(&lazy).args(["rm", "d7"]));
    ok(puzzle(&lazy).arg("gc"));
    assert_same_tree(&rootfs, &m.dir);
    let s = settled_stats(&lazy, &m.dir);
    assert!(s["local_hits"].as_u64().unwrap() > 0, "{s}");
    let whole: u64 = std::fs::read_dir(src.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        s["bytes_received"].as_u64().unwrap() * 4 < whole,
        "most of 5.0.8 came from 5.0.7's packs: {s}"
    );
    m.umount();
}

/// `bytes_received` counts each blob once: a mount that has read nothing
/// yet has received exactly its manifest, metadata blob and config.
#[test]
fn bytes_received_counts_the_metadata_and_config_once() {
    let Some((corpus, reg)) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    let r = publish(&reg, &corpus, &src, "python3", "lib/py:1");
    let image = images(&src).into_iter().next().unwrap();
    let size = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::metadata(src.join("blobs/sha256").join(hex))
            .unwrap()
            .len()
    };
    let opened = size(&image.manifest) + size(&image.metadata) + size(&image.config);
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
    let s = settled_stats(&lazy, &m.dir);
    assert_eq!(s["frames_fetched"], 0, "{s}");
    assert_eq!(s["bytes_received"], opened, "{s}");
    m.umount();
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Asserts that `f` reads through the mount at `dir` as in `rootfs`.
fn reads_as_in(rootfs: &Path, dir: &Path, f: &str) {
    let got = read(&dir.join(f)).unwrap_or_else(|e| panic!("reading {f}: {e}"));
    assert!(got == std::fs::read(rootfs.join(f)).unwrap(), "{f} differs");
}

/// Bytes the store's `lazy/` holds on disk (allocated, holes not counted).
fn kept_bytes(store: &Path) -> u64 {
    std::fs::read_dir(store.join("lazy")).map_or(0, |d| {
        d.map(|e| std::os::unix::fs::MetadataExt::blocks(&e.unwrap().metadata().unwrap()) * 512)
            .sum()
    })
}

/// Issue 14: the registry stopped while mounted: a read of data not yet
/// local fails with EIO within the deadline, local data still reads, and
/// once the registry is back the read works.
#[test]
fn a_registry_gone_mid_mount_gives_eio_in_time_and_reads_return_with_it() {
    let Some((corpus, mut reg)) = setup() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    let r = publish(&reg, &corpus, &src, "python3", "lib/py:1");
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &["--timeout", "3"]);
    let (cached, later) = (m.dir.join("bin/sh"), m.dir.join("usr/bin/python3"));
    let sh = read(&cached).expect("read while the registry is up");
    reg.stop();
    let started = Instant::now();
    let e = read(&later).expect_err("python3 is not local yet");
    let waited = started.elapsed();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(waited < Duration::from_secs(10), "EIO after {waited:?}");
    assert_eq!(read(&cached).unwrap(), sh, "local data still reads");
    let s = settled_stats(&lazy, &m.dir);
    assert!(s["failures"].as_u64().unwrap() >= 1, "{s}");
    reg.restart();
    let py = read(&later).expect("the registry is back");
    let rootfs = umoci_unpack(&corpus, "python3", &t.join("bundle")).unwrap();
    assert_eq!(py, std::fs::read(rootfs.join("usr/bin/python3")).unwrap());
    // Unmounting works with the registry gone.
    reg.stop();
    m.umount();
}

/// Issue 14: a long mount renews its Bearer tokens (they last 2 s here)
/// and never sends an expired one; `--creds` reaches the daemon without
/// showing in its command line.
#[test]
fn a_lazy_mount_renews_its_tokens_and_hides_its_password() {
    use crate::regfault::TokenService;
    let Some((corpus, reg)) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    publish(&reg, &corpus, &src, "python3", "lib/py:1");
    let proxy = FaultProxy::start(reg.port);
    *proxy.faults.token.lock().unwrap() = Some(TokenService {
        user_pass: Some(("lazy".into(), "S3cret-Pass".into())),
        refresh_token: None,
        expires_in: 2,
        valid: Duration::from_secs(2),
    });
    let r = format!("docker://127.0.0.1:{}/lib/py:1", proxy.port);
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &["--creds", "lazy:S3cret-Pass"]);
    let pid = mount_record(&lazy, &m.dir)["pid"]
        .as_u64()
        .expect("the daemon's pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("S3cret"));
    let rootfs = umoci_unpack(&corpus, "python3", &t.join("bundle")).unwrap();
    for (i, f) in ["etc/os-release", "usr/bin/python3"].iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_secs(3));
        }
        reads_as_in(&rootfs, &m.dir, f);
    }
    assert!(proxy.tokens_issued() >= 2, "{:#?}", proxy.seen());
    assert_eq!(
        proxy.stale_tokens.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "an expired token was sent: {:#?}",
        proxy.seen()
    );
    m.umount();
}

/// Issue 14: a frame that arrives with wrong bytes is EIO, neither served
/// nor kept; the next read fetches it again and gets it right.
#[test]
fn a_corrupted_frame_is_eio_not_kept_and_fetched_again() {
    let Some((corpus, reg)) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    publish(&reg, &corpus, &src, "python3", "lib/py:1");
    let proxy = FaultProxy::start(reg.port);
    let md = {
        let out = ok(puzzle(&src).args(["images", "--json"])).stdout;
        let m: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        m["data"]["metadata"].as_str().unwrap().to_owned()
    };
    *proxy.faults.flip_range_at.lock().unwrap() = Some((100, md));
    let r = format!("docker://127.0.0.1:{}/lib/py:1", proxy.port);
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
    // A small file: its read fetches one frame, alone. The read that got
    // the bad frame fails (EIO); the kernel may retry it at once, which
    // fetches the frame again: wrong bytes are never what a reader sees.
    let rootfs = umoci_unpack(&corpus, "python3", &t.join("bundle")).unwrap();
    let want = std::fs::read(rootfs.join("etc/os-release")).unwrap();
    let file = m.dir.join("etc/os-release");
    match read(&file) {
        Ok(got) => assert_eq!(got, want, "the retried read"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
    }
    let s = settled_stats(&lazy, &m.dir);
    assert_eq!(s["bad_frames"], 1, "{s}");
    // The readahead and the read itself may both have waited for it.
    let failed = s["failures"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&failed),
        "the read given the bad frame failed: {s}"
    );
    assert_eq!(read(&file).expect("fetched again"), want);
    // Not kept: a new mount reads the frame back from lazy/ and it checks.
    m.umount();
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
    assert_eq!(read(&m.dir.join("etc/os-release")).unwrap(), want);
    let s = settled_stats(&lazy, &m.dir);
    assert_eq!(
        (s["kept_hits"].as_u64(), s["misses"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    m.umount();
    ok(puzzle(&lazy).arg("verify"));
}

/// Issue 14: `--fill` fetches the rest in the background and commits an
/// ordinary local image, which then mounts and extracts with the registry
/// gone; gc then drops the kept frames the image's packs made copies of.
#[test]
fn fill_makes_an_ordinary_local_image_that_works_offline() {
    let Some((corpus, mut reg)) = setup() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    let r = publish(&reg, &corpus, &src, "python3", "lib/py:3.11");
    let log = t.join("mount.log");
    let mut m = Mount::new(
        &lazy,
        &r,
        &t.join("mnt"),
        &["--fill", "--log", log.to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !images(&lazy).iter().any(|i| i.name == "py:3.11") {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("filled: py:3.11 is a local image now"),
        "{text}"
    );
    m.umount();
    reg.stop();
    let rootfs = umoci_unpack(&corpus, "python3", &t.join("bundle")).unwrap();
    extract(&lazy, "py:3.11", &t.join("out"));
    assert_same_tree(&rootfs, &t.join("out"));
    ok(puzzle(&lazy).arg("verify"));
    // The packs were adopted whole: the kept frames are copies, gc drops them.
    let kept = || std::fs::read_dir(lazy.join("lazy")).map_or(0, |d| d.count());
    ok(puzzle(&lazy).arg("gc"));
    assert_eq!(kept(), 0);
}

/// `puzzle mount --fill` on a store it cannot write, and a bad --cache-max,
/// are one-line refusals.
#[test]
fn lazy_mount_arguments_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(puzzle(tmp.path()).args(["mount", "x", "/nonexistent", "--cache-max", "5X"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown unit"), "{}", r.stderr);
    let r = run(puzzle(tmp.path()).args(["mount", "x", "/nonexistent", "--tag", "a:b"]));
    assert_eq!(r.code, 2, "--tag needs --fill: {}", r.stderr);
}

/// Issue 14: a trace of `import django` recorded on a lazy mount, pushed
/// as the image's prefetch list: a fresh lazy mount fetches the listed
/// frames on its own, and the same import then waits for no fetch.
#[test]
fn a_prefetch_list_fetches_what_the_import_reads_before_it_asks() {
    let Some((corpus, reg)) = setup() else { return };
    if !have("chroot") {
        assert!(!require_tools(), "needs chroot");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let src = t.join("src");
    let r = publish(&reg, &corpus, &src, "django-5.0.8", "lib/django:8");
    let trace = t.join("import.trace");
    let mut m = Mount::new(
        &t.join("first"),
        &r,
        &t.join("mnt"),
        &["--trace", trace.to_str().unwrap()],
    );
    import_django(&m.dir);
    let cold = settled_stats(&t.join("first"), &m.dir);
    m.umount();
    let with = format!("docker://127.0.0.1:{}/lib/django:8-prefetch", reg.port);
    ok(puzzle(&src)
        .args(["push", "django-5.0.8", &with, "--prefetch"])
        .arg(&trace));

    let lazy = t.join("lazy");
    let mut m = Mount::new(&lazy, &with, &t.join("mnt"), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let s = settled_stats(&lazy, &m.dir);
        let n = s["prefetch_frames"].as_u64().unwrap();
        if n > 0 && s["prefetched"] == n {
            break n;
        }
        assert!(Instant::now() < deadline, "prefetch did not finish: {s}");
    };
    import_django(&m.dir);
    let s = settled_stats(&lazy, &m.dir);
    eprintln!(
        "prefetch list: {listed} frames; cold import fetched {} frames with {} misses, \
         after the prefetch the import missed {}",
        cold["frames_fetched"], cold["misses"], s["misses"]
    );
    assert_eq!(
        s["misses"], 0,
        "every frame the import reads was fetched ahead: {s}"
    );
    assert_eq!(s["failures"], 0, "{s}");
    assert!(cold["misses"].as_u64().unwrap() > 0, "{cold}");
    assert!(
        listed <= cold["frames_fetched"].as_u64().unwrap(),
        "the list names only what the import read: {listed} vs {cold}"
    );
    m.umount();
}

/// Issue 14: `--cache-max` bounds the frames kept in `lazy/`: reading more
/// than the cap keeps the most recent frames only, and the reads still
/// give the right bytes.
#[test]
fn cache_max_bounds_the_kept_frames() {
    let Some((corpus, reg)) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (src, lazy) = (t.join("src"), t.join("lazy"));
    let r = publish(&reg, &corpus, &src, "python3", "lib/py:1");
    let m = Mount::new(&lazy, &r, &t.join("mnt"), &["--cache-max", "2M"]);
    let rootfs = umoci_unpack(&corpus, "python3", &t.join("bundle")).unwrap();
    reads_as_in(&rootfs, &m.dir, "usr/bin/python3");
    let s = settled_stats(&lazy, &m.dir);
    let held = kept_bytes(&lazy);
    assert!(
        s["bytes_received"].as_u64().unwrap() > 3 << 20,
        "read more than the cap: {s}"
    );
    assert!(held <= (2 << 20) + (64 << 10), "lazy/ holds {held} bytes");
    assert!(held > 0);
}

/// Unmounts a tmpfs when dropped (also when an assertion fails).
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Issue 14: lazy mounts never fill the disk: on a file system with less
/// room than the floor (256 MiB, 5 %), no frame is kept, and reads still
/// give the right bytes.
#[test]
fn a_store_on_a_small_disk_keeps_no_frames_and_still_serves() {
    let Some((corpus, reg)) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let r = publish(&reg, &corpus, &t.join("src"), "python3", "lib/py:1");
    let small = t.join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(st.success());
    let _guard = Tmpfs(small.clone());
    let lazy = small.join("store");
    let mut m = Mount::new(&lazy, &r, &t.join("mnt"), &[]);
    let rootfs = umoci_unpack(&corpus, "python3", &t.join("bundle")).unwrap();
    reads_as_in(&rootfs, &m.dir, "usr/bin/python3");
    let s = settled_stats(&lazy, &m.dir);
    assert!(s["frames_fetched"].as_u64().unwrap() > 3, "{s}");
    let held = kept_bytes(&lazy);
    assert_eq!(held, 0, "nothing kept on a 16 MiB disk");
    m.umount();
}
