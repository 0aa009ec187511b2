//! Where blobs were seen in registries: `remotes/<host>`, one line per blob
//! and repository, `<sha256:hex> <repository>\n`, appended by `push` when a
//! registry holds a blob (found there, mounted or uploaded).
//!
//! The record is a hint, never trusted: a push asks the registry to mount a
//! blob from a repository named here, and uploads it when the registry
//! answers that it cannot. So it needs no lock: appends of whole short lines
//! with `O_APPEND` do not interleave, a torn or garbled line is skipped, and
//! losing the file costs uploads only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use crate::digest::BlobDigest;
use crate::error::{IoContext, Result};
use crate::layout::Store;

/// Longest record file read; past it the oldest lines are ignored (a store
/// that pushed millions of blobs to one registry).
const MAX_RECORD: u64 = 64 << 20;

fn record_path(store: &Store, host: &str) -> Option<PathBuf> {
    // Hosts are `name[:port]` or `[v6][:port]`: never a path separator.
    let ok = !host.is_empty()
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    ok.then(|| store.root().join("remotes").join(host))
}

fn valid_repo(repo: &str) -> bool {
    !repo.is_empty() && !repo.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20)
}

/// Records that repository `repo` of registry `host` holds `blobs`. A store
/// that cannot be written (read-only) records nothing, silently: the record
/// only saves uploads.
pub fn record(store: &Store, host: &str, repo: &str, blobs: &[BlobDigest]) -> Result<()> {
    let Some(path) = record_path(store, host) else {
        return Ok(());
    };
    if blobs.is_empty() || !valid_repo(repo) || !store.is_writable() {
        return Ok(());
    }
    let dir = path.parent().expect("under remotes/");
    fs::create_dir_all(dir).at(dir)?;
    let mut lines = String::new();
    for b in blobs {
        lines.push_str(&format!("{b} {repo}\n"));
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .at(&path)?;
    // One write per line: each lands whole even when two pushes append at once.
    for line in lines.split_inclusive('\n') {
        f.write_all(line.as_bytes()).at(&path)?;
    }
    Ok(())
}

/// The repositories of `host` recorded as holding `blob`, most recent first,
/// each once.
pub fn holders(store: &Store, host: &str, blob: &BlobDigest) -> Vec<String> {
    let Some(path) = record_path(store, host) else {
        return Vec::new();
    };
    let Ok(bytes) = read_tail(&path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let want = blob.to_string();
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().rev() {
        let Some((d, repo)) = line.split_once(' ') else {
            continue;
        };
        if d == want && valid_repo(repo) && !out.iter().any(|r| r == repo) {
            out.push(repo.to_owned());
        }
    }
    out
}

/// The last [`MAX_RECORD`] bytes of `path`.
fn read_tail(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(MAX_RECORD)))?;
    let mut buf = Vec::new();
    f.take(MAX_RECORD).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::StoreConfig;
    use puzzle_chunker::ChunkParams;

    #[test]
    fn records_and_finds_holders_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_or_create(
            &dir.path().join("s"),
            &StoreConfig::new(ChunkParams::default(), 3),
        )
        .unwrap();
        let (a, b) = (BlobDigest::of(b"a"), BlobDigest::of(b"b"));
        let host = "127.0.0.1:5000";
        assert!(holders(&store, host, &a).is_empty());
        record(&store, host, "lib/one", &[a, b]).unwrap();
        record(&store, host, "lib/two", &[a]).unwrap();
        record(&store, host, "lib/one", &[a]).unwrap();
        record(&store, "other:1", "lib/three", &[a]).unwrap();
        assert_eq!(holders(&store, host, &a), ["lib/one", "lib/two"]);
        assert_eq!(holders(&store, host, &b), ["lib/one"]);
        assert_eq!(holders(&store, "other:1", &b), Vec::<String>::new());
        // Garbage lines are skipped; a host that could name a path records nothing.
        let path = store.root().join("remotes").join(host);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"torn\n\xff\xfe x\n").unwrap();
        assert_eq!(holders(&store, host, &b), ["lib/one"]);
        record(&store, "../x", "lib/one", &[a]).unwrap();
        assert!(!store.root().join("x").exists());
    }
}
