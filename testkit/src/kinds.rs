//! The standard coverage image: every kind of entry and layer interaction a
//! converter must get right.

use crate::entry::Entry;
use crate::image::{Compression, Image};

/// Deterministic, non-repeating bytes (splitmix64 stream from `seed`).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = crate::SplitMix(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A `security.capability` value (VFS_CAP_REVISION_2, 20 bytes) granting
/// `cap_net_bind_service` (bit 10) as permitted and effective.
pub const CAP_NET_BIND_SERVICE: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic_etc: revision 2 | effective flag
    0x00, 0x04, 0x00, 0x00, // permitted[0]: bit 10
    0x00, 0x00, 0x00, 0x00, // inheritable[0]
    0x00, 0x00, 0x00, 0x00, // permitted[1]
    0x00, 0x00, 0x00, 0x00, // inheritable[1]
];

/// A directory component of 50 bytes, used to build paths over 100 bytes.
const LONG_DIR: &str = "long-directory-name-0123456789-abcdefghijklmnopqrs";

/// The long path (over 100 bytes) in layer 1.
pub fn long_path() -> String {
    format!("long/{LONG_DIR}/{LONG_DIR}/file-with-a-long-path.txt")
}

/// The symlink target over 100 bytes in layer 1.
pub fn long_target() -> String {
    format!("../{LONG_DIR}/{LONG_DIR}/{LONG_DIR}/target")
}

/// Contents shared by `dup/a.txt`, `dup/b.txt` (layer 1) and `dup/c.txt`
/// (layer 2).
pub fn dup_contents() -> Vec<u8> {
    pseudo_random(2, 100_000)
}

