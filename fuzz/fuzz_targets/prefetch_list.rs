//! Trace files and prefetch blobs (`mount --trace`, `build|push --prefetch`,
//! a prefetch layer pulled from a registry): parsing never panics, and what
//! parses encodes to text that parses back to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_store::prefetch::{encode, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = parse(data) {
        let text = encode(&entries);
        assert_eq!(parse(&text).expect("encoded text parses"), entries);
        // Encoding is canonical: a second round gives the same bytes.
        assert_eq!(encode(&parse(&text).unwrap()), text);
    }
});
