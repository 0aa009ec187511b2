//! `mount --trace` and `build|push --prefetch` (issue 14, item 3): a real
//! mount records the files and ranges read in first-access order; the list
//! stored with an image survives verify, gc, extract, stats, push and pull.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::mount::{can_mount, Mount};
use crate::regkit::*;
use crate::util::*;

const PREFETCH: &str = "application/vnd.puzzle.prefetch.v1";

/// (path, offset, length) of each line of a trace after its header.
fn trace_lines(text: &str) -> Vec<(String, u64, u64)> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("puzzle-trace v1"), "{text}");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 3, "{l}");
            (
                f[0].to_owned(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

fn blob(store: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(store.join("blobs/sha256").join(hex)).unwrap()
}

/// The image's manifest, parsed.
fn manifest(store: &Path, name: &str) -> serde_json::Value {
    let d = images(store)
        .into_iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no image {name}"))
        .manifest;
    serde_json::from_slice(&blob(store, &d)).unwrap()
}

/// The digest of the image's prefetch blob: its last layer, after the packs.
fn prefetch_layer(m: &serde_json::Value) -> Option<String> {
    let layers = m["layers"].as_array().unwrap();
    let n = layers.iter().filter(|l| l["mediaType"] == PREFETCH).count();
    assert!(n <= 1, "{m}");
    let last = layers.last().unwrap();
    (last["mediaType"] == PREFETCH).then(|| last["digest"].as_str().unwrap().to_owned())
}

#[test]
fn a_traced_mount_lists_reads_in_order_and_build_prefetch_stores_them() {
    let Some(corpus) = corpus() else { return };
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let src = format!("oci:{}:python3", corpus.display());
    build(&store, &src, "py");
    let trace = t.join("trace.txt");
    let mut m = Mount::new(
        &store,
        "py",
        &t.join("mnt"),
        &["--trace", trace.to_str().unwrap()],
    );
    let root = m.dir.clone();
    // Through a symlink (the file is what is recorded), then a module, then
    // a few bytes from the middle of the interpreter, then the module again.
    let release = std::fs::read(root.join("etc/os-release")).unwrap();
    let os_py = std::fs::read(root.join("usr/lib/python3.11/os.py")).unwrap();
    let exe = std::fs::File::open(root.join("usr/bin/python3.11")).unwrap();
    let exe_size = exe.metadata().unwrap().len();
    let mut buf = [0u8; 100];
    exe.read_exact_at(&mut buf, 3 << 20).unwrap();
    drop(exe);
    std::fs::read(root.join("usr/lib/python3.11/os.py")).unwrap();
    m.umount();
    // Complete once `puzzle umount` returns.
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines = trace_lines(&text);
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(
        lines[0],
        ("/usr/lib/os-release".into(), 0, release.len() as u64)
    );
    assert_eq!(
        lines[1],
        ("/usr/lib/python3.11/os.py".into(), 0, os_py.len() as u64)
    );
    // The kernel reads whole pages and ahead: the range holds the 100
    // bytes and is far from the whole file.
    let (p, off, len) = &lines[2];
    assert_eq!(p, "/usr/bin/python3.11");
    assert!(*off <= 3 << 20 && off + len >= (3 << 20) + 100, "{text}");
    assert!(*len < exe_size / 2, "{text}");

    // build --prefetch: the list, a path the image lacks skipped with one
    // warning line, stored after the packs.
    let list = t.join("list.txt");
    std::fs::write(&list, format!("{text}/no/such%20file 0 10\n")).unwrap();
    let r = ok(puzzle(&store)
        .args(["build", &src, "--tag", "pyp", "--prefetch"])
        .arg(&list));
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{}", r.stderr);
    assert!(warnings[0].contains("/no/such file"), "{}", r.stderr);
    let with = manifest(&store, "pyp");
    let digest = prefetch_layer(&with).expect("a prefetch layer");
    assert_eq!(String::from_utf8(blob(&store, &digest)).unwrap(), text);
    // The same image otherwise: same metadata and packs.
    let without = manifest(&store, "py");
    assert_eq!(prefetch_layer(&without), None);
    let n = without["layers"].as_array().unwrap().len();
    assert_eq!(
        with["layers"].as_array().unwrap()[..n],
        without["layers"].as_array().unwrap()[..]
    );

    // Every reader copes: images, stats, verify, extract, gc (keeps it).
    ok(puzzle(&store).arg("images"));
    ok(puzzle(&store).args(["stats", "pyp"]));
    ok(puzzle(&store).arg("verify"));
    ok(puzzle(&store).args(["rm", "py"]));
    ok(puzzle(&store).arg("gc"));
    assert_eq!(
        prefetch_layer(&manifest(&store, "pyp")),
        Some(digest.clone())
    );
    assert_eq!(String::from_utf8(blob(&store, &digest)).unwrap(), text);
    let out = t.join("out");
    extract(&store, "pyp", &out);
    assert_eq!(
        std::fs::read(out.join("usr/lib/python3.11/os.py")).unwrap(),
        os_py
    );
    // A damaged list is reported by verify.
    let path = store
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    std::fs::write(&path, b"puzzle-trace v1\n").unwrap();
    let r = run(puzzle(&store).arg("verify"));
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.contains("prefetch list") || r.stderr.contains("prefetch list"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

/// `puzzle umount` waits for the daemon, which writes the trace last,
/// whatever the executable's file name (it used to wait only for a process
/// named `puzzle`, and returned before the trace was written).
#[test]
fn umount_of_a_renamed_binary_returns_once_the_trace_is_written() {
    let Some(corpus) = corpus() else { return };
    if !can_mount() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    build(&store, &format!("oci:{}:base", corpus.display()), "b");
    let exe = t.join("puzzle-renamed");
    std::fs::copy(env!("CARGO_BIN_EXE_puzzle"), &exe).unwrap();
    let renamed = || {
        let mut c = std::process::Command::new(&exe);
        c.arg("--store").arg(&store).arg("--no-progress");
        c
    };
    let (mnt, trace) = (t.join("mnt"), t.join("trace.txt"));
    std::fs::create_dir(&mnt).unwrap();
    ok(renamed()
        .args(["mount", "b"])
        .arg(&mnt)
        .arg("--daemon")
        .arg("--trace")
        .arg(&trace));
    let release = std::fs::read(mnt.join("etc/os-release")).unwrap();
    ok(renamed().arg("umount").arg(&mnt));
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines = trace_lines(&text);
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].0.ends_with("/os-release"), "{text}");
    assert_eq!(lines[0].2, release.len() as u64, "{text}");
}

#[test]
fn push_prefetch_retags_and_a_pull_into_a_fresh_store_keeps_the_list() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b) = (t.join("a"), t.join("b"));
    build(&a, &format!("oci:{}:base", corpus.display()), "base");
    let before = manifest(&a, "base");
    let list = t.join("list.txt");
    let text = "puzzle-trace v1\n/usr/lib/os-release 0 100\n/etc/passwd 10 20\n";
    std::fs::write(&list, format!("{text}/missing 0 1\n")).unwrap();
    let dest = format!("docker://127.0.0.1:{}/lib/base:puzzle", reg.port);
    let r = ok(puzzle(&a)
        .args(["push", "base", &dest, "--prefetch"])
        .arg(&list));
    assert!(r.stderr.contains("/missing"), "{}", r.stderr);
    // The image was retagged to the manifest with the list; that is what
    // was pushed (its digest on stdout).
    let local = images(&a).into_iter().find(|i| i.name == "base").unwrap();
    assert_eq!(r.stdout.trim(), local.manifest);
    let after = manifest(&a, "base");
    assert_eq!(prefetch_layer(&before), None);
    let digest = prefetch_layer(&after).expect("a prefetch layer");
    assert_eq!(blob(&a, &digest), text.as_bytes());
    ok(puzzle(&a).arg("verify"));

    let src = format!("docker://127.0.0.1:{}/lib/base:puzzle", reg.port);
    ok(puzzle(&b).args(["pull", &src, "--tag", "base"]));
    let pulled = images(&b).into_iter().find(|i| i.name == "base").unwrap();
    assert_eq!(
        pulled.manifest, local.manifest,
        "the pushed manifest itself"
    );
    assert_eq!(blob(&b, &digest), text.as_bytes());
    ok(puzzle(&b).arg("verify"));
    ok(puzzle(&b).arg("gc"));
    assert_eq!(blob(&b, &digest), text.as_bytes());
    extract(&b, "base", &t.join("out"));
}

