//! A token service's JSON answer: parsing never panics, and a token's
//! remaining life never exceeds what it says it lasts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_oci::source::registry_fuzzing::token;

fuzz_target!(|data: &[u8]| {
    let _ = token(data);
});
