//! The pack header: the input is the tail of a pack whose length is the
//! input's length; whatever parses must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_store::pack::{parse_index, parse_trailer, TRAILER_LEN};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(t) = parse_trailer(data, len) {
        let start = t.index_offset as usize;
        let Ok(entries) = parse_index(&data[start..data.len() - TRAILER_LEN], &t) else {
            return;
        };
        // Frames contiguous from 0; chunks contiguous inside each frame.
        let (mut next, mut frames) = (0u64, 0u32);
        let mut prev: Option<&puzzle_store::pack::PackEntry> = None;
        for e in &entries {
            match prev {
                Some(p) if p.offset == e.offset => assert_eq!(e.at, p.at + p.rlen),
                _ => {
                    assert_eq!((e.offset, e.at), (next, 0));
                    next += u64::from(e.clen);
                    frames += 1;
                }
            }
            assert!(e.at + e.rlen <= e.frame_rlen);
            prev = Some(e);
        }
        assert_eq!((next, frames), (t.index_offset, t.frames));
    }
});
