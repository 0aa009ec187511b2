//! Writing tar entries with fixed header fields, and one compressed layer
//! blob through a chain of hashing writers.
//!
//! Headers are POSIX ustar with PAX records only where ustar cannot say it
//! (paths or link targets over 100 bytes, sub-second or negative mtimes,
//! large ids or sizes, xattrs as `SCHILY.xattr.NAME`). No user or group
//! names, no device numbers except on devices: the same entry always gives
//! the same bytes.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use puzzle_store::digest::HashingWriter;
use puzzle_store::BlobDigest;
use tar::{EntryType, Header};

use crate::error::{Error, Result};

/// Largest value of an 8-byte octal header field (uid, gid, mode).
const MAX_OCTAL_7: u64 = 0o7777777;
/// Largest value of a 12-byte octal header field (size, mtime).
const MAX_OCTAL_11: u64 = 0o77777777777;

/// What an entry is, with what its header needs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HeadKind<'a> {
    File {
        size: u64,
    },
    Dir,
    Symlink(&'a [u8]),
    /// A hard link to the entry written earlier at this path.
    Link(&'a [u8]),
    CharDev(u32, u32),
    BlockDev(u32, u32),
    Fifo,
}

/// The header of one tar entry.
#[derive(Clone, Debug)]
pub(crate) struct Head<'a> {
    /// The name as written (directories end in `/`, the root is `./`).
    pub path: Vec<u8>,
    pub kind: HeadKind<'a>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub xattrs: Vec<(&'a [u8], &'a [u8])>,
}

impl Head<'_> {
    /// A whiteout or opaque marker: an empty file with fixed metadata.
    pub fn marker(path: Vec<u8>) -> Head<'static> {
        Head {
            path,
            kind: HeadKind::File { size: 0 },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }
}

/// Appends one PAX record (`LEN KEY=VALUE\n`, LEN counting itself).
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time: `SECONDS[.NANOSECONDS]`, `-` before the epoch.
pub(crate) fn pax_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        sec.to_string()
    } else if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else {
        // (-2, 0.5 s) is 1.5 s before the epoch.
        format!(
            "-{}.{:09}",
            -(sec + 1),
            1_000_000_000 - nsec.min(999_999_999)
        )
    }
}

