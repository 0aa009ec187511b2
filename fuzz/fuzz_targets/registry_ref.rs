//! Registry references (what follows `docker://`, from the command line):
//! parsing never panics, and what parses shows as a reference that parses
//! back to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_oci::source::registry_fuzzing::reference;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(shown) = reference(s) {
            assert!(shown.starts_with("docker://"));
        }
    }
});
