//! A full disk: a build that runs out of space fails with a clear error and
//! leaves a store that verifies and keeps working; on a disk filled to
//! 100 %, `rm` and `gc` free space and no command leaves the index needing
//! a repair (issue 17). Needs root (mounts small tmpfs filesystems, 40 to
//! 64 MiB); skipped otherwise unless PUZZLE_REQUIRE_TOOLS is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use puzzle_testkit::{pseudo_random, Compression, Entry, Image};

use crate::lifecycle::verify_ok;
use crate::util::*;

/// Unmounts on drop, even when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        st.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn build_out_of_space_fails_clearly_and_the_store_stays_usable() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let Some(_fs) = Tmpfs::mount(&t.join("fs"), "40m") else {
        assert!(!require_tools(), "cannot mount a tmpfs (root needed)");
        eprintln!("note: cannot mount a tmpfs; skipping");
        return;
    };
    let store = t.join("fs/store");
    // A small image first, so the store holds something to keep.
    let layout = t.join("layout");
    Image::new()
        .layer(
            &[Entry::file("small.bin", pseudo_random(9, 1 << 20))],
            Compression::Gzip,
        )
        .write_oci_layout(&layout, "small")
        .unwrap();
    let small = format!("oci:{}:small", layout.display());
    build(&store, &small, "small");

    // django 5.0.7 stores ~51 MiB of packs: it cannot fit.
    let src = format!("oci:{}:django-5.0.7", corpus.display());
    let r = run(puzzle(&store).args(["build", &src, "--tag", "django"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no space left on device") && r.stderr.contains("building django"),
        "unclear error: {}",
        r.stderr
    );
    let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["small"], "no partial image");
    verify_ok(&store);
    ok(puzzle(&store).args(["gc"]));
    verify_ok(&store);
    let x = t.join("x");
    extract(&store, "small", &x);
    // Still writable once space is back.
    ok(puzzle(&store).args(["rm", "small"]));
    ok(puzzle(&store).args(["gc"]));
    build(&store, &small, "small2");
    verify_ok(&store);
}

/// Bytes free on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Fills the filesystem holding `dir` to the last byte with `dir/filler`.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("filler"))
        .unwrap();
    for step in [1 << 20, 4096, 1] {
        let buf = vec![0x5a; step];
        while f.write_all(&buf).and_then(|()| f.flush()).is_ok() {}
    }
    assert_eq!(free_bytes(dir), 0, "the disk is not full");
}

