//! A byte-level tar writer.
//!
//! The `tar` crate refuses to write some of the headers tests need (`..`
//! components, absolute names, lying sizes), so this module fills the 512-byte
//! header blocks itself. Nothing here validates a path: what the caller gives
//! is what lands in the archive.

/// Tar type flags used by this crate.
pub mod typeflag {
    /// Regular file.
    pub const REG: u8 = b'0';
    /// Hard link (`linkname` is the target path in the archive).
    pub const LNK: u8 = b'1';
    /// Symbolic link.
    pub const SYM: u8 = b'2';
    /// Character device.
    pub const CHR: u8 = b'3';
    /// Block device.
    pub const BLK: u8 = b'4';
    /// Directory.
    pub const DIR: u8 = b'5';
    /// FIFO.
    pub const FIFO: u8 = b'6';
    /// PAX extended header for the next entry.
    pub const PAX: u8 = b'x';
    /// GNU long name for the next entry.
    pub const GNU_LONGNAME: u8 = b'L';
    /// GNU long link name for the next entry.
    pub const GNU_LONGLINK: u8 = b'K';
}

/// Which magic a header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Magic {
    /// POSIX ustar (`"ustar\0" "00"`), used together with PAX headers.
    #[default]
    Ustar,
    /// GNU (`"ustar  \0"`), used together with `L`/`K` long-name entries.
    Gnu,
}

/// One header block, field by field. Fields longer than the tar field are
/// truncated; numbers too large for octal are written in GNU base-256.
#[derive(Clone, Debug, Default)]
pub struct RawHeader {
    /// Name field (100 bytes).
    pub name: Vec<u8>,
    /// Mode field (permission bits as written, no file-type bits).
    pub mode: u32,
    /// Owner id.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
    /// The size the header claims, whatever data follows.
    pub size: u64,
    /// Modification time in seconds.
    pub mtime: u64,
    /// Type flag, see [`typeflag`].
    pub typeflag: u8,
    /// Link name field (100 bytes).
    pub linkname: Vec<u8>,
    /// Device major number.
    pub devmajor: u32,
    /// Device minor number.
    pub devminor: u32,
    /// Header magic.
    pub magic: Magic,
}

impl RawHeader {
    /// Encodes the header into one block with a correct checksum.
    pub fn to_block(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_bytes(&mut b[0..100], &self.name);
        put_num(&mut b[100..108], u64::from(self.mode));
        put_num(&mut b[108..116], self.uid);
        put_num(&mut b[116..124], self.gid);
        put_num(&mut b[124..136], self.size);
        put_num(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        put_bytes(&mut b[157..257], &self.linkname);
        match self.magic {
            Magic::Ustar => {
                b[257..263].copy_from_slice(b"ustar\0");
                b[263..265].copy_from_slice(b"00");
            }
            Magic::Gnu => b[257..265].copy_from_slice(b"ustar  \0"),
        }
        put_num(&mut b[329..337], u64::from(self.devmajor));
        put_num(&mut b[337..345], u64::from(self.devminor));
        set_checksum(&mut b);
        b
    }
}

/// Recomputes and stores the checksum of a header block (the sum of all bytes
/// with the checksum field read as spaces, six octal digits, NUL, space).
pub fn set_checksum(block: &mut [u8; 512]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&x| u32::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(s.as_bytes());
}

fn put_bytes(field: &mut [u8], v: &[u8]) {
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// Octal with a NUL terminator when it fits in `len - 1` digits, else GNU
/// base-256 (high bit of the first byte set, big-endian value).
fn put_num(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() <= digits {
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let be = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&be);
        field[0] |= 0x80;
    }
}

/// Encodes one PAX record: `"<len> <key>=<value>\n"`, where `len` counts the
/// whole record including its own digits.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(len.to_string().as_bytes());
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    debug_assert_eq!(r.len(), len);
    r
}

/// Appends header blocks and data to an in-memory archive.
#[derive(Default, Debug)]
pub struct TarBuilder {
    buf: Vec<u8>,
}

impl TarBuilder {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one header block.
    pub fn header(&mut self, h: &RawHeader) -> &mut Self {
        self.buf.extend_from_slice(&h.to_block());
        self
    }

    /// Appends data padded with zeros to a whole block.
    pub fn data(&mut self, d: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(d);
        self.pad();
        self
    }

    /// Appends bytes as they are, without padding.
    pub fn raw(&mut self, d: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(d);
        self
    }

    /// Pads to a block boundary.
    pub fn pad(&mut self) -> &mut Self {
        let rem = self.buf.len() % 512;
        if rem != 0 {
            self.buf.resize(self.buf.len() + 512 - rem, 0);
        }
        self
    }

    /// Appends a PAX extended header (`x`) holding `records` for the next entry.
    pub fn pax(&mut self, records: &[(Vec<u8>, Vec<u8>)], magic: Magic) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend_from_slice(&pax_record(k, v));
        }
        self.header(&RawHeader {
            name: b"././@PaxHeader".to_vec(),
            mode: 0o644,
            size: body.len() as u64,
            typeflag: typeflag::PAX,
            magic,
            ..RawHeader::default()
        });
        self.data(&body)
    }

    /// Appends a GNU long-name (`L`) or long-link (`K`) entry for the next
    /// entry; `flag` is [`typeflag::GNU_LONGNAME`] or [`typeflag::GNU_LONGLINK`].
    pub fn gnu_long(&mut self, flag: u8, name: &[u8]) -> &mut Self {
        let mut body = name.to_vec();
        body.push(0);
        self.header(&RawHeader {
            name: b"././@LongLink".to_vec(),
            mode: 0o644,
            size: body.len() as u64,
            typeflag: flag,
            magic: Magic::Gnu,
            ..RawHeader::default()
        });
        self.data(&body)
    }

    /// Appends the two zero blocks that end an archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.pad();
        self.buf.extend_from_slice(&[0u8; 1024]);
        self.buf
    }

    /// Returns the bytes written so far, without an end-of-archive marker.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record(b"path", b"a"), b"9 path=a\n");
        // 98 bytes of body + 2 digits would be 100, which needs 3 digits.
        let v = vec![b'x'; 98 - 7];
        let r = pax_record(b"path", &v);
        assert_eq!(r.len().to_string().as_bytes(), &r[..3]);
    }

    #[test]
    fn big_numbers_use_base256() {
        let h = RawHeader {
            name: b"f".to_vec(),
            size: 1 << 40,
            typeflag: typeflag::REG,
            ..RawHeader::default()
        };
        let b = h.to_block();
        assert_eq!(b[124], 0x80);
        assert_eq!(&b[128..136], &(1u64 << 40).to_be_bytes());
    }
}