fn set_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// The header blocks of an entry (a PAX header first when needed).
pub(crate) fn header_bytes(h: &Head<'_>) -> io::Result<Vec<u8>> {
    let (typ, size, link, dev) = match h.kind {
        HeadKind::File { size } => (EntryType::Regular, size, None, None),
        HeadKind::Dir => (EntryType::Directory, 0, None, None),
        HeadKind::Symlink(t) => (EntryType::Symlink, 0, Some(t), None),
        HeadKind::Link(t) => (EntryType::Link, 0, Some(t), None),
        HeadKind::CharDev(a, b) => (EntryType::Char, 0, None, Some((a, b))),
        HeadKind::BlockDev(a, b) => (EntryType::Block, 0, None, Some((a, b))),
        HeadKind::Fifo => (EntryType::Fifo, 0, None, None),
    };
    let mut pax = Vec::new();
    if h.path.len() > 100 {
        pax_record(&mut pax, b"path", &h.path);
    }
    if let Some(l) = link.filter(|l| l.len() > 100) {
        pax_record(&mut pax, b"linkpath", l);
    }
    if u64::from(h.uid) > MAX_OCTAL_7 {
        pax_record(&mut pax, b"uid", h.uid.to_string().as_bytes());
    }
    if u64::from(h.gid) > MAX_OCTAL_7 {
        pax_record(&mut pax, b"gid", h.gid.to_string().as_bytes());
    }
    if size > MAX_OCTAL_11 {
        pax_record(&mut pax, b"size", size.to_string().as_bytes());
    }
    if h.mtime_nsec != 0 || h.mtime < 0 || h.mtime as u64 > MAX_OCTAL_11 {
        pax_record(
            &mut pax,
            b"mtime",
            pax_time(h.mtime, h.mtime_nsec).as_bytes(),
        );
    }
    for (name, value) in &h.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        pax_record(&mut pax, &key, value);
    }
    let mut out = Vec::with_capacity(512 + pax.len().next_multiple_of(512) + 512);
    if !pax.is_empty() {
        let mut ph = Header::new_ustar();
        set_bytes(&mut ph.as_old_mut().name, b"././@PaxHeader");
        ph.set_entry_type(EntryType::XHeader);
        ph.set_mode(0o644);
        ph.set_uid(0);
        ph.set_gid(0);
        ph.set_mtime(0);
        ph.set_size(pax.len() as u64);
        ph.set_cksum();
        out.extend_from_slice(ph.as_bytes());
        out.extend_from_slice(&pax);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    let mut hd = Header::new_ustar();
    set_bytes(&mut hd.as_old_mut().name, &h.path);
    if let Some(l) = link {
        set_bytes(&mut hd.as_old_mut().linkname, l);
    }
    hd.set_entry_type(typ);
    hd.set_mode(h.mode & 0o7777);
    // Values past the octal fields are written base-256 (as GNU tar and Go
    // read them), and also as PAX records above.
    hd.set_uid(u64::from(h.uid));
    hd.set_gid(u64::from(h.gid));
    hd.set_mtime(h.mtime.max(0) as u64);
    hd.set_size(size);
    if let Some((major, minor)) = dev {
        hd.set_device_major(major)?;
        hd.set_device_minor(minor)?;
    }
    hd.set_cksum();
    out.extend_from_slice(hd.as_bytes());
    Ok(out)
}

/// How layer tars are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    Zstd,
}

impl LayerCompression {
    /// The level used when none is given.
    pub fn default_level(self) -> i32 {
        match self {
            LayerCompression::Gzip => 6,
            LayerCompression::Zstd => 3,
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Levels accepted.
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            LayerCompression::Gzip => 0..=9,
            LayerCompression::Zstd => 1..=19,
        }
    }
}

enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn new(inner: W, c: LayerCompression, level: i32) -> io::Result<Self> {
        Ok(match c {
            // No file name, no time stamp, a fixed OS byte: the same tar
            // gives the same bytes.
            LayerCompression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(inner, flate2::Compression::new(level as u32)),
            ),
            LayerCompression::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(inner, level)?)
            }
        })
    }
    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

type Chain = BufWriter<HashingWriter<Encoder<HashingWriter<BufWriter<std::fs::File>>>>>;

/// A layer blob being written: tar bytes go in, hashed (the diff_id),
/// compressed, hashed again (the blob digest) and written to a temp file
/// in the destination's blob directory.
pub(crate) struct LayerBlob {
    tmp: tempfile::NamedTempFile,
    out: Chain,
    tmp_path: PathBuf,
}

/// A finished layer blob.
#[derive(Clone, Debug)]
pub struct WrittenLayer {
    pub digest: BlobDigest,
    pub size: u64,
    pub diff_id: BlobDigest,
    pub tar_bytes: u64,
}

