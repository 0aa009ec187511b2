//! The layer model and flattening.
//!
//! A [`Layer`] is one converted OCI layer: its entries sorted by path, file
//! contents as chunk extents, whiteouts and opaque markers explicit. A
//! [`Tree`] is the flattened image: [`Tree::apply`] applies layers in order
//! with OCI semantics (whiteouts and opaque markers hide lower layers only;
//! hard links may point into lower layers). A parent path that goes through
//! a symlink is resolved inside the image root, as `umoci unpack` does
//! ([`resolve`]): an entry is never written outside the tree.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};

use puzzle_chunker::ChunkId;
use serde::{Deserialize, Serialize};

use crate::error::{show_path, Error, Result};

pub mod resolve;
pub use resolve::{Resolved, Unresolvable, MAX_SYMLINKS, MAX_TARGET};

/// Ownership, permissions, times and xattrs of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Sorted by name, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A byte range of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub chunk: ChunkId,
    pub offset: u32,
    pub len: u32,
}

/// BLAKE3-256 of a regular file's whole contents: tells whether two files
/// hold the same bytes whatever chunks (and offsets in them) carry those bytes.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileDigest([u8; 32]);

impl FileDigest {
    pub fn of(data: &[u8]) -> Self {
        FileDigest(*blake3::hash(data).as_bytes())
    }
    pub const fn from_bytes(b: [u8; 32]) -> Self {
        FileDigest(b)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for FileDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileDigest({self})")
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    File {
        size: u64,
        extents: Vec<Extent>,
        /// BLAKE3 of the contents.
        digest: FileDigest,
    },
    Dir,
    Symlink(Vec<u8>),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self, Node::Dir)
    }
}

/// One entry of a converted layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerEntry {
    /// A new or replaced entry at `path`.
    Node {
        path: Vec<u8>,
        node: Node,
        meta: Meta,
    },
    /// A hard link at `path` to the entry at `target`, looked up after this
    /// layer's entries are in place (a target in this layer).
    HardLink { path: Vec<u8>, target: Vec<u8> },
    /// A hard link at `path` to the entry `target` names in the lower layers,
    /// looked up before this layer's whiteouts and entries apply (the tar
    /// linked to it before this layer defined anything at `target`).
    LowerLink { path: Vec<u8>, target: Vec<u8> },
}

impl LayerEntry {
    /// A regular file's size, content digest and extents.
    pub fn file(&self) -> Option<(u64, &FileDigest, &[Extent])> {
        match self {
            LayerEntry::Node {
                node:
                    Node::File {
                        size,
                        extents,
                        digest,
                    },
                ..
            } => Some((*size, digest, extents.as_slice())),
            _ => None,
        }
    }

    pub fn path(&self) -> &[u8] {
        match self {
            LayerEntry::Node { path, .. }
            | LayerEntry::HardLink { path, .. }
            | LayerEntry::LowerLink { path, .. } => path,
        }
    }
}

/// A converted layer. Paths are normalized (see [`normalize_path`]); the
/// root directory is the empty path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Sorted by path, one entry per path.
    pub entries: Vec<LayerEntry>,
    /// Paths hidden by `.wh.NAME` files, sorted.
    pub whiteouts: Vec<Vec<u8>>,
    /// Directories whose lower contents `.wh..wh..opq` hides, sorted.
    pub opaques: Vec<Vec<u8>>,
}

/// 2: files carry their content digest.
/// 3: links into lower layers are [`LayerEntry::LowerLink`].
/// 4: the postcard bytes are one zstd frame (level 1).
const LAYER_RECORD_VERSION: u8 = 4;

/// Largest decompressed layer record accepted (a layer of millions of files
/// stays far below it).
const MAX_RECORD: usize = 1 << 30;

impl Layer {
    /// Serialized form kept in the index's layer cache: a version byte, then
    /// the postcard encoding compressed with zstd (records repeat paths and
    /// chunk ids; compressed they take about a quarter of the space in the
    /// index).
    pub fn to_record(&self) -> Vec<u8> {
        let plain = postcard::to_stdvec(self).expect("layer serializes");
        let mut out = vec![LAYER_RECORD_VERSION];
        let mut enc = zstd::stream::Encoder::new(&mut out, 1).expect("zstd encoder");
        enc.write_all(&plain).expect("writes to memory");
        enc.finish().expect("writes to memory");
        out
    }

    pub fn from_record(bytes: &[u8]) -> Result<Layer> {
        let bad = |why: String| Error::Corrupt {
            what: "layer record".into(),
            why,
        };
        match bytes.split_first() {
            Some((&LAYER_RECORD_VERSION, rest)) => {
                let mut plain = Vec::new();
                zstd::stream::Decoder::new(rest)
                    .map_err(|e| bad(format!("zstd: {e}")))?
                    .take(MAX_RECORD as u64 + 1)
                    .read_to_end(&mut plain)
                    .map_err(|e| bad(format!("zstd: {e}")))?;
                if plain.len() > MAX_RECORD {
                    return Err(bad("over 1 GiB decompressed".into()));
                }
                postcard::from_bytes(&plain).map_err(|e| bad(e.to_string()))
            }
            Some((v, _)) => Err(bad(format!("unknown version {v}"))),
            None => Err(bad("empty".into())),
        }
    }

