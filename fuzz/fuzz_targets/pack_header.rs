//! The pack header: the input is the tail of a pack whose length is the
//! input's length; whatever parses must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_store::pack::{parse_index, parse_trailer, TRAILER_LEN};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok((count, idx)) = parse_trailer(data, len) {
        let start = idx as usize;
        let Ok(entries) = parse_index(&data[start..data.len() - TRAILER_LEN], count, idx) else {
            return;
        };
        let mut next = 0;
        for e in &entries {
            assert_eq!(e.offset, next);
            next += u64::from(e.clen);
        }
        assert_eq!(next, idx);
    }
});
