//! Resolving paths through symlinks inside the image root, as `umoci unpack`
//! does (filepath-securejoin): an entry whose parent path goes through a
//! symlink is placed where the symlink leads, and nothing leads out of the
//! root.
//!
//! Components are taken one by one from the left. A symlink met on the way
//! is replaced by its target's components; an absolute target starts again
//! at the root; `..` drops the last resolved component and stays at the
//! root when there is none. A component that does not exist (or follows
//! one that is no directory) is kept by name: later `..` drop it lexically,
//! as securejoin does. After [`MAX_SYMLINKS`] symlinks the resolution fails
//! (loops end there too), and at a symlink whose target is longer than
//! [`MAX_TARGET`] bytes (Linux cannot hold it; it also bounds the work: at
//! most 255 targets of 4 KiB are expanded).

use super::{InodeKind, Tree};

/// Most symlinks one resolution follows: securejoin's limit (umoci fails on
/// the 256th), not Linux's 40.
pub const MAX_SYMLINKS: usize = 255;

/// A path resolved inside the root: its components from the root, none of
/// them a symlink, each with its inode when it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub comps: Vec<(Vec<u8>, Option<usize>)>,
}

impl Resolved {
    /// The inode the whole path names, if it exists.
    pub fn ino(&self) -> Option<usize> {
        self.comps.last().map_or(Some(Tree::ROOT), |c| c.1)
    }

    /// The first `n` components as a normalized path.
    pub fn path(&self, n: usize) -> Vec<u8> {
        let names: Vec<&[u8]> = self.comps[..n].iter().map(|c| c.0.as_slice()).collect();
        names.join(&b'/')
    }
}

/// Longest symlink target followed: Linux's `PATH_MAX` less the NUL (a
/// longer one cannot be created, so umoci fails on it).
pub const MAX_TARGET: usize = 4095;

/// Why a path does not resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unresolvable {
    /// More than [`MAX_SYMLINKS`] symlinks: a loop or too long a chain.
    TooManySymlinks,
    /// A symlink on the way has a target over [`MAX_TARGET`] bytes.
    LongTarget,
}

impl Unresolvable {
    /// Why an entry whose `what` (a path) did not resolve is refused.
    pub(super) fn why(self, what: &str) -> String {
        match self {
            Unresolvable::TooManySymlinks => format!(
                "{what} leads through more than {MAX_SYMLINKS} symlinks (a symlink loop?); \
                 umoci refuses this image too"
            ),
            Unresolvable::LongTarget => format!(
                "{what} leads through a symlink whose target is over {MAX_TARGET} bytes; \
                 umoci refuses this image too"
            ),
        }
    }
}

impl Tree {
    /// Resolves every component of `path`, the last one too, following
    /// symlinks inside the root (see the module docs).
    pub fn resolve(&self, path: &[u8]) -> Result<Resolved, Unresolvable> {
        // Components still to resolve, the next one last.
        let mut todo: Vec<&[u8]> = path.split(|&b| b == b'/').rev().collect();
        let mut at: Vec<(&[u8], Option<usize>)> = Vec::new();
        let mut followed = 0usize;
        while let Some(comp) = todo.pop() {
            match comp {
                b"" | b"." => continue,
                b".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            let dir = at.last().map_or(Some(Self::ROOT), |c| c.1);
            let found = dir
                .and_then(|d| self.children(d))
                .and_then(|c| c.get(comp))
                .copied();
            if let Some(InodeKind::Symlink(target)) = found.map(|i| &self.inodes[i].kind) {
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(Unresolvable::TooManySymlinks);
                }
                if target.len() > MAX_TARGET {
                    return Err(Unresolvable::LongTarget);
                }
                if target.first() == Some(&b'/') {
                    at.clear();
                }
                todo.extend(target.split(|&b| b == b'/').rev());
                continue;
            }
            at.push((comp, found));
        }
        Ok(Resolved {
            comps: at.into_iter().map(|(c, i)| (c.to_vec(), i)).collect(),
        })
    }

    /// Looks up `path` with its parent resolved inside the root and its last
    /// component not followed (what a hard link's target names).
    pub fn find(&self, path: &[u8]) -> Result<Option<usize>, Unresolvable> {
        let (parent, name) = super::split_parent(path);
        if name.is_empty() {
            return Ok(Some(Self::ROOT));
        }
        Ok(self
            .resolve(parent)?
            .ino()
            .and_then(|d| self.children(d))
            .and_then(|c| c.get(name))
            .copied())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Inode, Meta};
    use super::*;
    use std::collections::BTreeMap;

