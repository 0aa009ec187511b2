//! An auth file (containers' auth.json, docker's config.json): the input is
//! a host, a NUL, then the file. Looking the host up never panics (helpers
//! are not run here).
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_oci::source::registry_fuzzing::auth_config;

fuzz_target!(|data: &[u8]| {
    let (host, file) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"docker.io"[..], data),
    };
    let _ = auth_config(file, &String::from_utf8_lossy(host));
});