/// The layers of [`all_kinds_image`] as entries, with their compression.
///
/// Every path's parent directory has its own entry, before its children, in
/// the same or an earlier layer. Hard links carry the same metadata as their
/// target, so whether an extractor applies a link header's metadata cannot
/// matter.
pub fn all_kinds_layers() -> Vec<(Vec<Entry>, Compression)> {
    const T: u64 = 1_600_000_000;
    let big = pseudo_random(1, 1_536 * 1024 + 7);
    let dup = dup_contents();

    let layer1 = vec![
        // The root directory itself: umoci applies its metadata to rootfs.
        Entry::dir("./").mode(0o755).mtime(T, 250_000_000),
        // Regular files: empty, small, > 1 MiB of non-repeating bytes.
        Entry::dir("etc").mtime(T, 0),
        Entry::file("etc/hostname", "puzzle\n").mtime(T + 1, 0),
        Entry::file("empty", "").mtime(T, 0),
        Entry::file("big.bin", &big).mtime(T + 2, 0),
        // Two files with identical contents (dedup), a third comes in layer 2.
        Entry::dir("dup").mtime(T, 0),
        Entry::file("dup/a.txt", &dup).mtime(T, 0),
        Entry::file("dup/b.txt", &dup).mtime(T, 0),
        // Directories with odd modes: private, read-only (children must still
        // be written into it), setgid, sticky world-writable.
        Entry::dir("odd").mode(0o700).mtime(T, 0),
        Entry::dir("odd/readonly").mode(0o555).mtime(T, 0),
        Entry::file("odd/readonly/inside", "in a 0555 dir\n")
            .mode(0o444)
            .mtime(T, 0),
        Entry::dir("odd/setgid")
            .mode(0o2775)
            .owner(0, 50)
            .mtime(T, 0),
        Entry::dir("tmp").mode(0o1777).mtime(T, 0),
        // setuid / setgid / both + sticky executables, one owned by non-root:
        // chown after chmod would clear the bits.
        Entry::dir("bin").mtime(T, 0),
        Entry::file("bin/suid", "#!/bin/sh\n")
            .mode(0o4755)
            .mtime(T, 0),
        Entry::file("bin/sgid", "#!/bin/sh\n")
            .mode(0o2755)
            .owner(0, 42)
            .mtime(T, 0),
        Entry::file("bin/suid-user", "#!/bin/sh\n")
            .mode(0o6711)
            .owner(1000, 1000)
            .mtime(T, 0),
        // Non-zero owners, and ids too big for the octal field (PAX uid/gid).
        Entry::dir("home").mtime(T, 0),
        Entry::dir("home/user")
            .mode(0o750)
            .owner(1000, 1000)
            .mtime(T, 0),
        Entry::file("home/user/notes", "hi\n")
            .mode(0o600)
            .owner(1000, 1000)
            .mtime(T, 0),
        Entry::file("home/big-ids", "large ids\n")
            .owner(3_000_000, 3_000_001)
            .mtime(T, 0),
        // Symlinks: relative, absolute, dangling, owned by a user (lchown),
        // with a target over 100 bytes (PAX linkpath), with an mtime (lutimes).
        Entry::dir("links").mtime(T, 0),
        Entry::symlink("links/rel", "../etc/hostname").mtime(T + 3, 0),
        Entry::symlink("links/abs", "/etc/hostname").mtime(T + 4, 0),
        Entry::symlink("links/dangling", "does/not/exist").mtime(T, 0),
        Entry::symlink("links/owned", "rel")
            .owner(1000, 1001)
            .mtime(T, 0),
        Entry::symlink("links/long-target", long_target()).mtime(T, 0),
        // A hard link within the layer; `hl/base` gets a link in layer 3.
        Entry::dir("hl").mtime(T, 0),
        Entry::file("hl/orig", "linked twice\n")
            .mode(0o640)
            .owner(7, 8)
            .mtime(T + 5, 0),
        Entry::hardlink("hl/link", "hl/orig")
            .mode(0o640)
            .owner(7, 8)
            .mtime(T + 5, 0),
        Entry::file("hl/base", "linked from layer 3\n").mtime(T + 6, 0),
        // Device nodes and a FIFO.
        Entry::dir("dev").mtime(T, 0),
        Entry::char_dev("dev/null", 1, 3).mode(0o666).mtime(T, 0),
        Entry::block_dev("dev/loop0", 7, 0)
            .mode(0o660)
            .owner(0, 6)
            .mtime(T, 0),
        Entry::fifo("dev/fifo").mode(0o620).mtime(T, 0),
        // Extended attributes: text and binary user.* values, trusted.*,
        // security.capability (on a non-root-owned file: the capability must
        // be set after chown, which clears it), and one on a directory.
        Entry::dir("xattr")
            .xattr("user.dir", "on a directory")
            .mtime(T, 0),
        Entry::file("xattr/file", "has xattrs\n")
            .xattr("user.comment", "hello")
            .xattr("user.binary", [0u8, 1, 2, 0xff, 0])
            .xattr("trusted.puzzle", "t")
            .mtime(T, 0),
        Entry::file("xattr/cap", "\x7fELF pretend\n")
            .mode(0o755)
            .owner(1000, 1000)
            .xattr("security.capability", CAP_NET_BIND_SERVICE)
            .mtime(T, 0),
        // A path over 100 bytes (PAX path).
        Entry::dir("long").mtime(T, 0),
        Entry::dir(format!("long/{LONG_DIR}")).mtime(T, 0),
        Entry::dir(format!("long/{LONG_DIR}/{LONG_DIR}")).mtime(T, 0),
        Entry::file(long_path(), "deep\n").mtime(T, 0),
        // Non-ASCII UTF-8 and non-UTF-8 (Latin-1, lone 0xff) names.
        Entry::dir("names").mtime(T, 0),
        Entry::file("names/café-日本語.txt", "utf-8\n").mtime(T, 0),
        Entry::file(b"names/caf\xe9.txt", "latin-1\n").mtime(T, 0),
        Entry::dir(b"names/\xff\xfe-dir").mtime(T, 0),
        Entry::symlink(b"names/\xff\xfe-dir/link", b"../caf\xe9.txt").mtime(T, 0),
        // Targets of layer 2's whiteouts: a file, and a directory with content.
        Entry::dir("wh").mtime(T, 0),
        Entry::file("wh/file-gone", "deleted in layer 2\n").mtime(T, 0),
        Entry::dir("wh/dir-gone").mtime(T, 0),
        Entry::file("wh/dir-gone/child", "deleted with its dir\n").mtime(T, 0),
        Entry::file("wh/keep", "survives\n").mtime(T, 0),
        // Made opaque in layer 2: all of this disappears.
        Entry::dir("opq").mtime(T, 0),
        Entry::file("opq/old", "hidden by the opaque marker\n").mtime(T, 0),
        Entry::dir("opq/sub").mtime(T, 0),
        Entry::file("opq/sub/old2", "also hidden\n").mtime(T, 0),
        // Replaced in layer 2: a file by a directory, a directory by a file.
        Entry::file("f2d", "becomes a directory\n").mtime(T, 0),
        Entry::dir("d2f").mtime(T, 0),
        Entry::file("d2f/child", "goes away with its dir\n").mtime(T, 0),
    ];

    let layer2 = vec![
        // Whiteouts of a file and of a directory (one whiteout removes the
        // whole subtree). The parent is re-declared, as docker does.
        Entry::dir("wh").mtime(T + 10, 0),
        Entry::whiteout("wh/file-gone"),
        Entry::whiteout("wh/dir-gone"),
        // Opaque directory: new mode, marker first, then the new content.
        Entry::dir("opq").mode(0o750).mtime(T + 10, 0),
        Entry::opaque("opq"),
        Entry::file("opq/new", "only child after the opaque marker\n").mtime(T + 10, 0),
        // A file replaced by a directory, a directory replaced by a file.
        Entry::dir("f2d").mtime(T + 10, 0),
        Entry::file("f2d/inner", "inside the new directory\n").mtime(T + 10, 0),
        Entry::file("d2f", "was a directory\n").mtime(T + 10, 0),
        // A file overwritten with new contents and mode.
        Entry::dir("etc").mtime(T + 10, 0),
        Entry::file("etc/hostname", "puzzle-v2\n")
            .mode(0o600)
            .mtime(T + 11, 0),
        // Same contents as dup/a.txt, in another layer.
        Entry::dir("dup").mtime(T + 10, 0),
        Entry::file("dup/c.txt", &dup).mtime(T + 10, 0),
    ];

    let layer3 = vec![
        // A hard link to a file from layer 1 (not in this layer's tar).
        Entry::dir("hl").mtime(T + 20, 0),
        Entry::hardlink("hl/base-link", "hl/base").mtime(T + 6, 0),
        // Nanosecond mtimes (PAX mtime) on a directory, a file, a symlink.
        Entry::dir("late").mtime(T + 20, 123_456_789),
        Entry::file("late/nsec", "nanoseconds\n").mtime(T + 21, 987_654_321),
        Entry::symlink("late/link", "nsec").mtime(T + 22, 5),
        // A new file in a directory made opaque by the previous layer.
        Entry::dir("opq").mode(0o750).mtime(T + 20, 0),
        Entry::file("opq/later", "added after the opaque layer\n").mtime(T + 20, 0),
    ];

    vec![
        (layer1, Compression::Gzip),
        (layer2, Compression::Zstd),
        (layer3, Compression::None),
    ]
}

/// The standard coverage image: three layers (gzip, zstd, plain) built from
/// [`all_kinds_layers`], with an env and a cmd in the config.
pub fn all_kinds_image() -> Image {
    all_kinds_layers()
        .into_iter()
        .fold(Image::new(), |img, (entries, c)| img.layer(&entries, c))
        .env("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .cmd(["/bin/sh"])
}
