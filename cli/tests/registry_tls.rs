//! A registry over TLS with a CA made in the test (htpasswd basic auth
//! behind it): --cert-dir, --tls-verify=false and the one-line failures
//! without them, for build, push and pull. And blobs that arrive wrong or
//! stall, through the fault proxy of regfault.rs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::regfault::*;
use crate::regkit::*;
use crate::util::*;

const USER: &str = "tlsuser";
const PASS: &str = "S3lf-S1gned";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.crt`, with its key) and a server certificate it signs for IP
/// 127.0.0.1 (`server.crt`, `server.key`), in `dir`.
fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=puzzle test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// A TLS-only registry behind htpasswd with lib/base:1 pushed, and a
/// --cert-dir holding its CA as ca.crt; `None` without the tools.
fn tls_registry(dir: &Path) -> Option<(Registry, PathBuf, PathBuf)> {
    for tool in ["openssl", "htpasswd"] {
        if !have(tool) {
            assert!(
                !require_tools(),
                "{tool} is required (run scripts/setup.sh)"
            );
            return None;
        }
    }
    let corpus = corpus()?;
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    make_certs(&pki);
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(pki.join("ca.crt"), certs.join("ca.crt")).unwrap();
    let htpasswd = dir.join("htpasswd");
    let out = Command::new("htpasswd")
        .arg("-Bbc")
        .arg(&htpasswd)
        .args([USER, PASS])
        .output()
        .unwrap();
    assert!(out.status.success());
    let reg = Registry::start_tls(
        Some(&htpasswd),
        Some((&pki.join("server.crt"), &pki.join("server.key"))),
    )?;
    reg.push_as(
        &corpus,
        "base",
        "lib/base:1",
        Some(&format!("{USER}:{PASS}")),
    );
    Some((reg, corpus, certs))
}

fn one_line_failure(r: &Run) {
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains(PASS), "{}", r.stderr);
}

fn layout_build(corpus: &Path, dir: &Path) -> PathBuf {
    let a = dir.join("layout");
    build(&a, &format!("oci:{}:base", corpus.display()), "b");
    a
}

#[test]
fn a_tls_registry_with_a_self_signed_ca_needs_cert_dir_or_tls_verify_false() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((reg, corpus, certs)) = tls_registry(tmp.path()) else {
        return;
    };
    let t = tmp.path();
    let creds = format!("{USER}:{PASS}");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", reg.port);
    let certs = certs.to_str().unwrap();
    let build_ = |store: &Path, extra: &[&str]| {
        run(puzzle(store)
            .args(["build", &src, "--tag", "b", "--creds", &creds])
            .args(extra))
    };

    // The registry is TLS only: plain HTTP is refused, and puzzle's
    // default for a loopback registry (plain HTTP) says what to give.
    let store = t.join("plain");
    let r = build_(&store, &[]);
    one_line_failure(&r);
    for word in ["HTTPS", "--cert-dir", "--tls-verify=false"] {
        assert!(r.stderr.contains(word), "{}", r.stderr);
    }
    // A cert dir whose CA did not sign it: the certificate problem, named.
    let other = t.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_certs(&other);
    let wrong = t.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::copy(other.join("ca.crt"), wrong.join("ca.crt")).unwrap();
    let r = build_(&store, &["--cert-dir", wrong.to_str().unwrap()]);
    one_line_failure(&r);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);
    assert!(r.stderr.contains("--cert-dir"), "{}", r.stderr);
    assert!(r.stderr.contains("--tls-verify=false"), "{}", r.stderr);

    // With its CA: HTTPS, the same image as from the layout.
    let store = t.join("tls");
    let r = build_(&store, &["--cert-dir", certs]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = metadata_of(&layout_build(&corpus, t), "b");
    assert_eq!(metadata_of(&store, "b"), want);
    // Without checking the certificate.
    let store = t.join("insecure");
    let r = build_(&store, &["--tls-verify=false"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(metadata_of(&store, "b"), want);

    // push and pull over the same registry with --cert-dir.
    let store = t.join("tls");
    let dest = format!("docker://127.0.0.1:{}/lib/pushed:1", reg.port);
    let r = run(puzzle(&store).args(["push", "b", &dest, "--creds", &creds]));
    one_line_failure(&r);
    let r = run(puzzle(&store).args(["push", "b", &dest, "--creds", &creds, "--cert-dir", certs]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pulled = t.join("pulled");
    let r = run(puzzle(&pulled).args(["pull", &dest, "--tag", "p", "--creds", &creds]));
    one_line_failure(&r);
    let r = run(puzzle(&pulled).args([
        "pull",
        &dest,
        "--tag",
        "p",
        "--creds",
        &creds,
        "--cert-dir",
        certs,
        "--json",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"image\":\"p\""), "{}", r.stdout);
    assert_eq!(run(puzzle(&pulled).arg("verify")).code, 0);
}

fn base_registry() -> Option<(Registry, PathBuf)> {
    let corpus = corpus()?;
    let reg = Registry::start()?;
    reg.push(&corpus, "base", "lib/base:1");
    Some((reg, corpus))
}

/// Nothing stored (no image) and the store verifies clean.
fn nothing_stored(store: &Path) {
    if store.exists() {
        assert!(images(store).is_empty());
        assert_eq!(run(puzzle(store).arg("verify")).code, 0);
    }
}

#[test]
fn a_blob_with_wrong_bytes_is_refused_and_nothing_is_stored() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.port);
    // Byte 4 of a gzip layer is in its header's MTIME, which gunzip does
    // not check: only the digest can tell.
    *proxy.faults.flip_blob_at.lock().unwrap() = Some(4);
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    // Pinned: a digest mismatch fails the build at once (no refetch).
    let r = run(puzzle(&store).args(["build", &src, "--tag", "b"]));
    one_line_failure(&r);
    assert!(r.stderr.contains("digest mismatch"), "{}", r.stderr);
    let (layer, _) = corpus_layers(&corpus, "base").remove(0);
    assert!(r.stderr.contains(&layer), "{}", r.stderr);
    nothing_stored(&store);
    // The bytes right again: the same build works.
    let r = run(puzzle(&store).args(["build", &src, "--tag", "b"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_pack_range_with_wrong_bytes_is_refused_by_pull() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    build(&a, &format!("oci:{}:base", corpus.display()), "b");
    let r = run(puzzle(&a).args([
        "push",
        "b",
        &format!("docker://127.0.0.1:{}/lib/p:1", reg.port),
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let proxy = FaultProxy::start(reg.port);
    // A byte in the first range of the pack (the metadata blob left whole).
    *proxy.faults.flip_range_at.lock().unwrap() = Some((20, metadata_of(&a, "b")));
    let src = format!("docker://127.0.0.1:{}/lib/p:1", proxy.port);
    let store = tmp.path().join("store");
    let r = run(puzzle(&store).args(["pull", &src, "--tag", "p"]));
    one_line_failure(&r);
    // The store holds none of the pack's chunks, so the pull takes the pack
    // whole: its SHA-256 refuses it, naming the digest the manifest gave.
    let manifest = images(&a).remove(0).manifest;
    let bytes = std::fs::read(
        a.join("blobs/sha256")
            .join(manifest.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let pack = m["layers"][1]["digest"].as_str().unwrap().to_owned();
    assert!(r.stderr.contains("digest mismatch"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("expected {pack}")),
        "{}",
        r.stderr
    );
    assert!(proxy.seen().iter().any(|s| s.status == 206));
    nothing_stored(&store);
    let r = run(puzzle(&store).args(["pull", &src, "--tag", "p", "--json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"image\":\"p\""), "{}", r.stdout);
}

#[test]
fn a_registry_that_stalls_mid_blob_is_resumed_after_the_read_timeout() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.port);
    *proxy.faults.stall_blob_at.lock().unwrap() = Some(100_000);
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let start = Instant::now();
    let r = run(puzzle(&store).args(["build", &src, "--tag", "b", "--read-timeout", "2"]));
    let took = start.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The stall holds for 120 s: the build went on after about 2.
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert!(
        proxy
            .seen()
            .iter()
            .any(|s| s.range.as_deref() == Some("bytes=100000-")),
        "{:#?}",
        proxy.seen()
    );
    assert_eq!(
        metadata_of(&store, "b"),
        metadata_of(&layout_build(&corpus, tmp.path()), "b")
    );
}

#[test]
fn a_registry_that_never_answers_fails_within_the_retries_of_the_read_timeout() {
    let Some((reg, _)) = base_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(reg.port);
    // Every request is held 40 s before it is answered.
    *proxy.faults.delay.lock().unwrap() = Duration::from_secs(40);
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let start = Instant::now();
    let r = run(puzzle(&store).args(["build", &src, "--tag", "b", "--read-timeout", "1"]));
    let took = start.elapsed();
    one_line_failure(&r);
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    // 6 tries of 1 s and their backoff, not 40 s.
    assert!(took < Duration::from_secs(35), "{took:?}");
    nothing_stored(&store);
}
