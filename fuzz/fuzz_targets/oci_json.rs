//! OCI JSON: the input is split at the first two NUL bytes into index.json,
//! a manifest and a config, written as an OCI layout (blobs under their true
//! digests, so parsing is reached), then opened and every layer read.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use puzzle_oci::source::{self, Platform, SourceRef, Sha256Digest};

fn put(dir: &std::path::Path, bytes: &[u8]) -> String {
    let d = Sha256Digest::of(bytes);
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d.to_string()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let index = parts.next().unwrap_or_default();
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    // The fuzzer may name these digests in its index/manifest text.
    put(dir, manifest);
    put(dir, config);
    std::fs::write(dir.join("index.json"), index).unwrap();
    let Ok(r) = format!("oci:{}", dir.display()).parse::<SourceRef>() else {
        return;
    };
    if let Ok(src) = source::open(&r, &Platform::default()) {
        for l in src.image().layers.clone() {
            if let Ok(mut rd) = src.open_layer(&l) {
                let mut sink = Vec::new();
                if rd.read_to_end(&mut sink).is_ok() {
                    let _ = rd.finish();
                }
            }
        }
    }
});
