//! Running external reference tools (`umoci`, `skopeo`).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Whether an executable called `name` is on `PATH`.
pub fn tool_available(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Runs `umoci unpack --image LAYOUT:TAG BUNDLE` (as root, so ownership,
/// devices and xattrs are applied) and returns `BUNDLE/rootfs`. `bundle`
/// must not exist yet.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> Result<PathBuf> {
    let mut image = OsString::from(layout.as_os_str());
    image.push(":");
    image.push(tag);
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(&image)
        .arg(bundle)
        .output()
        .context("run umoci")?;
    if !out.status.success() {
        bail!(
            "umoci unpack {} failed ({}): {}",
            image.to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(bundle.join("rootfs"))
}
