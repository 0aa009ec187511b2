//! Reading a layer's tar: the limit on header bytes between entries, copying
//! an entry's contents while hashing them, and an entry's metadata (mode,
//! owner, PAX mtime and xattrs).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::rc::Rc;

use puzzle_store::tree::Meta;

use super::entry_err;
use crate::error::Result;

/// Longest xattr value or PAX record we keep (Linux's own xattr limit).
const MAX_XATTR_VALUE: usize = 64 << 10;

/// Most bytes of tar headers and extension records (PAX `x`/`g`, GNU `L`/`K`)
/// read between two entries. The tar crate holds extension data in memory.
pub(super) const HEADER_BUDGET: u64 = 8 << 20;

/// Reads through a shared byte budget: the tar crate reads extension records
/// whole into memory, so between entries only [`HEADER_BUDGET`] bytes may be
/// read; file contents are streamed with the budget lifted.
pub(super) struct Budgeted<R> {
    pub(super) inner: R,
    pub(super) left: Rc<Cell<u64>>,
    /// Bytes read so far: the position in the tar stream.
    pub(super) pos: u64,
    /// Where skipped bytes go (see the `Seek` impl), allocated on first use.
    pub(super) skipped: Vec<u8>,
}

/// Forward skips only, by reading: with this the tar crate skips the padding
/// after each entry through one reused buffer instead of zeroing a 32 KiB
/// buffer of its own every time (2.4 % of an as-built build's CPU on a layer
/// of many small files). The tar crate only seeks forward from the current
/// position.
impl<R: Read> io::Seek for Budgeted<R> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let backwards = || io::Error::other("a layer stream only skips forward");
        let io::SeekFrom::Current(n) = pos else {
            return Err(backwards());
        };
        let want = u64::try_from(n).map_err(|_| backwards())?;
        let mut buf = std::mem::take(&mut self.skipped);
        buf.resize(buf.len().max(want.min(8192) as usize), 0);
        let skipped = copy_hashing(
            &mut self.by_ref().take(want),
            &mut io::sink(),
            &mut buf,
            None,
        );
        self.skipped = buf;
        if skipped? < want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "unexpected EOF during skip",
            ));
        }
        Ok(self.pos)
    }
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other(format!(
                "more than {} MiB of tar headers and extension records (PAX, GNU long names) \
                 before the next entry",
                HEADER_BUDGET >> 20
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Copy buffer size for file contents.
pub(super) const COPY_BUF: usize = 256 << 10;

/// Copies `from` to `to` through `buf`, hashing what passes when `hasher` is
/// given. Returns the bytes copied.
pub(super) fn copy_hashing(
    from: &mut dyn Read,
    to: &mut dyn Write,
    buf: &mut [u8],
    mut hasher: Option<&mut blake3::Hasher>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Mode, owner, mtime (with PAX nanoseconds) and PAX xattrs of an entry.
pub(super) fn entry_meta<R: Read>(entry: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Meta> {
    let h = entry.header();
    let mode = h
        .mode()
        .map_err(|e| entry_err(path, format!("mode: {e}")))?
        & 0o7777;
    let uid = h.uid().map_err(|e| entry_err(path, format!("uid: {e}")))?;
    let gid = h.gid().map_err(|e| entry_err(path, format!("gid: {e}")))?;
    let uid = u32::try_from(uid).map_err(|_| entry_err(path, format!("uid {uid} is too large")))?;
    let gid = u32::try_from(gid).map_err(|_| entry_err(path, format!("gid {gid} is too large")))?;
    let mut mtime = h
        .mtime()
        .map_err(|e| entry_err(path, format!("mtime: {e}")))? as i64;
    let mut mtime_nsec = 0u32;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| entry_err(path, format!("PAX header: {e}")))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| entry_err(path, format!("PAX record: {e}")))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                let v = ext
                    .value()
                    .map_err(|_| entry_err(path, "PAX mtime is not text"))?;
                (mtime, mtime_nsec) = parse_pax_time(v)
                    .ok_or_else(|| entry_err(path, format!("bad PAX mtime {v:?}")))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                let value = ext.value_bytes();
                if name.is_empty() || value.len() > MAX_XATTR_VALUE {
                    return Err(entry_err(path, "invalid xattr record"));
                }
                xattrs.push((name.to_vec(), value.to_vec()));
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec,
        xattrs,
    })
}

/// Parses a PAX time: `[-]SECONDS[.FRACTION]`.
fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = frac.as_bytes().iter().take(9).map(|b| u32::from(b - b'0'));
    let mut nsec = 0u32;
    for _ in 0..9 {
        nsec = nsec * 10 + digits.next().unwrap_or(0);
    }
    if int.starts_with('-') && nsec > 0 {
        // -1.5 means 1.5 s before the epoch: (-2, 0.5 s).
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time("1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time("1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), None);
        assert_eq!(parse_pax_time("1.x"), None);
        // Out of range: an error, never an overflow.
        assert_eq!(parse_pax_time("-9223372036854775808.5"), None);
        assert_eq!(parse_pax_time("-9223372036854775808"), Some((i64::MIN, 0)));
        assert_eq!(parse_pax_time("9223372036854775808"), None);
        assert_eq!(
            parse_pax_time("-9223372036854775807.5"),
            Some((i64::MIN, 500_000_000))
        );
    }
}
