//! The one place the store maps a file into memory.
//!
//! A mapping is only sound while nobody truncates or rewrites the file in
//! place, which Rust cannot check: [`Mapped::map`] is an `unsafe fn` so each
//! caller states why that holds for the file it maps.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// A read-only memory map of a whole file, or bytes decoded from one (a
/// compressed metadata blob is decompressed into memory instead).
pub struct Mapped {
    inner: Inner,
}

enum Inner {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Mapped {
    /// Maps `file` read-only.
    ///
    /// # Safety
    ///
    /// The file must not be truncated or modified in place for as long as the
    /// returned value lives (unlinking or renaming it is fine).
    pub unsafe fn map(file: &File) -> io::Result<Mapped> {
        // SAFETY: the caller promises the file is not truncated or changed
        // while mapped, which is memmap2's whole contract.
        let map = unsafe { memmap2::Mmap::map(file)? };
        Ok(Mapped {
            inner: Inner::Map(map),
        })
    }

    /// Bytes held in memory rather than mapped.
    pub fn owned(bytes: Vec<u8>) -> Mapped {
        Mapped {
            inner: Inner::Owned(bytes),
        }
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        match &self.inner {
            Inner::Map(map) => map,
            Inner::Owned(bytes) => bytes,
        }
    }
}
