//! A tar archive read in place: one scan records where each member's bytes
//! sit, then members are served by seeking, never by extracting to disk.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use tar::EntryType;

use crate::error::{Error, Result};

use super::digest::shorten;

/// Where a regular member's bytes are in the archive file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub offset: u64,
    pub size: u64,
}

enum Link {
    Symbolic(String),
    Hard(String),
}

/// Symlink chains longer than this are treated as broken.
const MAX_LINK_HOPS: usize = 16;

/// Index of the regular members of a tar file, by normalized name
/// (no leading `./` or `/`, no empty or `.` components).
#[derive(Debug)]
pub(crate) struct TarIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

/// Normalizes a member name; `None` for the archive root itself.
/// Names containing `..` are rejected: nothing in an image archive needs one.
fn normalize_name(archive: &Path, name: &str) -> Result<Option<String>> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(Error::Invalid(format!(
                    "archive {}: member name {} contains '..'",
                    archive.display(),
                    shorten(name)
                )))
            }
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// Resolves a symlink target lexically against the link's directory, staying
/// inside the archive root; `None` if it climbs out.
fn resolve_symlink(link_name: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut dir: Vec<&str> = link_name.split('/').collect();
        dir.pop();
        dir
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl TarIndex {
    /// Scans the archive's headers (seeking over member data) and records every
    /// regular member. Symbolic and hard links to regular members (as `docker
    /// save` writes for repeated layers) resolve to their target's bytes.
    pub(crate) fn scan(path: &Path) -> Result<TarIndex> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if file_len == 0 {
            return Err(Error::Invalid(format!(
                "archive {} is empty",
                path.display()
            )));
        }
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        let mut links = HashMap::new();
        // The tar crate's messages about a bad header quote the header's
        // bytes: say what is wrong instead, in one line.
        let members_read = std::cell::Cell::new(0usize);
        let tar_err = |e: std::io::Error| {
            if e.raw_os_error().is_some() {
                return Error::io(path, e);
            }
            let n = members_read.get();
            Error::Invalid(if n == 0 {
                format!("{} is not a tar archive", path.display())
            } else {
                format!(
                    "{} is not a tar archive or is damaged: bad tar header after {n} members",
                    path.display()
                )
            })
        };
        let entries = archive.entries_with_seek().map_err(tar_err)?;
        for entry in entries {
            let entry = entry.map_err(tar_err)?;
            members_read.set(members_read.get() + 1);
            let raw_name = entry.path_bytes();
            let Ok(name) = std::str::from_utf8(&raw_name) else {
                // No member an image archive needs has a non-UTF-8 name.
                continue;
            };
            let Some(name) = normalize_name(path, name)? else {
                continue;
            };
            // A later member of the same name replaces an earlier one, as in tar.
            members.remove(&name);
            links.remove(&name);
            let kind = entry.header().entry_type();
            match kind {
                EntryType::Regular | EntryType::Continuous => {
                    let offset = entry.raw_file_position();
                    let size = entry.size();
                    if offset.checked_add(size).is_none_or(|end| end > file_len) {
                        return Err(Error::Invalid(format!(
                            "archive {} is truncated: member {} needs {size} bytes at offset {offset}, file has {file_len}",
                            path.display(),
                            shorten(&name)
                        )));
                    }
                    members.insert(name, Member { offset, size });
                }
                EntryType::Symlink | EntryType::Link => {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    let Ok(target) = std::str::from_utf8(&target) else {
                        continue;
                    };
                    let link = if kind == EntryType::Symlink {
                        Link::Symbolic(target.to_owned())
                    } else {
                        Link::Hard(target.to_owned())
                    };
                    links.insert(name, link);
                }
                _ => {}
            }
        }
        let resolved: Vec<(String, Member)> = links
            .keys()
            .filter_map(|name| {
                Self::resolve_link(&members, &links, name).map(|m| (name.clone(), m))
            })
            .collect();
        members.extend(resolved);
        Ok(TarIndex {
            path: path.to_owned(),
            members,
        })
    }

    fn resolve_link(
        members: &HashMap<String, Member>,
        links: &HashMap<String, Link>,
        name: &str,
    ) -> Option<Member> {
        let mut current = name.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            if let Some(m) = members.get(&current) {
                return Some(*m);
            }
            current = match links.get(&current)? {
                Link::Symbolic(target) => resolve_symlink(&current, target)?,
                // Hard link targets are archive paths, relative to the root.
                Link::Hard(target) => resolve_symlink("", target)?,
            };
        }
        None
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The member called `name` (any `./` prefix or redundant slashes ignored).
    pub(crate) fn get(&self, name: &str) -> Option<Member> {
        let name = normalize_name(&self.path, name).ok()??;
        self.members.get(&name).copied()
    }

    /// A reader over exactly the member's bytes.
    pub(crate) fn open(&self, member: Member) -> Result<Box<dyn Read + Send>> {
        open_range(&self.path, member)
    }

    /// Reads a small member whole. `None` if there is no such member.
    pub(crate) fn read_small(&self, name: &str, what: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(member) = self.get(name) else {
            return Ok(None);
        };
        if member.size > limit {
            return Err(Error::TooLarge {
                what: what.to_owned(),
                size: member.size,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(member.size as usize);
        self.open(member)?
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(&self.path, e))?;
        if buf.len() as u64 != member.size {
            return Err(Error::SizeMismatch {
                what: what.to_owned(),
                expected: member.size,
                actual: buf.len() as u64,
            });
        }
        Ok(Some(buf))
    }
}

/// Opens `path` and returns a reader over `member.size` bytes at `member.offset`.
pub(crate) fn open_range(path: &Path, member: Member) -> Result<Box<dyn Read + Send>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    file.seek(SeekFrom::Start(member.offset))
        .map_err(|e| Error::io(path, e))?;
    Ok(Box::new(file.take(member.size)))
}

#[cfg(test)]
impl TarIndex {
    /// All member names, sorted.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.members.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }

    fn append_link(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, name: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(kind);
        b.append_link(&mut h, name, target).unwrap();
    }

    fn write(dir: &Path, bytes: Vec<u8>) -> PathBuf {
        let p = dir.join("a.tar");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn scans_members_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, "./manifest.json", b"[]");
        append(&mut b, "abc/layer.tar", b"layer bytes");
        append_link(
            &mut b,
            EntryType::Symlink,
            "def/layer.tar",
            "../abc/layer.tar",
        );
        append_link(&mut b, EntryType::Link, "hard.tar", "abc/layer.tar");
        append_link(&mut b, EntryType::Symlink, "escape", "../../etc/passwd");
        append_link(&mut b, EntryType::Symlink, "loop1", "loop2");
        append_link(&mut b, EntryType::Symlink, "loop2", "loop1");
        let p = write(dir.path(), b.into_inner().unwrap());
        let idx = TarIndex::scan(&p).unwrap();
        assert_eq!(
            idx.names(),
            [
                "abc/layer.tar",
                "def/layer.tar",
                "hard.tar",
                "manifest.json"
            ]
        );
        let m = idx.get("./def//layer.tar").unwrap();
        assert_eq!(m, idx.get("abc/layer.tar").unwrap());
        let mut s = String::new();
        idx.open(m).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "layer bytes");
        assert_eq!(
            idx.read_small("manifest.json", "m", 10).unwrap().unwrap(),
            b"[]"
        );
        assert!(matches!(
            idx.read_small("abc/layer.tar", "layer", 4),
            Err(Error::TooLarge { size: 11, .. })
        ));
        assert!(idx.read_small("nope", "x", 4).unwrap().is_none());
    }

    #[test]
    fn rejects_dotdot_member_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        // tar::Builder refuses to write "..", so patch the name in by hand.
        append(&mut b, "xx/evil", b"x");
        let mut bytes = b.into_inner().unwrap();
        bytes[..7].copy_from_slice(b"../evil");
        // Fix up the header checksum after the edit.
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&bytes[..512]);
        h.set_cksum();
        bytes[..512].copy_from_slice(h.as_bytes());
        let p = write(dir.path(), bytes);
        match TarIndex::scan(&p) {
            Err(Error::Invalid(m)) => assert!(m.contains(".."), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, "big", &vec![7u8; 10_000]);
        let mut bytes = b.into_inner().unwrap();
        bytes.truncate(4096);
        let p = write(dir.path(), bytes);
        assert!(TarIndex::scan(&p).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), vec![0x5a; 3000]);
        assert!(TarIndex::scan(&p).is_err());
        let p = write(dir.path(), Vec::new());
        assert!(TarIndex::scan(&p).is_err());
    }
}
