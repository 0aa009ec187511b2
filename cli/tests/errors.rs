//! The mistakes a new user makes (issue 15): each gives one line on stderr
//! that names the object and says what to do, and the documented exit code;
//! source selection never guesses; `--json` commands also print an `error`
//! record on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;

use puzzle_testkit::{sha256_digest, Compression, Entry, Image};
use serde::Deserialize;

use crate::util::*;

fn image(name: &str) -> Image {
    Image::new().layer(
        &[Entry::file("name", format!("{name}\n").as_bytes())],
        Compression::Gzip,
    )
}

/// Runs `cmd`, expecting exit `code`, nothing on stdout and exactly one
/// line on stderr, which is returned.
fn fails(cmd: &mut Command, code: i32) -> String {
    let r = run(cmd);
    assert_eq!(
        r.code, code,
        "{cmd:?}: expected exit {code}\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    assert!(r.stdout.is_empty(), "{cmd:?}: stdout: {}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{cmd:?}: one line on stderr, got:\n{}",
        r.stderr
    );
    lines[0].to_string()
}

fn build_fails(store: &Path, source: &str, extra: &[&str], code: i32) -> String {
    fails(
        puzzle(store)
            .args(["build", source, "--tag", "x"])
            .args(extra),
        code,
    )
}

/// `tar -C dir -cf file .`
fn tar_dir(dir: &Path, file: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(file)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// A legacy `docker save` archive holding two images, `app:1` and `app:2`.
fn two_image_docker_archive(t: &Path) -> PathBuf {
    let one = t.join("one.tar");
    image("one").write_docker_archive(&one, "app:1").unwrap();
    let dir = t.join("docker-two");
    std::fs::create_dir(&dir).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-xf")
        .arg(&one)
        .status()
        .unwrap();
    assert!(st.success());
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut second = m[0].clone();
    second["RepoTags"] = serde_json::json!(["app:2"]);
    m.as_array_mut().unwrap().push(second);
    std::fs::write(&path, m.to_string()).unwrap();
    let file = t.join("two.tar");
    tar_dir(&dir, &file);
    file
}

#[test]
fn several_images_and_no_tag_is_an_error_listing_the_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let layout = t.join("layout");
    image("one").write_oci_layout(&layout, "one").unwrap();
    image("two").write_oci_layout(&layout, "two").unwrap();
    let l = layout.display();
    let want = |src: &str| {
        format!(
            "puzzle: error: building x from {src}: oci:{l} holds 2 images; \
             name one as oci:{l}:TAG, TAG one of: one, two"
        )
    };
    let src = format!("oci:{l}");
    assert_eq!(build_fails(&store, &src, &[], 1), want(&src));
    let bare = l.to_string();
    assert_eq!(build_fails(&store, &bare, &[], 1), want(&bare));

    let archive = t.join("layout.tar");
    tar_dir(&layout, &archive);
    let a = archive.display();
    for kind in ["oci-archive", "docker-archive"] {
        let src = format!("{kind}:{a}");
        assert_eq!(
            build_fails(&store, &src, &[], 1),
            format!(
                "puzzle: error: building x from {src}: {src} holds 2 images; \
                 name one as {src}:TAG, TAG one of: one, two"
            )
        );
    }

    let docker = two_image_docker_archive(t);
    let src = format!("docker-archive:{}", docker.display());
    assert_eq!(
        build_fails(&store, &src, &[], 1),
        format!(
            "puzzle: error: building x from {src}: {src} holds 2 images; \
             name one as {src}:REF, REF one of: app:1, app:2 (or @N, the N-th image from 0)"
        )
    );
    assert!(!store.exists(), "nothing was built");

    // Named, each builds.
    build(&store, &format!("oci:{l}:two"), "two");
    build(&store, &format!("{src}:app:2"), "app");
}

#[test]
fn a_platform_no_manifest_matches_names_the_platforms_there_are() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let layout = t.join("layout");
    let w = image("one").write_oci_layout(&layout, "one").unwrap();
    let l = layout.display();

    // A single-platform image whose config says linux/amd64.
    let src = format!("oci:{l}:one");
    assert_eq!(
        build_fails(&store, &src, &["--platform", "linux/arm64"], 1),
        format!(
            "puzzle: error: building x from {src}: no linux/arm64 image in {src}: \
             it is linux/amd64 only; pick it with --platform linux/amd64"
        )
    );

    // An image index with two platforms, tagged `multi`.
    let manifest = std::fs::read(
        layout
            .join("blobs/sha256")
            .join(&w.manifest_digest["sha256:".len()..]),
    )
    .unwrap();
    let desc = |arch: &str, variant: Option<&str>| {
        let mut p = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = serde_json::json!(v);
        }
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": w.manifest_digest,
            "size": manifest.len(),
            "platform": p,
        })
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc("amd64", None), desc("arm", Some("v7"))],
    }))
    .unwrap();
    let index_digest = sha256_digest(&index);
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(&index_digest["sha256:".len()..]),
        &index,
    )
    .unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    let src = format!("oci:{l}:multi");
    assert_eq!(
        build_fails(&store, &src, &["--platform", "linux/s390x"], 1),
        format!(
            "puzzle: error: building x from {src}: no linux/s390x image in image index \
             {index_digest} in {src}; it has linux/amd64, linux/arm/v7: pick one with --platform"
        )
    );
    build(&store, &src, "multi");
}

