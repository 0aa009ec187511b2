//! Squashed export: the flattened tree of a metadata blob as one tar.

use super::*;

pub(super) fn corrupt(why: String) -> Error {
    Error::Store(puzzle_store::Error::Corrupt {
        what: "metadata blob".into(),
        why,
    })
}

/// Writes the flattened tree of `meta` as one tar, depth-first in name
/// order; the second and later names of a hard-linked inode are links to
/// the first.
pub(super) fn write_squashed(
    blob: &mut LayerBlob,
    meta: &MetaBlob<Vec<u8>>,
    cache: &mut ChunkCache<'_>,
    opts: &ExportOptions<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let root = meta.root()?;
    let mut links: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut visited = vec![false; meta.inode_count() as usize];
    visited[0] = true;
    write_inode(blob, meta, &root, Vec::new(), None, cache, progress)?;
    let mut stack: Vec<(InodeRec, Vec<u8>, u32)> = vec![(root, Vec::new(), 0)];
    while let Some((dir, path, next)) = stack.pop() {
        cancelled(opts)?;
        if next >= dir.count() {
            continue;
        }
        stack.push((dir, path.clone(), next + 1));
        let (name, ino) = meta.dirent(&dir, next)?;
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(corrupt(format!("bad entry name in inode {}", dir.ino)));
        }
        let child_path = join(&path, name);
        let child = meta.inode(ino)?;
        if child.kind == Kind::Dir {
            if std::mem::replace(&mut visited[ino as usize], true) {
                return Err(corrupt(format!("directory inode {ino} is reachable twice")));
            }
            write_inode(
                blob,
                meta,
                &child,
                child_path.clone(),
                None,
                cache,
                progress,
            )?;
            stack.push((child, child_path, 0));
            continue;
        }
        let first = if child.nlink > 1 {
            match links.get(&ino) {
                Some(first) => Some(first.clone()),
                None => {
                    links.insert(ino, child_path.clone());
                    None
                }
            }
        } else {
            None
        };
        write_inode(
            blob,
            meta,
            &child,
            child_path,
            first.as_deref(),
            cache,
            progress,
        )?;
    }
    Ok(())
}

/// One inode of the flattened tree at `path` (a link to `link_to` if set).
pub(super) fn write_inode(
    blob: &mut LayerBlob,
    meta: &MetaBlob<Vec<u8>>,
    ino: &InodeRec,
    path: Vec<u8>,
    link_to: Option<&[u8]>,
    cache: &mut ChunkCache<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let target;
    let kind = match (link_to, ino.kind) {
        (Some(first), _) => HeadKind::Link(first),
        (None, Kind::File) => HeadKind::File { size: ino.size },
        (None, Kind::Dir) => HeadKind::Dir,
        (None, Kind::Symlink) => {
            target = meta.symlink_target(ino)?;
            HeadKind::Symlink(target)
        }
        (None, Kind::CharDev) => HeadKind::CharDev(ino.rdev().0, ino.rdev().1),
        (None, Kind::BlockDev) => HeadKind::BlockDev(ino.rdev().0, ino.rdev().1),
        (None, Kind::Fifo) => HeadKind::Fifo,
    };
    let name = if ino.kind == Kind::Dir {
        dir_name(&path)
    } else {
        path.clone()
    };
    let h = Head {
        path: name,
        kind,
        mode: ino.mode,
        uid: ino.uid,
        gid: ino.gid,
        mtime: ino.mtime,
        mtime_nsec: ino.mtime_nsec,
        xattrs: meta.xattrs(ino)?,
    };
    blob.header(&h)?;
    if !matches!(kind, HeadKind::File { .. }) {
        return Ok(());
    }
    let mut written = 0u64;
    for i in 0..ino.count() {
        let e = meta.extent(ino, i)?;
        let data = cache.get(e.chunk)?;
        let start = e.chunk_offset as usize;
        let slice = start
            .checked_add(e.len as usize)
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| {
                corrupt(format!(
                    "extent {i} of {} reaches past its chunk",
                    puzzle_store::error::show_path(&path)
                ))
            })?;
        blob.write(slice)?;
        written += slice.len() as u64;
        progress(slice.len() as u64);
    }
    if written != ino.size {
        return Err(corrupt(format!(
            "{} has {written} bytes of extents for size {}",
            puzzle_store::error::show_path(&path),
            ino.size
        )));
    }
    blob.pad(ino.size)
}
