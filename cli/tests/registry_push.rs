//! `puzzle push NAME docker://...` against a local `docker-registry`,
//! through the logging proxy or a front that refuses chosen requests
//! (harness in regkit.rs); what arrives is read back with skopeo.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;

use crate::regkit::*;
use crate::util::*;

/// `puzzle push --json`'s summary, as a consumer reads it.
#[derive(Deserialize, Debug)]
struct Pushed {
    image: String,
    destination: String,
    manifest: String,
    manifest_bytes: u64,
    blobs: usize,
    blobs_uploaded: usize,
    blobs_present: usize,
    blobs_mounted: usize,
    bytes_uploaded: u64,
    bytes_skipped: u64,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    data: Pushed,
}

fn push(store: &Path, name: &str, dest: &str) -> Pushed {
    let r = run(puzzle(store).args(["push", name, dest, "--json"]));
    assert_eq!(r.code, 0, "push {name} {dest}: {}", r.stderr);
    let e: Envelope = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(e.kind, "push");
    e.data
}

fn blob(store: &Path, digest: &str) -> PathBuf {
    store
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The digests and sizes of the blobs manifest `digest` names (config first).
fn manifest_blobs(store: &Path, digest: &str) -> Vec<(String, u64)> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(store, digest)).unwrap()).unwrap();
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().unwrap())
        .map(|d| {
            (
                d["digest"].as_str().unwrap().to_owned(),
                d["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn manifest_of(store: &Path, name: &str) -> String {
    images(store)
        .into_iter()
        .find(|i| i.name == name)
        .unwrap()
        .manifest
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Request lines of `method` in a proxy log.
fn lines<'a>(log: &'a [String], method: &str) -> Vec<&'a String> {
    log.iter()
        .filter(|l| l.starts_with(&format!("{method} ")))
        .collect()
}

#[test]
fn a_pushed_image_is_the_local_manifest_byte_for_byte() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::start(reg.port, None);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(&store, &format!("oci:{}:python3", corpus.display()), "p");
    let local = manifest_of(&store, "p");
    let bytes = std::fs::read(blob(&store, &local)).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.contains(r#""artifactType":"application/vnd.puzzle.image.v1""#),
        "{text}"
    );
    let blobs = manifest_blobs(&store, &local);
    let total: u64 = blobs.iter().map(|(_, n)| n).sum();

    let dest = format!("docker://127.0.0.1:{}/lib/python3:puzzle", proxy.port);
    // The digest alone on stdout without --json.
    let r = run(puzzle(&store).args(["push", "p", &dest]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), local);
    let log = proxy.take_log();
    // Every blob was asked for, then uploaded (POST + one PUT), the manifest last.
    assert_eq!(lines(&log, "HEAD").len(), blobs.len(), "{log:?}");
    assert_eq!(lines(&log, "POST").len(), blobs.len(), "{log:?}");
    let puts = lines(&log, "PUT");
    assert_eq!(puts.len(), blobs.len() + 1, "{log:?}");
    assert!(
        puts.last().unwrap().contains("/manifests/puzzle "),
        "{puts:?}"
    );

    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{}/lib/python3:puzzle", reg.port),
    ]);
    assert_eq!(raw, bytes, "the registry's manifest is not the local one");

    let out = tmp.path().join("copied");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://127.0.0.1:{}/lib/python3:puzzle", reg.port),
        &format!("oci:{}:x", out.display()),
    ]);
    for (d, size) in &blobs {
        let theirs = std::fs::read(blob(&out, d)).unwrap();
        assert_eq!(theirs.len() as u64, *size);
        assert!(theirs == std::fs::read(blob(&store, d)).unwrap(), "{d}");
    }
    let index = std::fs::read_to_string(out.join("index.json")).unwrap();
    assert!(index.contains(&local), "{index}");

    // Again: every blob is found there, nothing is sent but the manifest.
    let s = push(&store, "p", &dest);
    assert_eq!(
        (s.image.as_str(), s.manifest.as_str(), s.blobs),
        ("p", local.as_str(), blobs.len())
    );
    assert_eq!(s.destination, dest);
    assert_eq!(s.manifest_bytes, bytes.len() as u64);
    assert_eq!(
        (s.blobs_present, s.blobs_uploaded, s.blobs_mounted),
        (blobs.len(), 0, 0)
    );
    assert_eq!((s.bytes_uploaded, s.bytes_skipped), (0, total));
    let log = proxy.take_log();
    assert_eq!(lines(&log, "HEAD").len(), blobs.len(), "{log:?}");
    assert!(lines(&log, "POST").is_empty(), "{log:?}");
    assert!(lines(&log, "PATCH").is_empty(), "{log:?}");
    assert_eq!(lines(&log, "PUT").len(), 1, "{log:?}");
    let r = run(puzzle(&store).arg("verify"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn blobs_another_repository_holds_are_mounted_not_sent() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::start(reg.port, None);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(
        &store,
        &format!("oci:{}:django-5.0.7", corpus.display()),
        "a",
    );
    build(
        &store,
        &format!("oci:{}:django-5.0.8", corpus.display()),
        "b",
    );
    let base = format!("docker://127.0.0.1:{}", proxy.port);
    let first = push(&store, "a", &format!("{base}/lib/a:1"));
    assert_eq!(first.blobs_uploaded, first.blobs);
    proxy.take_log();

    let a: BTreeSet<(String, u64)> = manifest_blobs(&store, &manifest_of(&store, "a"))
        .into_iter()
        .collect();
    let b = manifest_blobs(&store, &manifest_of(&store, "b"));
    let shared: Vec<&(String, u64)> = b.iter().filter(|d| a.contains(d)).collect();
    assert!(!shared.is_empty() && shared.len() < b.len(), "{shared:?}");
    let s = push(&store, "b", &format!("{base}/lib/b:1"));
    assert_eq!(s.blobs_mounted, shared.len(), "{s:?}");
    assert_eq!(s.blobs_uploaded, b.len() - shared.len(), "{s:?}");
    assert_eq!(s.bytes_skipped, shared.iter().map(|(_, n)| n).sum::<u64>());
    assert_eq!(
        s.bytes_uploaded,
        b.iter()
            .filter(|d| !a.contains(*d))
            .map(|(_, n)| n)
            .sum::<u64>()
    );
    let log = proxy.take_log();
    let mounts: BTreeSet<String> = lines(&log, "POST")
        .iter()
        .filter(|l| l.contains("from=lib%2Fa"))
        .filter_map(|l| l.split("mount=").nth(1))
        .map(|d| d.split('&').next().unwrap().replace("%3A", ":"))
        .collect();
    let want: BTreeSet<String> = shared.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(mounts, want, "{log:?}");
    // The mounted blobs' bytes were never sent: one PUT per upload, and the manifest.
    assert_eq!(lines(&log, "PUT").len(), s.blobs_uploaded + 1, "{log:?}");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{}/lib/b:1", reg.port),
    ]);
    assert_eq!(raw, std::fs::read(blob(&store, &s.manifest)).unwrap());
}

