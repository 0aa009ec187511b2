//! Fuzz-style property tests (stable-toolchain stand-ins for the cargo-fuzz
//! targets in `fuzz/`): mutated layer tars and mutated OCI JSON give an
//! error or a result, never a panic.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use puzzle_oci::layer::spool;
use puzzle_oci::source::{self, Platform, SourceRef};
use puzzle_testkit::{all_kinds_layers, layer_tar, sha256_digest, Compression, Entry, Image};
use serde_json::Value;

fn tars() -> &'static Vec<Vec<u8>> {
    static T: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    T.get_or_init(|| {
        all_kinds_layers()
            .iter()
            .map(|(entries, _)| layer_tar(entries))
            .collect()
    })
}

fn mutate(mut b: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    for &(at, v) in edits {
        let i = at % b.len();
        b[i] = v;
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

/// Replaces the `pick`th node of a JSON document (in a depth-first walk)
/// with one of a few hostile values.
fn mutate_json(v: &mut Value, pick: usize, what: u8) {
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut Value, n: &mut usize, what: u8) -> bool {
        if *n == 0 {
            *v = match what % 9 {
                0 => Value::Null,
                1 => serde_json::json!(-1),
                2 => serde_json::json!(u64::MAX),
                3 => serde_json::json!("sha256:0000"),
                4 => serde_json::json!("../../etc/passwd"),
                5 => serde_json::json!([]),
                6 => serde_json::json!({}),
                7 => serde_json::json!(1.5e300),
                _ => Value::String("x".repeat(5000)),
            };
            return true;
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter_mut().any(|c| walk(c, n, what)),
            Value::Object(o) => o.values_mut().any(|c| walk(c, n, what)),
            _ => false,
        }
    }
    let total = count(v);
    let mut n = pick % total;
    walk(v, &mut n, what);
}

fn layout() -> &'static tempfile::TempDir {
    static L: OnceLock<tempfile::TempDir> = OnceLock::new();
    L.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        Image::new()
            .layer(
                &[Entry::dir("etc"), Entry::file("etc/motd", "hello\n")],
                Compression::Gzip,
            )
            .layer(&[Entry::whiteout("etc/motd")], Compression::None)
            .write_oci_layout(d.path(), "t")
            .unwrap();
        d
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("blobs/sha256")).unwrap();
    for f in ["oci-layout", "index.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    for e in std::fs::read_dir(from.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("blobs/sha256").join(e.file_name())).unwrap();
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let d = sha256_digest(bytes);
    let hex = d.strip_prefix("sha256:").unwrap();
    std::fs::write(dir.join("blobs/sha256").join(hex), bytes).unwrap();
    (d, bytes.len() as u64)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap()
}

/// Opens the layout and reads every layer; any outcome but a panic is fine.
fn open_all(dir: &Path) {
    let r: SourceRef = format!("oci:{}:t", dir.display()).parse().unwrap();
    if let Ok(src) = source::open(&r, &Platform::default()) {
        let layers = src.image().layers.clone();
        for l in &layers {
            if let Ok(mut rd) = src.open_layer(l) {
                let mut sink = Vec::new();
                if rd.read_to_end(&mut sink).is_ok() {
                    let _ = rd.finish();
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn mutated_layer_tars_never_panic(
        which in 0usize..8,
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        let t = tars();
        let tar = mutate(t[which % t.len()].clone(), &edits, cut);
        let dir = tempfile::tempdir().unwrap();
        let _ = spool(&mut &tar[..], dir.path(), &mut |_| {});
    }

    #[test]
    fn mutated_oci_json_never_panics(
        target in 0u8..3,
        structured in any::<bool>(),
        pick in any::<usize>(),
        what in any::<u8>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let base = layout().path();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        copy_dir(base, dir);
        let mut index = read_json(&dir.join("index.json"));
        let mdigest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
        let mbytes = blob(dir, &mdigest);
        let change = |bytes: Vec<u8>| -> Vec<u8> {
            if structured {
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(mut v) => {
                        mutate_json(&mut v, pick, what);
                        serde_json::to_vec(&v).unwrap()
                    }
                    Err(_) => bytes,
                }
            } else {
                mutate(bytes, &edits, None)
            }
        };
        match target {
            0 => {
                let bytes = change(serde_json::to_vec(&index).unwrap());
                std::fs::write(dir.join("index.json"), bytes).unwrap();
            }
            1 => {
                let (d, n) = put_blob(dir, &change(mbytes));
                index["manifests"][0]["digest"] = d.into();
                index["manifests"][0]["size"] = n.into();
                std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
            }
            _ => {
                let mut m: Value = serde_json::from_slice(&mbytes).unwrap();
                let cdigest = m["config"]["digest"].as_str().unwrap().to_string();
                let (d, n) = put_blob(dir, &change(blob(dir, &cdigest)));
                m["config"]["digest"] = d.into();
                m["config"]["size"] = n.into();
                let (d, n) = put_blob(dir, &serde_json::to_vec(&m).unwrap());
                index["manifests"][0]["digest"] = d.into();
                index["manifests"][0]["size"] = n.into();
                std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
            }
        }
        open_all(dir);
    }
}