#[test]
fn a_relative_store_works_for_every_command_and_daemon_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layout = t.join("layout");
    image("one").write_oci_layout(&layout, "one").unwrap();
    let rel = Path::new("rel-store");
    let in_t = |cmd: &mut Command| {
        cmd.current_dir(t);
    };
    let mut b = puzzle(rel);
    in_t(b.args([
        "build",
        &format!("oci:{}:one", layout.display()),
        "--tag",
        "one",
    ]));
    ok(&mut b);
    assert!(t.join("rel-store/puzzle.json").is_file());
    let mut i = puzzle(rel);
    in_t(i.arg("images"));
    assert!(ok(&mut i).stdout.contains("one"));

    if !(Path::new("/dev/fuse").exists() && rustix::process::geteuid().is_root()) {
        assert!(!require_tools(), "mounting needs root and /dev/fuse");
        return;
    }
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = puzzle(rel);
    in_t(m.args(["mount", "one", "mnt", "--daemon"]));
    let r = run(&mut m);
    // Unmount whatever happened before asserting.
    let name = std::fs::read(mnt.join("name"));
    let mut u = puzzle(rel);
    in_t(u.args(["umount", "mnt"]));
    let ru = run(&mut u);
    assert_eq!(r.code, 0, "mount with a relative --store: {}", r.stderr);
    assert_eq!(name.unwrap(), b"one\n");
    assert_eq!(ru.code, 0, "{}", ru.stderr);
}

#[test]
fn an_os_error_appears_once() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let layout = t.join("layout");
    image("one").write_oci_layout(&layout, "one").unwrap();
    build(&store, &format!("oci:{}:one", layout.display()), "one");
    let file = t.join("file");
    std::fs::write(&file, b"x").unwrap();
    let target = file.join("sub");
    let d = target.display();
    assert_eq!(
        fails(puzzle(&store).arg("extract").arg("one").arg(&target), 1),
        format!("puzzle: error: extracting one into {d}: {d}: Not a directory (os error 20)")
    );
}

#[test]
fn the_missing_parent_of_an_extract_target_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let layout = t.join("layout");
    image("one").write_oci_layout(&layout, "one").unwrap();
    build(&store, &format!("oci:{}:one", layout.display()), "one");
    let parent = t.join("no/such");
    let target = parent.join("rootfs");
    let d = target.display();
    assert_eq!(
        fails(puzzle(&store).arg("extract").arg("one").arg(&target), 1),
        format!(
            "puzzle: error: extracting one into {d}: extract target {d}: \
             its parent directory {} does not exist; create it first",
            parent.display()
        )
    );
}

#[test]
fn a_directory_without_oci_layout_says_what_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = empty.display();
    for src in [format!("oci:{e}"), e.to_string()] {
        assert_eq!(
            build_fails(&store, &src, &[], 1),
            format!(
                "puzzle: error: building x from {src}: oci:{e} is not an OCI image layout \
                 (it has no oci-layout file); give a layout written by `skopeo copy` or \
                 `umoci`, or the archive of one"
            )
        );
    }
}

#[test]
fn an_unreachable_registry_is_one_line_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let src = format!("docker://127.0.0.1:{port}/app:2");
    let msg = build_fails(&store, &src, &[], 1);
    assert!(
        msg.starts_with(&format!(
            "puzzle: error: building x from {src}: i/o error on {src}: cannot reach the registry 127.0.0.1:{port}"
        )),
        "{msg}"
    );
}

#[test]
fn a_garbage_archive_is_one_line_without_its_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let file = t.join("passwd");
    let text = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n";
    std::fs::write(&file, text.repeat(20)).unwrap();
    let f = file.display();
    for kind in ["docker-archive", "oci-archive"] {
        let src = format!("{kind}:{f}");
        assert_eq!(
            build_fails(&store, &src, &[], 1),
            format!("puzzle: error: building x from {src}: {f} is not a tar archive")
        );
    }
}