    /// A tree from `(path, symlink target or "" for a directory or "=" for a
    /// file)`, parents listed first.
    fn tree(entries: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new();
        for (path, what) in entries {
            let (parent, name) = super::super::split_parent(path.as_bytes());
            let dir = t.lookup(parent).expect("parent listed first");
            let kind = match *what {
                "" => InodeKind::Dir(BTreeMap::new()),
                "=" => InodeKind::Fifo,
                target => InodeKind::Symlink(target.into()),
            };
            t.inodes.push(Inode {
                kind,
                meta: Meta::default(),
            });
            let ino = t.inodes.len() - 1;
            t.children_mut(dir).unwrap().insert(name.to_vec(), ino);
        }
        t
    }

    /// The resolved path, with `?` after components that do not exist.
    fn show(t: &Tree, path: &str) -> String {
        let r = t.resolve(path.as_bytes()).unwrap();
        let comps: Vec<String> = r
            .comps
            .iter()
            .map(|(c, i)| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(c),
                    ["?", ""][i.is_some() as usize]
                )
            })
            .collect();
        comps.join("/")
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let t = tree(&[
            ("usr", ""),
            ("usr/lib", ""),
            ("usr/lib64", "lib"),
            ("lib", "usr/lib"),
            ("abs", "/usr/lib"),
            ("a", "b"),
            ("b", "c/d"),
            ("up", "../../.."),
            ("root", "/"),
            ("share", "lib/../share"),
            ("dangling", "nowhere/deep"),
            ("file", "="),
            ("tofile", "file"),
            ("escape", "/../../usr"),
        ]);
        assert_eq!(show(&t, "lib"), "usr/lib");
        assert_eq!(show(&t, "lib/x/y"), "usr/lib/x?/y?");
        assert_eq!(show(&t, "abs"), "usr/lib");
        assert_eq!(show(&t, "usr/lib64"), "usr/lib");
        assert_eq!(show(&t, "a"), "c?/d?");
        assert_eq!(show(&t, "up"), "");
        assert_eq!(show(&t, "up/usr/lib64"), "usr/lib");
        assert_eq!(show(&t, "root"), "");
        assert_eq!(show(&t, "root/root/lib"), "usr/lib");
        // `..` after a symlink goes up from where the symlink led.
        assert_eq!(show(&t, "share"), "usr/share?");
        assert_eq!(show(&t, "dangling"), "nowhere?/deep?");
        assert_eq!(show(&t, "escape"), "usr");
        // A file is no directory: what follows it does not exist.
        assert_eq!(show(&t, "tofile/x"), "file/x?");
        // `..` past a missing component is lexical.
        assert_eq!(show(&t, "missing/../lib"), "usr/lib");
        assert_eq!(t.resolve(b"").unwrap().ino(), Some(Tree::ROOT));
        assert_eq!(t.resolve(b"up").unwrap().ino(), Some(Tree::ROOT));
        // `find` follows the parent only.
        assert_eq!(t.find(b"lib").unwrap(), t.lookup(b"lib"));
        assert_eq!(t.find(b"root/usr/lib64").unwrap(), t.lookup(b"usr/lib64"));
        assert_eq!(t.find(b"lib/nothing").unwrap(), None);
    }

    #[test]
    fn loops_and_long_chains_fail_after_255_symlinks() {
        let chain = |n: usize| {
            let mut e: Vec<(String, String)> = vec![("d".into(), String::new())];
            for i in 0..n {
                e.push((format!("c{i}"), format!("c{}", i + 1)));
            }
            e.push((format!("c{n}"), "d".into()));
            let refs: Vec<(&str, &str)> = e.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            tree(&refs)
        };
        // c0 .. c{n}: n + 1 symlinks.
        assert_eq!(show(&chain(254), "c0/x"), "d/x?");
        assert_eq!(
            chain(255).resolve(b"c0/x"),
            Err(Unresolvable::TooManySymlinks)
        );
        let t = tree(&[("a", "b"), ("b", "a"), ("self", "self/more")]);
        assert_eq!(t.resolve(b"a/x"), Err(Unresolvable::TooManySymlinks));
        assert_eq!(t.resolve(b"self"), Err(Unresolvable::TooManySymlinks));
        assert_eq!(t.find(b"a/x"), Err(Unresolvable::TooManySymlinks));
        // A target no Linux symlink holds is not followed.
        let long = format!("d/{}", "x/".repeat(MAX_TARGET / 2));
        let t2 = tree(&[("d", ""), ("long", &long), ("ok", &long[..MAX_TARGET])]);
        assert_eq!(t2.resolve(b"long/y"), Err(Unresolvable::LongTarget));
        assert!(t2.resolve(b"ok/y").is_ok());
        // The loop is not met when the path does not go through it.
        assert_eq!(t.find(b"a").unwrap(), t.lookup(b"a"));
    }
}
