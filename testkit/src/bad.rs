//! Hostile and broken inputs: tars that try to escape the target directory,
//! headers that lie about sizes, and damaged OCI layouts.
//!
//! The tars are written header byte by header byte ([`crate::raw`]), because
//! the `tar` crate refuses to build most of them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::raw::{typeflag, RawHeader, TarBuilder};

fn file_header(name: &[u8], size: u64) -> RawHeader {
    RawHeader {
        name: name.to_vec(),
        mode: 0o644,
        size,
        mtime: crate::entry::DEFAULT_MTIME,
        typeflag: typeflag::REG,
        ..RawHeader::default()
    }
}

fn single_file_tar(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut tb = TarBuilder::new();
    tb.header(&file_header(name, data.len() as u64)).data(data);
    tb.finish()
}

/// A tar with one regular file named `../escape`.
pub fn dotdot_tar() -> Vec<u8> {
    single_file_tar(b"../escape", b"escaped via ..\n")
}

/// A tar with one regular file named `a/../../escape` (`..` in the middle).
pub fn inner_dotdot_tar() -> Vec<u8> {
    single_file_tar(b"a/../../escape", b"escaped via a/../..\n")
}

/// A tar with one regular file named `/etc/abs` (absolute path).
pub fn absolute_tar() -> Vec<u8> {
    single_file_tar(b"/etc/abs", b"absolute\n")
}

/// A tar with a symlink `link -> target` followed by a regular file
/// `link/evil`: extracting naively writes `target/evil`. Use `/tmp` or `..`.
pub fn symlink_escape_tar(target: &[u8]) -> Vec<u8> {
    let mut tb = TarBuilder::new();
    tb.header(&RawHeader {
        name: b"link".to_vec(),
        mode: 0o777,
        mtime: crate::entry::DEFAULT_MTIME,
        typeflag: typeflag::SYM,
        linkname: target.to_vec(),
        ..RawHeader::default()
    });
    let data = b"written through a symlink\n";
    tb.header(&file_header(b"link/evil", data.len() as u64))
        .data(data);
    tb.finish()
}

/// A tar with a regular file `victim` and a hard link `passwd` whose target
/// is `target` (use `../../etc/passwd` or `/etc/passwd`): extracting naively
/// links a file outside the target directory.
pub fn hardlink_escape_tar(target: &[u8]) -> Vec<u8> {
    let mut tb = TarBuilder::new();
    let data = b"inside\n";
    tb.header(&file_header(b"victim", data.len() as u64))
        .data(data);
    tb.header(&RawHeader {
        name: b"passwd".to_vec(),
        mode: 0o644,
        mtime: crate::entry::DEFAULT_MTIME,
        typeflag: typeflag::LNK,
        linkname: target.to_vec(),
        ..RawHeader::default()
    });
    tb.finish()
}

/// A header for a regular file `huge` claiming 1 TiB (base-256 size field),
/// followed by a few bytes and then the end of the stream.
pub fn huge_size_tar() -> Vec<u8> {
    let mut tb = TarBuilder::new();
    tb.header(&file_header(b"huge", 1 << 40));
    tb.raw(b"only a few bytes follow");
    tb.into_inner()
}

/// Like [`huge_size_tar`], but the 1 TiB size comes from a PAX `size` record
/// (the ustar field says 0).
pub fn huge_pax_size_tar() -> Vec<u8> {
    let mut tb = TarBuilder::new();
    tb.pax(
        &[(b"size".to_vec(), (1u64 << 40).to_string().into_bytes())],
        crate::raw::Magic::Ustar,
    );
    tb.header(&file_header(b"huge", 0));
    tb.raw(b"only a few bytes follow");
    tb.into_inner()
}

/// A valid tar whose first header has a wrong checksum.
pub fn bad_checksum_tar() -> Vec<u8> {
    let mut t = single_file_tar(b"file", b"data\n");
    t[148] = if t[148] == b'1' { b'2' } else { b'1' };
    t
}

/// The path of blob `digest` (`sha256:<hex>` or bare hex) in `layout`.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    layout.join("blobs").join(alg).join(hex)
}

/// Flips one byte (the middle one) of a blob, keeping its name.
pub fn corrupt_blob(layout: &Path, digest: &str) -> Result<()> {
    let p = blob_path(layout, digest);
    let mut data = fs::read(&p).with_context(|| format!("read {}", p.display()))?;
    if data.is_empty() {
        bail!("{}: empty blob, nothing to corrupt", p.display());
    }
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&p, data).with_context(|| format!("write {}", p.display()))
}

/// Deletes a blob.
pub fn remove_blob(layout: &Path, digest: &str) -> Result<()> {
    let p = blob_path(layout, digest);
    fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))
}

/// Cuts a blob to `new_len` bytes.
pub fn truncate_blob(layout: &Path, digest: &str, new_len: u64) -> Result<()> {
    let p = blob_path(layout, digest);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .with_context(|| format!("open {}", p.display()))?;
    f.set_len(new_len)
        .with_context(|| format!("truncate {}", p.display()))
}

/// Replaces `index.json` with JSON that stops in the middle of an object.
pub fn write_malformed_index(layout: &Path) -> Result<()> {
    let p = layout.join("index.json");
    fs::write(
        &p,
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:"#,
    )
    .with_context(|| format!("write {}", p.display()))
}
