//! Header values a registry sends: `WWW-Authenticate` challenges and
//! `Retry-After` (seconds or an HTTP date), and the RFC 3339 times of token
//! answers. Parsing never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_oci::source::registry_fuzzing::{challenge, times};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = challenge(&s);
    let _ = times(&s);
});
