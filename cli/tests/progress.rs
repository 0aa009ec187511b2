//! Progress bars under a terminal: totals and percent where sizes are known.
//! The binary runs under a pseudo-terminal made by `script` (util-linux);
//! everything else in the suite runs with pipes, where no bar is drawn.

use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Runs `puzzle ARGS` with stderr (and stdout) on a 160-column pty; the
/// bytes the terminal received.
fn on_a_terminal(store: &Path, args: &str) -> String {
    let cmd = format!(
        "stty cols 160 rows 40; exec {} --store {} {args}",
        env!("CARGO_BIN_EXE_puzzle"),
        store.display()
    );
    let r = ok(Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env_remove("PUZZLE_STORE"));
    r.stdout
}

/// The compressed size of each layer of corpus image `tag`, from its manifest.
fn layer_sizes(corpus: &Path, tag: &str) -> Vec<u64> {
    let digest = corpus_manifest(corpus, tag);
    let path = corpus
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect()
}

/// Whether the terminal output drew a bar labelled `label` towards `total`
/// bytes, with a percent after it.
fn drew_bar(out: &str, label: &str, total: u64) -> bool {
    let total = format!("/{}", indicatif::HumanBytes(total));
    out.split(['\r', '\n']).any(|line| {
        line.contains(label)
            && line.find(&total).is_some_and(|i| {
                line[i + total.len()..]
                    .trim_start()
                    .split(' ')
                    .next()
                    .is_some_and(|w| w.ends_with('%') && w[..w.len() - 1].parse::<u8>().is_ok())
            })
    })
}

#[test]
fn build_and_extract_draw_bars_with_totals_on_a_terminal() {
    let Some(corpus) = corpus() else { return };
    if !have("script") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = format!("oci:{}:django-5.0.7", corpus.display());
    let sizes = layer_sizes(&corpus, "django-5.0.7");
    let out = on_a_terminal(&store, &format!("build {src} --tag d"));
    assert!(out.contains("built d"), "{out}");
    // Each layer read gets a bar towards its compressed size (manifest).
    for (i, size) in sizes.iter().enumerate() {
        let label = format!("layer {}/{}: reading", i + 1, sizes.len());
        assert!(
            drew_bar(&out, &label, *size),
            "no {label} bar to {size}:\n{out}"
        );
    }

    // Extract's bar runs to the image's logical size (`images` SIZE).
    let logical = images(&store)[0].logical_bytes.expect("sizes");
    let target = tmp.path().join("rootfs");
    let out = on_a_terminal(&store, &format!("extract d {}", target.display()));
    assert!(out.contains("extracted d"), "{out}");
    assert!(drew_bar(&out, "extracting d", logical), "{out}");

    // --no-progress draws nothing, on a terminal too.
    let out = on_a_terminal(&store, &format!("--no-progress build {src} --tag again"));
    assert!(out.contains("built again"), "{out}");
    assert!(!out.contains('%'), "{out}");
    assert!(!out.contains("reading"), "{out}");
}
