//! The layer tar reader: any bytes spool to a layer or give an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let _ = puzzle_oci::layer::spool(&mut &data[..], dir.path(), &mut |_| {});
});
