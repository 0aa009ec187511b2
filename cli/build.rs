//! Records the git commit the binary is built from, for `puzzle --version`.
//!
//! The commit comes from `$PUZZLE_GIT_COMMIT` when set (builds from a source
//! tarball), else from `git rev-parse HEAD`, else it is `unknown`. Cargo
//! reruns this script only when HEAD or the branch it points to moves: in a
//! linked worktree `.git` is a file and the branch lives in the common git
//! directory, so the paths are asked from git (`--git-path`), never guessed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PUZZLE_GIT_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let commit = match std::env::var("PUZZLE_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            for path in watched(&dir) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            git(&dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=PUZZLE_GIT_COMMIT={commit}");
}

/// Runs git in `dir`; its trimmed stdout, or `None` on any failure.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The files whose change means a new commit: HEAD, the ref it names and
/// packed-refs (where a ref may live instead). Only existing files: cargo
/// reruns a script on every build while a watched path is missing.
fn watched(dir: &Path) -> Vec<PathBuf> {
    let mut names = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        names.push(r);
    }
    names
        .iter()
        .filter_map(|n| {
            git(
                dir,
                &["rev-parse", "--path-format=absolute", "--git-path", n],
            )
        })
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect()
}