#[test]
fn a_mount_the_registry_declines_is_uploaded_instead() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::start(reg.port, None);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(&store, &format!("oci:{}:base", corpus.display()), "b");
    let blobs = manifest_blobs(&store, &manifest_of(&store, "b"));
    // The record claims a repository the registry has never seen holds them.
    let dir = store.join("remotes");
    std::fs::create_dir_all(&dir).unwrap();
    let lines_: String = blobs
        .iter()
        .map(|(d, _)| format!("{d} lib/elsewhere\n"))
        .collect();
    std::fs::write(dir.join(format!("127.0.0.1:{}", proxy.port)), lines_).unwrap();
    let dest = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let s = push(&store, "b", &dest);
    assert_eq!((s.blobs_uploaded, s.blobs_mounted), (blobs.len(), 0));
    let log = proxy.take_log();
    let posts = lines(&log, "POST");
    assert_eq!(posts.len(), blobs.len(), "{log:?}");
    assert!(
        posts.iter().all(|l| l.contains("from=lib%2Felsewhere")),
        "{posts:?}"
    );
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{}/lib/base:1", reg.port),
    ]);
    assert_eq!(raw, std::fs::read(blob(&store, &s.manifest)).unwrap());
}

#[test]
fn a_push_through_a_bearer_token_front_fetches_a_token() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let front = TokenFront::start(reg.port);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(&store, &format!("oci:{}:base", corpus.display()), "b");
    let s = push(
        &store,
        "b",
        &format!("docker://127.0.0.1:{}/lib/base:1", front.port),
    );
    assert_eq!(s.blobs_uploaded, s.blobs);
    assert!(!front.token_requests.lock().unwrap().is_empty());
}

fn refuse_manifests(line: &str) -> Option<(&'static str, &'static str)> {
    (line.starts_with("PUT ") && line.contains("/manifests/")).then_some((
        "400 Bad Request",
        r#"{"errors":[{"code":"MANIFEST_INVALID","message":"nope"}]}"#,
    ))
}

/// Takes the manifest and answers with another digest than its own.
fn misdigest_manifests(line: &str) -> Option<(&'static str, &'static str)> {
    (line.starts_with("PUT ") && line.contains("/manifests/")).then_some((
        "201 Created\r\nDocker-Content-Digest: \
         sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "",
    ))
}

fn ask_for_a_password(_: &str) -> Option<(&'static str, &'static str)> {
    Some((
        "401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"",
        r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
    ))
}

