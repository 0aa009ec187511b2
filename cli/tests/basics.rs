//! Commands and exit codes: images, rm, extract targets, store selection.

use puzzle_testkit::{Compression, Entry, Image};

use crate::util::*;

fn tiny(layout: &std::path::Path, tag: &str) -> String {
    Image::new()
        .layer(&[Entry::file("hello", b"hello\n")], Compression::Gzip)
        .write_oci_layout(layout, tag)
        .unwrap();
    format!("oci:{}:{tag}", layout.display())
}

#[test]
fn images_rm_and_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    // No store yet: a documented exit code and one line that says what to do.
    let r = run(puzzle(&store).args(["extract", "x", "out"]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "puzzle: error: no puzzle store at {}: build an image into it, `puzzle init` it, \
             or pass --store DIR (or set PUZZLE_STORE) to use another",
            store.display()
        )
    );

    let src = tiny(&t.join("layout"), "t");
    build(&store, &src, "b:1");
    build(&store, &src, "a:1");
    let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["a:1", "b:1"]);
    let human = ok(puzzle(&store).arg("images"));
    assert!(human.stdout.starts_with("NAME"), "{}", human.stdout);
    assert!(human.stdout.contains("a:1"));

    ok(puzzle(&store).args(["rm", "a:1"]));
    let names: Vec<String> = images(&store).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["b:1"]);
    let r = run(puzzle(&store).args(["rm", "a:1"]));
    assert_eq!(r.code, 3, "{}", r.stderr);
    let r = run(puzzle(&store).args(["extract", "a:1"]).arg(t.join("out")));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(!t.join("out").exists());

    // Usage errors exit 2.
    let r = run(puzzle(&store).args(["build"]));
    assert_eq!(r.code, 2);
    let r = run(puzzle(&store).args(["build", &src, "--tag", "bad name"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("invalid image name"), "{}", r.stderr);

    // Extract refuses a non-empty target and leaves it alone.
    let target = t.join("full");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"mine").unwrap();
    let r = run(puzzle(&store).args(["extract", "b:1"]).arg(&target));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"mine");

    // PUZZLE_STORE is used when --store is absent.
    let r = ok(std::process::Command::new(env!("CARGO_BIN_EXE_puzzle"))
        .args(["images", "--json"])
        .env("PUZZLE_STORE", &store));
    assert!(r.stdout.contains("\"b:1\""));

    // A store with other chunk parameters is refused, not mixed.
    let r = run(puzzle(&store).args(["build", &src, "--tag", "c", "--chunk-avg", "32768"]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("created with other settings: --chunk-avg 32768 (the store has 65536)"),
        "{}",
        r.stderr
    );
}

#[test]
fn skopeo_copies_a_stored_image_whole() {
    if !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let src = tiny(&t.join("layout"), "t");
    let s = build(&store, &src, "app:1");
    let dest = t.join("copy");
    let r = run(std::process::Command::new("skopeo").args([
        "copy",
        "--preserve-digests",
        &format!("oci:{}:app:1", store.display()),
        &format!("oci:{}:app:1", dest.display()),
    ]));
    assert_eq!(r.code, 0, "skopeo copy failed: {}", r.stderr);
    // The copy is itself a usable store once puzzle.json comes along.
    std::fs::copy(store.join("puzzle.json"), dest.join("puzzle.json")).unwrap();
    std::fs::create_dir_all(dest.join("tmp")).unwrap();
    let listed = images(&dest);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].manifest, s.manifest);
    extract(&dest, "app:1", &t.join("x"));
    assert_eq!(std::fs::read(t.join("x/hello")).unwrap(), b"hello\n");
}