    /// Regular files in path (chunking) order: size, content digest, extents.
    pub fn files(&self) -> impl Iterator<Item = (u64, &FileDigest, &[Extent])> {
        self.entries.iter().filter_map(LayerEntry::file)
    }

    /// Every chunk the layer's files use.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkId> {
        self.files().flat_map(|f| f.2).map(|x| &x.chunk)
    }
}

/// Normalizes a tar path: strips `./` and trailing `/`, folds `//` and `.`.
/// Refuses absolute paths and `..` components. The root is `""`.
pub fn normalize_path(raw: &[u8]) -> std::result::Result<Vec<u8>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if raw.contains(&0) {
        return Err("NUL byte in path");
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err("path contains '..'"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits a normalized path into its parent and last component.
pub fn split_parent(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// An inode of the flattened tree.
#[derive(Clone, Debug)]
pub struct Inode {
    pub kind: InodeKind,
    pub meta: Meta,
}

impl Inode {
    fn kind_is_dir(&self) -> bool {
        matches!(self.kind, InodeKind::Dir(_))
    }
}

#[derive(Clone, Debug)]
pub enum InodeKind {
    File {
        size: u64,
        extents: Vec<Extent>,
        digest: FileDigest,
    },
    Dir(BTreeMap<Vec<u8>, usize>),
    Symlink(Vec<u8>),
    CharDev {
        major: u32,
        minor: u32,
    },
    BlockDev {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// The flattened image: an arena of inodes, the root at index 0. Several
/// directory entries may name one inode (hard links). Unreachable inodes are
/// dropped when the tree is encoded.
#[derive(Clone, Debug)]
pub struct Tree {
    pub inodes: Vec<Inode>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

/// The directory [`Tree::parent_dir`] found last while a layer is applied:
/// its path and inode.
type LastParent = Option<(Vec<u8>, usize)>;

/// Metadata of directories a layer implies but does not list.
fn implicit_dir_meta() -> Meta {
    Meta {
        mode: 0o755,
        ..Meta::default()
    }
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            inodes: vec![Inode {
                kind: InodeKind::Dir(BTreeMap::new()),
                meta: implicit_dir_meta(),
            }],
        }
    }

    pub const ROOT: usize = 0;

    fn children(&self, ino: usize) -> Option<&BTreeMap<Vec<u8>, usize>> {
        match &self.inodes[ino].kind {
            InodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }

    fn children_mut(&mut self, ino: usize) -> Option<&mut BTreeMap<Vec<u8>, usize>> {
        match &mut self.inodes[ino].kind {
            InodeKind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Looks up a normalized path without following symlinks.
    pub fn lookup(&self, path: &[u8]) -> Option<usize> {
        let mut ino = Self::ROOT;
        if path.is_empty() {
            return Some(ino);
        }
        for comp in path.split(|&b| b == b'/') {
            ino = *self.children(ino)?.get(comp)?;
        }
        Some(ino)
    }

    /// The directory that will hold `path`, creating missing directories.
    /// The parent path is resolved inside the root ([`Tree::resolve`]); a
    /// parent that is no directory or does not resolve is an error.
    fn parent_dir(&mut self, path: &[u8], last: &mut LastParent) -> Result<usize> {
        let (parent, _) = split_parent(path);
        let mut ino = Self::ROOT;
        if parent.is_empty() {
            return Ok(ino);
        }
        if let Some((p, dir)) = last {
            if p.as_slice() == parent {
                return Ok(*dir);
            }
        }
        let resolved = self
            .resolve(parent)
            .map_err(|e| bad_entry(path, e.why(&format!("parent {}", show_path(parent)))))?;
        for (i, (comp, found)) in resolved.comps.iter().enumerate() {
            ino = match found {
                Some(child) if self.inodes[*child].kind_is_dir() => *child,
                Some(_) => {
                    return Err(bad_entry(
                        path,
                        format!(
                            "parent {} is not a directory",
                            show_path(&resolved.path(i + 1))
                        ),
                    ))
                }
                None => {
                    let new = self.push(InodeKind::Dir(BTreeMap::new()), implicit_dir_meta());
                    self.children_mut(ino)
                        .expect("walk stays in dirs")
                        .insert(comp.clone(), new);
                    new
                }
            };
        }
        *last = Some((parent.to_vec(), ino));
        Ok(ino)
    }

    fn push(&mut self, kind: InodeKind, meta: Meta) -> usize {
        self.inodes.push(Inode { kind, meta });
        self.inodes.len() - 1
    }

    /// Applies one layer on top of the tree.
    pub fn apply(&mut self, layer: &Layer) -> Result<()> {
        // Links into lower layers name what is there before this layer changes
        // anything (tar order: the link came before this layer's definition).
        let mut lower_links = Vec::new();
        for e in &layer.entries {
            if let LayerEntry::LowerLink { path, target } = e {
                lower_links.push((path, self.link_target(path, target)?));
            }
        }
        // Whiteouts and opaque markers hide what lower layers put there,
        // their directories resolved inside the root.
        let unresolved = |path: &[u8], what: &str, dir: &[u8], e: Unresolvable| {
            bad_entry(path, e.why(&format!("{what} {}", show_path(dir))))
        };
        for w in &layer.whiteouts {
            let (parent, name) = split_parent(w);
            let dir = self
                .resolve(parent)
                .map_err(|e| unresolved(w, "the whiteout's directory", parent, e))?
                .ino();
            if let Some(children) = dir.and_then(|d| self.children_mut(d)) {
                children.remove(name);
            }
        }
        for o in &layer.opaques {
            let dir = self
                .resolve(o)
                .map_err(|e| unresolved(o, "opaque directory", o, e))?
                .ino();
            if let Some(children) = dir.and_then(|d| self.children_mut(d)) {
                children.clear();
            }
        }
        // Sorted paths put every parent before its children, and siblings
        // one after another: the last parent found is looked at first.
        let mut last = None;
        for e in &layer.entries {
            if let LayerEntry::Node { path, node, meta } = e {
                self.put(path, node, meta, &mut last)?;
            }
        }
        // Links may replace a directory: no parent is taken as found there.
        for (path, ino) in lower_links {
            self.link_inode(path, ino, &mut None)?;
        }
        // Links within the layer last: their targets may sort after them.
        for e in &layer.entries {
            if let LayerEntry::HardLink { path, target } = e {
                let ino = self.link_target(path, target)?;
                self.link_inode(path, ino, &mut None)?;
            }
        }
        Ok(())
    }

    fn put(&mut self, path: &[u8], node: &Node, meta: &Meta, last: &mut LastParent) -> Result<()> {
        if path.is_empty() {
            if !node.is_dir() {
                return Err(bad_entry(path, "the root must be a directory".into()));
            }
            self.inodes[Self::ROOT].meta = meta.clone();
            return Ok(());
        }
        let dir = self.parent_dir(path, last)?;
        let (_, name) = split_parent(path);
        let existing = self.children(dir).and_then(|c| c.get(name).copied());
        if existing.is_some() {
            // A node replaced or merged: entries out of sorted order (a
            // record could hold them) may have found it as a parent before.
            *last = None;
        }
        if let (Some(old), Node::Dir) = (existing, node) {
            if let InodeKind::Dir(_) = self.inodes[old].kind {
                // A directory over a directory merges: only metadata changes.
                self.inodes[old].meta = meta.clone();
                return Ok(());
            }
        }
        let kind = match node {
            Node::File {
                size,
                extents,
                digest,
            } => InodeKind::File {
                size: *size,
                extents: extents.clone(),
                digest: *digest,
            },
            Node::Dir => InodeKind::Dir(BTreeMap::new()),
            Node::Symlink(t) => InodeKind::Symlink(t.clone()),
            Node::CharDev { major, minor } => InodeKind::CharDev {
                major: *major,
                minor: *minor,
            },
            Node::BlockDev { major, minor } => InodeKind::BlockDev {
                major: *major,
                minor: *minor,
            },
            Node::Fifo => InodeKind::Fifo,
        };
        let new = self.push(kind, meta.clone());
        self.children_mut(dir)
            .expect("parent is a dir")
            .insert(name.to_vec(), new);
        Ok(())
    }

    /// The inode a hard link at `path` to `target` names.
    fn link_target(&self, path: &[u8], target: &[u8]) -> Result<usize> {
        if path.is_empty() {
            return Err(bad_entry(path, "the root cannot be a hard link".into()));
        }
        let t = self.find(target).map_err(|e| {
            bad_entry(
                path,
                e.why(&format!("hard link target {}", show_path(target))),
            )
        })?;
        let t = t.ok_or_else(|| {
            bad_entry(
                path,
                format!("hard link target {} does not exist", show_path(target)),
            )
        })?;
        if matches!(self.inodes[t].kind, InodeKind::Dir(_)) {
            return Err(bad_entry(
                path,
                format!("hard link target {} is a directory", show_path(target)),
            ));
        }
        Ok(t)
    }

    fn link_inode(&mut self, path: &[u8], t: usize, last: &mut LastParent) -> Result<()> {
        let dir = self.parent_dir(path, last)?;
        let (_, name) = split_parent(path);
        self.children_mut(dir)
            .expect("parent is a dir")
            .insert(name.to_vec(), t);
        Ok(())
    }

    /// Reachable inodes in breadth-first order of sorted names, each once:
    /// the order inode numbers are assigned in (root first).
    pub fn order(&self) -> Vec<usize> {
        let mut seen = vec![false; self.inodes.len()];
        let mut order = vec![Self::ROOT];
        seen[Self::ROOT] = true;
        let mut i = 0;
        while i < order.len() {
            if let Some(children) = self.children(order[i]) {
                for &c in children.values() {
                    if !seen[c] {
                        seen[c] = true;
                        order.push(c);
                    }
                }
            }
            i += 1;
        }
        order
    }
}

fn bad_entry(path: &[u8], why: String) -> Error {
    Error::BadEntry {
        path: show_path(path),
        why,
    }
}

#[cfg(test)]
mod tests;