#[test]
fn gc_rewriting_an_image_keeps_its_prefetch_list() {
    let Some(corpus) = corpus() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    // 5.0.8 first: its packs hold the base both share, so once it is gone
    // gc repacks them and gives 5.0.7 new metadata and a new manifest.
    build(
        &store,
        &format!("oci:{}:django-5.0.8", corpus.display()),
        "d8",
    );
    let list = t.join("list.txt");
    let text = "puzzle-trace v1\n/usr/lib/os-release 0 100\n";
    std::fs::write(&list, text).unwrap();
    build_with(
        &store,
        &format!("oci:{}:django-5.0.7", corpus.display()),
        "d7",
        &["--prefetch", list.to_str().unwrap()],
    );
    let before = manifest(&store, "d7");
    let digest = prefetch_layer(&before).expect("a prefetch layer");
    ok(puzzle(&store).args(["rm", "d8"]));
    let r = ok(puzzle(&store).args(["gc", "--repack-below", "1", "--json"]));
    let g: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(g["data"]["images_rewritten"], 1, "{g}");
    let after = manifest(&store, "d7");
    assert_ne!(after["layers"][0], before["layers"][0], "new metadata");
    assert_eq!(prefetch_layer(&after), Some(digest.clone()));
    assert_eq!(blob(&store, &digest), text.as_bytes());
    ok(puzzle(&store).arg("verify"));
}