/// The sled snapshots left unfinished in the store's index.
fn unfinished_snapshots(store: &Path) -> Vec<String> {
    std::fs::read_dir(store.join("index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".generating"))
        .collect()
}

/// Issue 17: on a 100 %-full disk `rm` and `gc` free space, a build fails
/// in one line that says how much more it needs and what to do, and no
/// command leaves the index needing a repair.
#[test]
fn issue_17_a_full_disk_never_needs_a_repair() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let Some(_fs) = Tmpfs::mount(&t.join("fs"), "48m") else {
        assert!(!require_tools(), "cannot mount a tmpfs (root needed)");
        eprintln!("note: cannot mount a tmpfs; skipping");
        return;
    };
    let fs = t.join("fs");
    let store = fs.join("store");
    // Random contents do not compress: each image's pack is its file's size.
    let image = |name: &str, seed: u64, len: usize| {
        let layout = t.join(name);
        Image::new()
            .layer(
                &[Entry::file(format!("{name}.bin"), pseudo_random(seed, len))],
                Compression::Gzip,
            )
            .write_oci_layout(&layout, name)
            .unwrap();
        format!("oci:{}:{name}", layout.display())
    };
    let (a, b) = (image("a", 1, 8 << 20), image("b", 2, 8 << 20));
    build(&store, &a, "a");
    build(&store, &b, "b");
    // An empty lock file has no block to write the PID into: the lock must
    // still be taken on the full disk.
    std::fs::write(store.join("lock"), b"").unwrap();
    fill(&fs);

    // A build on the full disk: one line, with what it needs and what to do.
    let big = image("big", 3, 12 << 20);
    let r = run(puzzle(&store).args(["build", &big, "--tag", "big"]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("puzzle: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    let e = errors[0];
    for want in [
        "building big",
        "no space left on device",
        "more is needed",
        "puzzle gc",
        "build again",
    ] {
        assert!(e.contains(want), "{want:?} missing from: {e}");
    }
    assert!(unfinished_snapshots(&store).is_empty());
    verify_ok(&store);

    // The disk is still full: rm and gc work and give space back.
    fill(&fs);
    ok(puzzle(&store).args(["rm", "a"]));
    let r = ok(puzzle(&store).args(["gc", "--json"]));
    let line: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let freed = line["data"]["freed_bytes"].as_i64().unwrap();
    assert!(freed >= 8 << 20, "gc freed {freed} bytes");
    assert!(free_bytes(&fs) >= 7 << 20, "{} free", free_bytes(&fs));
    assert!(unfinished_snapshots(&store).is_empty());
    verify_ok(&store);

    // The index opens with no repair, and a build fits again.
    let c = image("c", 4, 2 << 20);
    let r = ok(puzzle(&store).args(["build", &c, "--tag", "c"]));
    assert!(
        !r.stderr.contains("rebuilding"),
        "the index needed a repair: {}",
        r.stderr
    );

    // With no reserve left and no byte free, the index cannot open (sled
    // writes a snapshot first): that fails as such, starts no rebuild, and
    // leaves nothing that needs one once space is back.
    std::fs::remove_file(store.join("reserve")).unwrap();
    fill(&fs);
    let r = run(puzzle(&store).arg("verify"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("No space left on device") && !r.stderr.contains("rebuilding"),
        "{}",
        r.stderr
    );
    assert!(unfinished_snapshots(&store).is_empty());
    std::fs::remove_file(fs.join("filler")).unwrap();
    let r = ok(puzzle(&store).arg("verify"));
    assert!(!r.stderr.contains("rebuilding"), "{}", r.stderr);

    let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["b", "c"]);
    for (name, seed, len) in [("b", 2, 8 << 20), ("c", 4, 2 << 20)] {
        let x = t.join(format!("x-{name}"));
        extract(&store, name, &x);
        let got = std::fs::read(x.join(format!("{name}.bin"))).unwrap();
        assert!(
            got == pseudo_random(seed, len),
            "{name} extracts other bytes"
        );
    }
    verify_ok(&store);
}

/// Issue 17: on a full disk, gc deletes what no image needs before it
/// repacks, so the repack has room even when it needs more than the
/// store's reserve.
#[test]
fn issue_17_gc_on_a_full_disk_frees_before_it_repacks() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let Some(_fs) = Tmpfs::mount(&t.join("fs"), "64m") else {
        assert!(!require_tools(), "cannot mount a tmpfs (root needed)");
        eprintln!("note: cannot mount a tmpfs; skipping");
        return;
    };
    let fs = t.join("fs");
    let store = fs.join("store");
    let image = |name: &str, files: &[(&str, u64, usize)]| {
        let layout = t.join(name);
        let entries: Vec<Entry> = files
            .iter()
            .map(|(f, seed, len)| Entry::file(*f, pseudo_random(*seed, *len)))
            .collect();
        Image::new()
            .layer(&entries, Compression::Gzip)
            .write_oci_layout(&layout, name)
            .unwrap();
        format!("oci:{}:{name}", layout.display())
    };
    // y uses the first 10 MiB of x's 24 MiB pack: once x is gone that pack
    // is sparse, and its live chunks (more than the reserve) are moved.
    let x = image("x", &[("a.bin", 10, 10 << 20), ("b.bin", 11, 14 << 20)]);
    let y = image("y", &[("a.bin", 10, 10 << 20)]);
    let z = image("z", &[("z.bin", 12, 10 << 20)]);
    build(&store, &x, "x");
    let reused = build(&store, &y, "y");
    assert!(reused.reused_chunk_bytes > 9 << 20, "{reused:?}");
    build(&store, &z, "z");
    fill(&fs);
    ok(puzzle(&store).args(["rm", "x", "z"]));
    let r = ok(puzzle(&store).args(["gc", "--json"]));
    let line: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let d = &line["data"];
    assert_eq!(d["packs_repacked"], 1, "{d}");
    assert_eq!(d["images_rewritten"], 1, "{d}");
    assert!(d["freed_bytes"].as_i64().unwrap() > 20 << 20, "{d}");
    verify_ok(&store);
    let out = t.join("out");
    extract(&store, "y", &out);
    let got = std::fs::read(out.join("a.bin")).unwrap();
    assert!(got == pseudo_random(10, 10 << 20), "y extracts other bytes");
}

/// `len` bytes repeating one pseudo-random 256 KiB block: a file the store
/// holds in about a block of space, while a spool holds all of it.
fn repeating(seed: u64, len: usize) -> Vec<u8> {
    pseudo_random(seed, 256 << 10)
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// Issue 17: a build's temporary disk is bounded by the files the store
/// does not hold, the file being read and a small constant, whatever the
/// layer's size: a layer 2.7 times the free space, all of whose files but
/// one small new one are stored, builds on a small tmpfs, read in sorted
/// order (chunked as it is read) and in another order (chunked afterwards).
/// Files above `layer::HOLD_FILE` (64 MiB) are spooled whatever the order.
#[test]
fn issue_17_a_layer_larger_than_the_free_space_builds_when_little_is_new() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let fs = t.join("fs");
    let Some(_fs) = Tmpfs::mount(&fs, "1g") else {
        assert!(!require_tools(), "cannot mount a tmpfs (root needed)");
        eprintln!("note: cannot mount a tmpfs; skipping");
        return;
    };
    const FILE: usize = 70 << 20;
    let old: Vec<Entry> = (0..5u64)
        .map(|i| Entry::file(format!("data/f{i}.bin"), repeating(i, FILE)))
        .collect();
    let new = Entry::file("data/g.txt", pseudo_random(99, 1 << 20));
    let mut sorted = old.clone();
    sorted.push(new.clone());
    let mut shuffled = sorted.clone();
    shuffled.reverse();
    // In order up to a new file at the end: chunked live until then, after
    // the stored files' space was given back, then chunked again reading
    // them from the store.
    let mut late = old.clone();
    late.push(Entry::file("data/a.txt", pseudo_random(98, 1 << 20)));
    let layout = |name: &str, entries: &[Entry]| {
        let dir = t.join(name);
        Image::new()
            .layer(entries, Compression::Zstd)
            .write_oci_layout(&dir, name)
            .unwrap();
        format!("oci:{}:{name}", dir.display())
    };
    let extra_late = late.last().unwrap().clone();
    let (v1, sorted, shuffled, late) = (
        layout("v1", &old),
        layout("sorted", &sorted),
        layout("shuffled", &shuffled),
        layout("late", &late),
    );
    let store = fs.join("store");
    build(&store, &v1, "v1");

    // Shrink the tmpfs to what the store takes and 128 MiB: the 351 MiB
    // layers cannot be spooled whole.
    let used: u64 = {
        let out = Command::new("du").args(["-sb"]).arg(&fs).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().next().unwrap().parse().unwrap()
    };
    let size = used + (128 << 20);
    ok(Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(&fs));
    assert!(free_bytes(&fs) < 140 << 20, "free: {}", free_bytes(&fs));

    for (src, tag) in [
        (&sorted, "sorted"),
        (&shuffled, "shuffled"),
        (&late, "late"),
    ] {
        let s = build(&store, src, tag);
        assert_eq!(s.layers_reused, 0, "{tag}: the layer is converted");
        // One file spooled whole at a time, the reader at most LIVE_LAG
        // (32 MiB) ahead of the chunker, and the new file.
        let bound = (FILE as u64) + (32 << 20) + (2 << 20);
        assert!(
            s.tmp_peak_bytes <= bound && s.tmp_peak_bytes >= 1 << 20,
            "{tag}: tmp_peak_bytes {} (bound {bound})",
            s.tmp_peak_bytes
        );
        assert!(s.new_chunk_bytes < 8 << 20, "{tag}: {s:?}");
    }
    verify_ok(&store);
    for (tag, extra) in [("shuffled", &new), ("late", &extra_late)] {
        let x = t.join(format!("{tag}-rootfs"));
        extract(&store, tag, &x);
        for e in old.iter().chain([extra]) {
            let path = String::from_utf8_lossy(&e.path);
            let got = std::fs::read(x.join(&*path)).unwrap();
            let puzzle_testkit::Kind::File(want) = &e.kind else {
                unreachable!("files only")
            };
            assert!(got == *want, "{tag}: {path} differs");
        }
    }
}