impl LayerBlob {
    pub fn create(blobs: &Path, c: LayerCompression, level: i32) -> Result<LayerBlob> {
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-layer-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(blobs)
            .map_err(|e| Error::io(blobs, e))?;
        let tmp_path = tmp.path().to_path_buf();
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| Error::io(&tmp_path, e))?;
        let enc = Encoder::new(
            HashingWriter::new(BufWriter::with_capacity(1 << 20, file)),
            c,
            level,
        )
        .map_err(|e| Error::io(&tmp_path, e))?;
        Ok(LayerBlob {
            tmp,
            out: BufWriter::with_capacity(256 << 10, HashingWriter::new(enc)),
            tmp_path,
        })
    }

    /// Writes tar bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .write_all(data)
            .map_err(|e| Error::io(&self.tmp_path, e))
    }

    /// Writes an entry's header blocks.
    pub fn header(&mut self, h: &Head<'_>) -> Result<()> {
        let bytes = header_bytes(h).map_err(|e| {
            Error::Invalid(format!(
                "entry {}: {e}",
                puzzle_store::error::show_path(&h.path)
            ))
        })?;
        self.write(&bytes)
    }

    /// Pads file data of `size` bytes to a whole block.
    pub fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.write(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// Ends the tar, finishes the compressed stream, syncs the file and
    /// renames it to its digest in `blobs`.
    pub fn finish(mut self, blobs: &Path) -> Result<WrittenLayer> {
        let p = self.tmp_path.clone();
        let io = |e: io::Error| Error::io(&p, e);
        self.write(&[0u8; 1024])?;
        let tar_hash = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        let (enc, diff_id, tar_bytes) = tar_hash.finish();
        let blob_hash = enc.finish().map_err(io)?;
        let (buf, digest, size) = blob_hash.finish();
        let file = buf.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        let dest = blobs.join(digest.hex());
        self.tmp
            .persist(&dest)
            .map_err(|e| Error::io(&dest, e.error))?;
        Ok(WrittenLayer {
            digest,
            size,
            diff_id,
            tar_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for (k, v, want) in [
            (&b"path"[..], &b"a"[..], &b"9 path=a\n"[..]),
            (b"mtime", b"1.5", b"13 mtime=1.5\n"),
        ] {
            let mut out = Vec::new();
            pax_record(&mut out, k, v);
            assert_eq!(out, want);
        }
        // Where the length gains a digit by counting itself.
        let v = vec![b'x'; 91];
        let mut out = Vec::new();
        pax_record(&mut out, b"path", &v);
        assert_eq!(out.len(), 101);
        assert!(out.starts_with(b"101 path="));
    }

    #[test]
    fn pax_times_round_trip_through_the_reader_rules() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 250_000_000), "5.250000000");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_time(-1, 1), "-0.999999999");
    }

    /// Headers read back with the tar crate give the fields written, long
    /// names and xattrs through PAX.
    #[test]
    fn headers_read_back() {
        let long = vec![b'n'; 150];
        let target = vec![b't'; 120];
        let heads = [
            Head {
                path: long.clone(),
                kind: HeadKind::Symlink(&target),
                mode: 0o777,
                uid: 3_000_000,
                gid: 7,
                mtime: 1_600_000_000,
                mtime_nsec: 42,
                xattrs: vec![(b"user.a", b"v")],
            },
            Head {
                path: b"dev/null".to_vec(),
                kind: HeadKind::CharDev(1, 3),
                mode: 0o666,
                uid: 0,
                gid: 0,
                mtime: -5,
                mtime_nsec: 0,
                xattrs: vec![],
            },
        ];
        let mut tar = Vec::new();
        for h in &heads {
            tar.extend(header_bytes(h).unwrap());
        }
        tar.extend([0u8; 1024]);
        let mut ar = tar::Archive::new(&tar[..]);
        let mut entries = ar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), &long[..]);
        assert_eq!(&*e.link_name_bytes().unwrap(), &target[..]);
        assert_eq!(e.header().uid().unwrap(), 3_000_000);
        let pax: Vec<(Vec<u8>, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| {
                let r = r.unwrap();
                (r.key_bytes().to_vec(), r.value_bytes().to_vec())
            })
            .collect();
        assert!(pax.contains(&(b"mtime".to_vec(), b"1600000000.000000042".to_vec())));
        assert!(pax.contains(&(b"SCHILY.xattr.user.a".to_vec(), b"v".to_vec())));
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.header().entry_type(), EntryType::Char);
        assert_eq!(e.header().device_minor().unwrap(), Some(3));
        assert!(entries.next().is_none());
    }
}
