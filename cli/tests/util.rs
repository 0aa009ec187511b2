//! Running the binary and decoding its output with consumer-side types.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

/// `puzzle --store STORE --no-progress`.
pub fn puzzle(store: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_puzzle"));
    c.arg("--store").arg(store).arg("--no-progress");
    c.env_remove("PUZZLE_STORE");
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run puzzle");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs and asserts success.
pub fn ok(cmd: &mut Command) -> Run {
    let r = run(cmd);
    assert_eq!(r.code, 0, "{cmd:?} failed:\n{}\n{}", r.stdout, r.stderr);
    r
}

/// The `build --json` summary as a consumer reads it.
#[derive(Debug, Deserialize)]
pub struct Line<T> {
    #[serde(rename = "type")]
    pub kind: String,
    pub schema: u32,
    pub data: T,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
pub struct BuildSummary {
    pub image: String,
    pub manifest: String,
    pub metadata: String,
    pub layers: usize,
    pub layers_reused: usize,
    pub bytes_read: u64,
    pub bytes_uncompressed: u64,
    pub bytes_chunked: u64,
    pub bytes_spooled: u64,
    pub tmp_peak_bytes: u64,
    pub new_chunks: u64,
    pub new_chunk_bytes: u64,
    pub reused_chunks: u64,
    pub reused_chunk_bytes: u64,
    pub stored_bytes: u64,
    pub packs_written: usize,
    pub files: u64,
    pub seconds: f64,
    pub peak_rss_bytes: u64,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
pub struct ImageLine {
    pub name: String,
    pub manifest: String,
    pub metadata: String,
    pub metadata_bytes: u64,
    pub packs: usize,
    pub pack_bytes: u64,
    pub config: String,
    /// The sizes are null when some image of the store cannot be read.
    pub files: Option<u64>,
    pub logical_bytes: Option<u64>,
    pub unique_bytes: Option<u64>,
    pub unique_stored_bytes: Option<u64>,
}

pub fn build(store: &Path, source: &str, tag: &str) -> BuildSummary {
    build_with(store, source, tag, &[])
}

pub fn build_with(store: &Path, source: &str, tag: &str, extra: &[&str]) -> BuildSummary {
    let r = ok(puzzle(store)
        .args(["build", source, "--tag", tag, "--json"])
        .args(extra));
    let line: Line<BuildSummary> = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("build --json printed something else ({e}):\n{}", r.stdout));
    assert_eq!((line.kind.as_str(), line.schema), ("build", 1));
    line.data
}

pub fn images(store: &Path) -> Vec<ImageLine> {
    let r = ok(puzzle(store).args(["images", "--json"]));
    r.stdout
        .lines()
        .map(|l| {
            let line: Line<ImageLine> = serde_json::from_str(l).expect("image line");
            assert_eq!(line.kind, "image");
            line.data
        })
        .collect()
}

pub fn extract(store: &Path, tag: &str, dir: &Path) {
    ok(puzzle(store).arg("extract").arg(tag).arg(dir));
}

pub fn require_tools() -> bool {
    std::env::var_os("PUZZLE_REQUIRE_TOOLS").is_some()
}

/// Whether `tool` is on PATH; panics when it is missing and tools are required.
pub fn have(tool: &str) -> bool {
    if puzzle_testkit::tool_available(tool) {
        return true;
    }
    assert!(
        !require_tools(),
        "{tool} is required (PUZZLE_REQUIRE_TOOLS is set)"
    );
    eprintln!("note: {tool} is not installed; skipping the part of this test that needs it");
    false
}

/// The small corpus layout (corpora/build.sh --small), if built.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("PUZZLE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpora/out/small"));
    if dir.join("index.json").is_file() {
        return Some(dir);
    }
    assert!(
        !require_tools(),
        "the small corpus is missing at {} (run corpora/build.sh --small)",
        dir.display()
    );
    eprintln!("note: no corpus at {}; skipping", dir.display());
    None
}

/// Extract comparison: everything but directory mtimes.
pub fn opts() -> puzzle_testkit::CompareOpts {
    puzzle_testkit::CompareOpts {
        dir_mtimes: false,
        mtime_nsec: true,
    }
}

pub fn assert_same_tree(expected: &Path, actual: &Path) {
    if let Err(d) = puzzle_testkit::compare_trees(expected, actual, &opts()) {
        panic!(
            "{} differs from {}:\n{d}",
            actual.display(),
            expected.display()
        );
    }
}

/// The manifest digest (`sha256:...`) tagged `tag` in the OCI layout `corpus`.
pub fn corpus_manifest(corpus: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"][puzzle_testkit::REF_NAME] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no {tag} in the corpus"))
        .to_string()
}

/// The rootfs `umoci unpack` gives for corpus image `tag`, unpacked once per
/// corpus manifest digest and kept under the cargo target tmp dir (umoci
/// takes seconds per image; several tests compare against the same images).
/// `None` when umoci is missing and not required.
pub fn umoci_rootfs(corpus: &Path, tag: &str) -> Option<PathBuf> {
    use std::sync::Mutex;
    static LOCK: Mutex<()> = Mutex::new(());
    if !have("umoci") {
        return None;
    }
    let digest = corpus_manifest(corpus, tag).replace(':', "-");
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("umoci-cache");
    let done = cache.join(format!("{digest}.done"));
    let bundle = cache.join(&digest);
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&cache).unwrap();
        puzzle_testkit::umoci_unpack(corpus, tag, &bundle).unwrap();
        std::fs::write(&done, b"").unwrap();
    }
    Some(bundle.join("rootfs"))
}

/// Store `dst` with `src`'s blobs copied in and its tags added, the way an
/// operator merges two stores, then `verify --rebuild-index` run on it.
pub fn merge_stores(src: &Path, dst: &Path) {
    for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("index.json")).unwrap()).unwrap()
    };
    let mut index = read(dst);
    let theirs = read(src)["manifests"].as_array().unwrap().clone();
    index["manifests"].as_array_mut().unwrap().extend(theirs);
    std::fs::write(
        dst.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    let r = ok(puzzle(dst).args(["verify", "--rebuild-index"]));
    assert!(r.stderr.contains(" 0 problem(s)"), "{}", r.stderr);
}
