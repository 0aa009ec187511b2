//! A stored (zstd) metadata blob: decompressing hostile bytes under a limit
//! returns an error or at most the limit, never panics; what comes out opens
//! or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_store::meta::{decompress, MetaBlob};

fuzz_target!(|data: &[u8]| {
    const LIMIT: u64 = 1 << 24;
    let Ok(raw) = decompress(data, LIMIT) else { return };
    assert!(raw.len() as u64 <= LIMIT);
    if let Ok(m) = MetaBlob::open(&raw[..]) {
        let _ = m.check();
    }
});