fn forbid_all(_: &str) -> Option<(&'static str, &'static str)> {
    Some(("403 Forbidden", r#"{"errors":[{"code":"DENIED"}]}"#))
}

#[test]
fn a_refused_manifest_is_one_line_and_a_rerun_sends_no_blob_again() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let front = Front::start(reg.port, refuse_manifests);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(&store, &format!("oci:{}:base", corpus.display()), "b");
    let index = std::fs::read(store.join("index.json")).unwrap();
    let dest = format!("docker://127.0.0.1:{}/lib/base:1", front.port);
    let r = run(puzzle(&store).args(["push", "b", &dest]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    for want in [
        &dest[..],
        "manifest",
        "400 (MANIFEST_INVALID)",
        "media types",
    ] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // The store is as it was; the blobs that arrived are not sent again.
    assert_eq!(std::fs::read(store.join("index.json")).unwrap(), index);
    assert_eq!(run(puzzle(&store).arg("verify")).code, 0);
    let s = push(
        &store,
        "b",
        &format!("docker://127.0.0.1:{}/lib/base:1", reg.port),
    );
    assert_eq!((s.blobs_present, s.blobs_uploaded), (s.blobs, 0));
}

#[test]
fn push_failures_are_one_line_naming_what_failed() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let front = Front::start(reg.port, forbid_all);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(&store, &format!("oci:{}:base", corpus.display()), "b");
    // An auth file with no credentials: the host's own are not used.
    std::fs::write(tmp.path().join("no-auth.json"), "{}").unwrap();
    let one_line = |args: &[&str], code: i32, wants: &[&str]| {
        let r = run(puzzle(&store)
            .args(args)
            .env("REGISTRY_AUTH_FILE", tmp.path().join("no-auth.json")));
        assert_eq!(r.code, code, "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        for w in wants {
            assert!(r.stderr.contains(w), "{w}: {}", r.stderr);
        }
    };
    let dest = format!("docker://127.0.0.1:{}/lib/x:1", reg.port);
    one_line(&["push", "nothing", &dest], 3, &["nothing"]);
    one_line(&["push", "b", "oci:/tmp/x"], 2, &["docker://"]);
    one_line(
        &["push", "b", "docker://127.0.0.1:1/Bad"],
        2,
        &["lowercase"],
    );
    let dead = format!("docker://127.0.0.1:{}/lib/x:1", free_port());
    one_line(
        &["push", "b", &dead],
        1,
        &[&dead, "cannot reach the registry"],
    );
    let liar = Front::start(reg.port, misdigest_manifests);
    let lied = format!("docker://127.0.0.1:{}/lib/x:1", liar.port);
    one_line(
        &["push", "b", &lied],
        1,
        &[&lied, "digest mismatch", "sha256:0000"],
    );
    let locked = Front::start(reg.port, ask_for_a_password);
    let unauthorized = format!("docker://127.0.0.1:{}/lib/x:1", locked.port);
    one_line(
        &["push", "b", &unauthorized],
        1,
        &[&unauthorized, "user name and password", "docker login"],
    );
    let denied = format!("docker://127.0.0.1:{}/lib/x:1", front.port);
    one_line(
        &["push", "b", &denied],
        1,
        &[&denied, "403", "docker login", "lib/x"],
    );
}

#[test]
fn an_interrupted_push_sends_no_manifest_and_a_rerun_skips_what_arrived() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    // The python3 image's blobs take seconds at 8 MB/s.
    let proxy = Proxy::throttled(reg.port, 8 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(&store, &format!("oci:{}:python3", corpus.display()), "p");
    let index = std::fs::read(store.join("index.json")).unwrap();
    let dest = format!("docker://127.0.0.1:{}/lib/p:1", proxy.port);
    let child = puzzle(&store)
        .args(["push", "p", &dest, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The second upload has begun: the first (the config) arrived.
    let start = std::time::Instant::now();
    while proxy.count("PUT ") < 2 {
        assert!(start.elapsed().as_secs() < 60, "{:?}", proxy.take_log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#""type":"error""#), "{stdout}");
    let log = proxy.take_log();
    assert!(
        !log.iter().any(|l| l.contains("/manifests/")),
        "a manifest was sent: {log:?}"
    );
    assert_eq!(std::fs::read(store.join("index.json")).unwrap(), index);
    assert_eq!(run(puzzle(&store).arg("verify")).code, 0);

    let direct = format!("docker://127.0.0.1:{}/lib/p:1", reg.port);
    let s = push(&store, "p", &direct);
    assert!(s.blobs_present >= 1, "{s:?}");
    assert!(s.blobs_uploaded < s.blobs, "{s:?}");
    assert_eq!(s.blobs_present + s.blobs_uploaded, s.blobs, "{s:?}");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{}/lib/p:1", reg.port),
    ]);
    assert_eq!(raw, std::fs::read(blob(&store, &s.manifest)).unwrap());
}
