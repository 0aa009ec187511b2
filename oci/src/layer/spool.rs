//! The spool file a layer's file contents are written to, and its disk
//! accounting: what it holds is counted in a [`SpoolMeter`], and the space of
//! files found stored is given back (cut off or punched out).

use std::io::{self, Seek, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::LiveSpool;

/// Spool writes are gathered into blocks of this size; a [`LiveSpool`] grows
/// by one block at a time.
pub(super) const SPOOL_BUF: usize = 1 << 20;

/// Bytes of layer contents held in spool files at once, and the most held
/// so far: the temporary disk a build takes besides its new packs.
#[derive(Debug, Default)]
pub struct SpoolMeter {
    now: AtomicU64,
    peak: AtomicU64,
}

impl SpoolMeter {
    fn add(&self, n: u64) {
        let now = self.now.fetch_add(n, Ordering::SeqCst) + n;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn sub(&self, n: u64) {
        self.now.fetch_sub(n, Ordering::SeqCst);
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Bytes held now.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// A spool file and the bytes of it that take disk space (written, less
/// given back), counted in a [`SpoolMeter`] until the file goes.
pub(super) struct SpoolFile {
    pub(super) file: std::fs::File,
    pub(super) held: u64,
    pub(super) meter: Option<Arc<SpoolMeter>>,
}

impl SpoolFile {
    fn grew(&mut self, n: u64) {
        self.held += n;
        if let Some(m) = &self.meter {
            m.add(n);
        }
    }

    fn shrank(&mut self, n: u64) {
        let n = n.min(self.held);
        self.held -= n;
        if let Some(m) = &self.meter {
            m.sub(n);
        }
    }

    /// Gives back the disk space of bytes `off..off + len` by punching a hole
    /// (ext4, xfs, btrfs and tmpfs can). Where the file system cannot, the
    /// bytes stay, counted, until the spool goes.
    pub(super) fn punch(&mut self, off: u64, len: u64) {
        use rustix::fs::{fallocate, FallocateFlags};
        if len > 0
            && fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                off,
                len,
            )
            .is_ok()
        {
            self.shrank(len);
        }
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        self.shrank(self.held);
    }
}

/// The spool file behind a buffer; each block written is published to `live`.
pub(super) struct SpoolOut<'a> {
    pub(super) spool: SpoolFile,
    pub(super) buf: Vec<u8>,
    /// Bytes written to the file.
    pub(super) written: u64,
    pub(super) live: Option<&'a LiveSpool>,
    /// Spooled ranges (offset, length) of files found stored, whose space is
    /// given back once nobody reads them again ([`SpoolOut::release`]).
    pub(super) stored: Vec<(u64, u64)>,
}

impl SpoolOut<'_> {
    fn write_through(&mut self, data: &[u8]) -> io::Result<()> {
        self.spool.file.write_all(data)?;
        self.written += data.len() as u64;
        self.spool.grew(data.len() as u64);
        if let Some(live) = self.live {
            live.grew(self.written);
            live.wait_room(self.written);
        }
        // As the chunking side moves on, while a big file is written.
        self.release_read()
    }

    /// Where the next byte written goes.
    pub(super) fn pos(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Notes that the spooled bytes `off..off + len` are a file found
    /// stored, and gives back what nobody reads again.
    pub(super) fn release(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.stored.push((off, len));
        self.flush()?;
        self.release_read()
    }

    /// Gives back the space of the ranges of files found stored that nobody
    /// reads again, keeping the others. While the layer is chunked live, a
    /// range is done once the chunking side read past it. Ranges ending the
    /// spool are cut off (the next file is written there) where no reader
    /// can see it; others become holes. Call with nothing buffered.
    pub(super) fn release_read(&mut self) -> io::Result<()> {
        if self.stored.is_empty() {
            return Ok(());
        }
        debug_assert!(self.buf.is_empty());
        let (read_to, gone_from) = match self.live {
            Some(live) => live.reader_at(),
            None => (u64::MAX, 0),
        };
        // From the end backwards, so neighbours ending the spool all go.
        let mut ranges = std::mem::take(&mut self.stored);
        ranges.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (off, len) in ranges {
            if off >= gone_from && off + len == self.written {
                self.spool.file.set_len(off)?;
                self.spool.file.seek(io::SeekFrom::Start(off))?;
                self.written = off;
                self.spool.shrank(len);
            } else if off >= gone_from || off + len <= read_to {
                self.spool.punch(off, len);
            } else {
                self.stored.push((off, len));
            }
        }
        Ok(())
    }
}

impl Write for SpoolOut<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > SPOOL_BUF {
            self.flush()?;
        }
        if data.len() >= SPOOL_BUF {
            self.write_through(data)?;
        } else {
            self.buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let res = self.write_through(&buf);
            self.buf = buf;
            self.buf.clear();
            res?;
        }
        Ok(())
    }
}
