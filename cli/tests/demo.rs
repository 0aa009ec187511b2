//! scripts/demo.sh on the small corpus: build two images, read a file
//! through a mount, the report; the mount is gone afterwards, also when a
//! step after mounting fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

fn is_mounted(dir: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_str().unwrap();
    text.lines().any(|l| l.split(' ').nth(4) == Some(d))
}

/// A demo directory; dropping it takes down a mount the script left.
struct DemoDir {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl DemoDir {
    fn new() -> DemoDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap().join("demo");
        DemoDir { _tmp: tmp, dir }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn run(&self, corpus: &Path, read: Option<&str>) -> Run {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/demo.sh");
        let mut c = Command::new(script);
        c.env("PUZZLE_CORPUS", corpus)
            .env("PUZZLE_BIN", env!("CARGO_BIN_EXE_puzzle"))
            .env("DEMO_DIR", &self.dir)
            .env_remove("PUZZLE_STORE");
        if let Some(r) = read {
            c.env("DEMO_READ", r);
        }
        run(&mut c)
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if is_mounted(&self.mnt()) {
            let _ = Command::new("umount").arg("-l").arg(self.mnt()).status();
        }
    }
}

fn can_mount() -> bool {
    let ok = Path::new("/dev/fuse").exists() && rustix::process::geteuid().is_root();
    assert!(ok || !require_tools(), "the demo needs root and /dev/fuse");
    ok
}

#[test]
fn demo_builds_mounts_reads_and_reports_then_unmounts() {
    let Some(corpus) = corpus() else { return };
    if !can_mount() || !have("mountpoint") {
        return;
    }
    let d = DemoDir::new();
    let r = d.run(&corpus, None);
    assert_eq!(r.code, 0, "demo failed:\n{}\n{}", r.stdout, r.stderr);
    for step in [
        "$ puzzle build",
        "$ puzzle mount django:5.0.8",
        "$ puzzle umount",
        "$ puzzle stats",
    ] {
        assert!(r.stderr.contains(step), "no `{step}` in:\n{}", r.stderr);
    }
    assert!(r.stderr.contains("built django:5.0.8"), "{}", r.stderr);
    // The file read through the mount.
    assert!(
        r.stdout.contains("VERSION = (5, 0, 8, \"final\", 0)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("django:5.0.7 -> django:5.0.8"),
        "{}",
        r.stdout
    );
    assert!(!is_mounted(&d.mnt()));

    // A failing read after the mount: the script fails, the trap unmounts.
    let r = d.run(&corpus, Some("/no/such/file"));
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("mounted django:5.0.8"), "{}", r.stderr);
    assert!(r.stderr.contains("unmounted"), "{}", r.stderr);
    assert!(!is_mounted(&d.mnt()), "the demo left its mount");
}
