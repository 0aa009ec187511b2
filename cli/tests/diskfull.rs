//! A build that runs out of disk space fails with a clear error and leaves a
//! store that verifies and keeps working. Needs root (mounts a 40 MiB tmpfs);
//! skipped otherwise unless PUZZLE_REQUIRE_TOOLS is set.

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
        r.stderr.contains("No space left on device") && r.stderr.contains("building django"),
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