#[test]
fn mount_without_access_to_dev_fuse_says_what_it_needs() {
    let root = rustix::process::geteuid().is_root();
    let tools = ["unshare", "setpriv", "mount"]
        .iter()
        .all(|t| puzzle_testkit::tool_available(t));
    if !(root && tools) {
        assert!(
            !require_tools(),
            "this test needs root, unshare and setpriv"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let layout = t.join("layout");
    image("one").write_oci_layout(&layout, "one").unwrap();
    build(&store, &format!("oci:{}:one", layout.display()), "one");
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // In a private mount namespace, /dev/fuse is a file nobody may open, and
    // this root lacks the capabilities that bypass file permissions.
    let fake = t.join("fuse");
    std::fs::write(&fake, b"").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let script = r#"mount --bind "$1" /dev/fuse && shift && exec setpriv --bounding-set=-dac_override,-dac_read_search "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(&fake)
        .arg(env!("CARGO_BIN_EXE_puzzle"))
        .arg("--store")
        .arg(&store)
        .args(["--no-progress", "mount", "one"])
        .arg(&mnt);
    assert_eq!(
        fails(&mut cmd, 1),
        format!(
            "puzzle: error: mounting one on {}: Permission denied (os error 13): \
             mounting needs root, or read and write access to /dev/fuse",
            mnt.display()
        )
    );
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let layout = t.join("layout");
    image("one").write_oci_layout(&layout, "one").unwrap();
    let src = format!("oci:{}:one", layout.display());
    assert_eq!(
        fails(puzzle(&store).args(["gc", "--repack-below", "2"]), 2),
        "puzzle: error: --repack-below 2 is out of range: give a fraction from 0 to 1"
    );
    assert_eq!(
        build_fails(&store, &src, &["--platform", "linux"], 2),
        "puzzle: error: invalid platform \"linux\": expected os/arch[/variant]"
    );
    assert_eq!(
        build_fails(&store, &src, &["--chunk-min", "5"], 2),
        "puzzle: error: invalid chunk sizes: min chunk size 5 is out of range 64..=1048576"
    );
    assert_eq!(
        build_fails(&store, "nonsense", &[], 2),
        "puzzle: error: unrecognized image source \"nonsense\": expected oci:DIR[:TAG], \
         oci-archive:FILE[:TAG], docker-archive:FILE[:REF], docker://REF or an OCI layout directory"
    );
    assert_eq!(
        build_fails(&store, "oci:", &[], 2),
        "puzzle: error: oci:: missing path (expected oci:DIR[:TAG], oci-archive:FILE[:TAG], \
         docker-archive:FILE[:REF], docker://REF or an OCI layout directory)"
    );
    let file = t.join("app.tar");
    std::fs::write(&file, b"x").unwrap();
    let f = file.display();
    assert_eq!(
        build_fails(&store, &f.to_string(), &[], 2),
        format!(
            "puzzle: error: image source \"{f}\" is a file: name its kind, \
             as oci-archive:{f} or docker-archive:{f}"
        )
    );
    // clap's own errors are one line too.
    assert_eq!(
        fails(puzzle(&store).arg("buidl"), 2),
        "puzzle: error: unrecognized subcommand 'buidl' (tip: a similar subcommand exists: \
         'build'; usage: puzzle [OPTIONS] <COMMAND>)"
    );
    assert_eq!(
        fails(puzzle(&store).arg("build"), 2),
        "puzzle: error: the following required arguments were not provided: --tag <TAG> \
         <SOURCE> (usage: puzzle build --tag <TAG> <SOURCE>)"
    );
    assert!(!store.exists(), "nothing was created");
}

#[derive(Debug, Deserialize)]
struct ErrorRecord {
    message: String,
    code: u8,
}

/// Runs a `--json` command expected to fail with `code`: stdout is one
/// `error` record whose message is stderr's line without its prefix.
fn json_fails(cmd: &mut Command, code: i32) -> String {
    let r = run(cmd);
    assert_eq!(
        r.code, code,
        "{cmd:?}\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    let line: Line<ErrorRecord> = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("{cmd:?}: not an error record ({e}): {}", r.stdout));
    assert_eq!((line.kind.as_str(), line.schema), ("error", 1));
    assert_eq!(i32::from(line.data.code), code);
    let first = r.stderr.lines().next().unwrap_or_default();
    assert_eq!(first, format!("puzzle: error: {}", line.data.message));
    line.data.message
}

#[test]
fn json_commands_report_failures_as_error_records() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let store = t.join("store");
    let layout = t.join("layout");
    image("one").write_oci_layout(&layout, "one").unwrap();
    let src = format!("oci:{}:one", layout.display());

    let m = json_fails(
        puzzle(&store).args(["build", "nonsense", "--tag", "x", "--json"]),
        2,
    );
    assert!(m.starts_with("unrecognized image source"), "{m}");
    json_fails(puzzle(&store).args(["verify", "--json"]), 4);
    json_fails(
        puzzle(&store).args(["gc", "--json", "--repack-below", "-1"]),
        2,
    );
    // Clap's own usage errors too.
    json_fails(puzzle(&store).args(["images", "--json", "--bogus"]), 2);

    build(&store, &src, "one");
    let m = json_fails(
        puzzle(&store)
            .args(["extract", "two", "--json"])
            .arg(t.join("out")),
        3,
    );
    assert_eq!(
        m,
        "opening image two: image \"two\" not found in the store; `puzzle images` lists the \
         stored images"
    );
    json_fails(puzzle(&store).args(["stats", "two", "--json"]), 3);
    json_fails(
        puzzle(&store).args(["build", &format!("{src}x"), "--tag", "x", "--json"]),
        1,
    );
}
