//! Registry conventions: credentials (--creds, --authfile, the auth files in
//! skopeo's order, credential helpers), basic auth against docker-registry
//! with htpasswd, token expiry and refresh, retries, a registry that
//! ignores Range, redirects to blob storage, --tls-verify=false. Faults come
//! from the proxy in regfault.rs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use crate::regfault::*;
use crate::regkit::*;
use crate::util::*;

const USER: &str = "puzzler";
const PASS: &str = "Corr3ct-H0rse";
const WRONG: &str = "Wr0ng-Batt3ry";

/// `puzzle` with no auth file of the machine in reach: HOME is `home`, the
/// other places credentials are looked up are unset.
fn puzzle_in(store: &Path, home: &Path) -> Command {
    let mut c = puzzle(store);
    c.env("HOME", home);
    for v in [
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "XDG_CONFIG_HOME",
        "DOCKER_CONFIG",
    ] {
        c.env_remove(v);
    }
    c
}

fn build_in(store: &Path, home: &Path, src: &str, tag: &str, extra: &[&str]) -> Run {
    run(puzzle_in(store, home)
        .args(["build", src, "--tag", tag])
        .args(extra))
}

fn auth_json(user: &str, pass: &str, host: &str) -> String {
    let auth = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{user}:{pass}").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap()
        .stdout;
    format!(
        r#"{{"auths":{{"{host}":{{"auth":"{}"}}}}}}"#,
        String::from_utf8(auth).unwrap()
    )
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// A one-line failure that names the source and gives the fix, with no
/// password in it.
fn assert_denied(r: &Run, src: &str) {
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains(src), "{}", r.stderr);
    assert!(
        r.stderr.contains("--creds") && r.stderr.contains("--authfile"),
        "{}",
        r.stderr
    );
    for secret in [PASS, WRONG] {
        assert!(
            !r.stderr.contains(secret) && !r.stdout.contains(secret),
            "{}",
            r.stderr
        );
    }
}

/// A registry behind htpasswd with lib/base:1 pushed, or `None` without the
/// tools.
fn basic_registry(dir: &Path) -> Option<Registry> {
    if !have("htpasswd") {
        assert!(
            !require_tools(),
            "htpasswd is required (run scripts/setup.sh)"
        );
        return None;
    }
    let corpus = corpus()?;
    let htpasswd = dir.join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args([USER, PASS])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg = Registry::start_with(Some(&htpasswd))?;
    reg.push_as(
        &corpus,
        "base",
        "lib/base:1",
        Some(&format!("{USER}:{PASS}")),
    );
    Some(reg)
}

#[test]
fn basic_auth_from_creds_and_auth_files_in_skopeos_order() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = basic_registry(tmp.path()) else {
        return;
    };
    let host = format!("127.0.0.1:{}", reg.port);
    let src = format!("docker://{host}/lib/base:1");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let store = tmp.path().join("store");

    // No credentials anywhere: refused, with the fix.
    let r = build_in(&store, &home, &src, "none", &[]);
    assert_denied(&r, &src);
    // --creds, right and wrong.
    let r = build_in(
        &store,
        &home,
        &src,
        "creds",
        &["--creds", &format!("{USER}:{PASS}")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = build_in(
        &store,
        &home,
        &src,
        "w",
        &["--creds", &format!("{USER}:{WRONG}")],
    );
    assert_denied(&r, &src);
    assert!(
        r.stderr.contains("--creds") && r.stderr.contains("refused"),
        "{}",
        r.stderr
    );

    let good = auth_json(USER, PASS, &host);
    let bad = auth_json(USER, WRONG, &host);
    // Docker's config.json alone works, the "https://HOST/" key form too.
    let docker = write(&home.join(".docker/config.json"), &bad);
    let r = build_in(&store, &home, &src, "w", &[]);
    assert_denied(&r, &src);
    assert!(
        r.stderr.contains(&docker.display().to_string()),
        "{}",
        r.stderr
    );
    write(
        &docker,
        &auth_json(USER, PASS, &format!("https://{host}/v2/")),
    );
    assert_eq!(build_in(&store, &home, &src, "docker", &[]).code, 0);
    // containers' auth.json comes before it: a wrong one there is used.
    write(&docker, &good);
    let xdg = write(&home.join(".config/containers/auth.json"), &bad);
    assert_denied(&build_in(&store, &home, &src, "w", &[]), &src);
    // $XDG_RUNTIME_DIR's before that.
    let runtime = tmp.path().join("run");
    write(&runtime.join("containers/auth.json"), &good);
    let r = run(puzzle_in(&store, &home)
        .env("XDG_RUNTIME_DIR", &runtime)
        .args(["build", &src, "--tag", "runtime"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // $REGISTRY_AUTH_FILE before the defaults, --authfile before it, and
    // --creds before all.
    write(&xdg, &good);
    let env_file = write(&tmp.path().join("env.json"), &bad);
    let flag_file = write(&tmp.path().join("flag.json"), &good);
    let with_env = |extra: &[&str]| {
        run(puzzle_in(&store, &home)
            .env("REGISTRY_AUTH_FILE", &env_file)
            .args(["build", &src, "--tag", "x"])
            .args(extra))
    };
    assert_denied(&with_env(&[]), &src);
    let flag = flag_file.display().to_string();
    assert_eq!(with_env(&["--authfile", &flag]).code, 0);
    write(&flag_file, &bad);
    assert_denied(&with_env(&["--authfile", &flag]), &src);
    let r = with_env(&["--authfile", &flag, "--creds", &format!("{USER}:{PASS}")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A named auth file that is missing is an error naming it.
    let r = build_in(
        &store,
        &home,
        &src,
        "x",
        &["--authfile", "/nonexistent/auth.json"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("/nonexistent/auth.json"), "{}", r.stderr);
}

#[test]
fn a_credential_helper_on_path_gives_the_password() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(reg) = basic_registry(tmp.path()) else {
        return;
    };
    let host = format!("127.0.0.1:{}", reg.port);
    let src = format!("docker://{host}/lib/base:1");
    let home = tmp.path().join("home");
    let bin = tmp.path().join("bin");
    let asked = tmp.path().join("asked");
    let helper = write(
        &bin.join("docker-credential-puzzletest"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\ncat > {}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASS}\"}}' \"$(cat {})\"\n",
            asked.display(),
            asked.display()
        ),
    );
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let store = tmp.path().join("store");
    for config in [
        format!(r#"{{"credHelpers":{{"{host}":"puzzletest"}}}}"#),
        r#"{"auths":{},"credsStore":"puzzletest"}"#.to_owned(),
    ] {
        write(&home.join(".docker/config.json"), &config);
        let _ = std::fs::remove_file(&asked);
        let r = run(puzzle_in(&store, &home)
            .env("PATH", &path)
            .args(["build", &src, "--tag", "h"]));
        assert_eq!(r.code, 0, "{config}: {}", r.stderr);
        assert_eq!(std::fs::read_to_string(&asked).unwrap(), host);
    }
    // A helper that fails: one line naming it, no secret.
    write(
        &home.join(".docker/config.json"),
        r#"{"credsStore":"missing-helper"}"#,
    );
    let r = build_in(&store, &home, &src, "x", &[]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("docker-credential-missing-helper"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_helpers_identity_token_is_exchanged_at_the_token_service() {
    let Some((reg, _)) = base_registry() else {
        return;
    };
    let proxy = FaultProxy::start(reg.port);
    *proxy.faults.token.lock().unwrap() = Some(TokenService {
        user_pass: Some((USER.into(), PASS.into())),
        refresh_token: Some("r3fresh-me".into()),
        expires_in: 300,
        valid: Duration::from_secs(300),
    });
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let bin = tmp.path().join("bin");
    let helper = write(
        &bin.join("docker-credential-idt"),
        "#!/bin/sh\ncat >/dev/null\nprintf '{\"Username\":\"<token>\",\"Secret\":\"r3fresh-me\"}'\n",
    );
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    write(&home.join(".docker/config.json"), r#"{"credsStore":"idt"}"#);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let r = run(puzzle_in(&store, &home)
        .env("PATH", &path)
        .args(["build", &src, "--tag", "b"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|s| s.line.starts_with("POST /token") && s.status == 200),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|s| s.line.starts_with("GET /token")),
        "{seen:#?}"
    );
}

fn base_registry() -> Option<(Registry, PathBuf)> {
    let corpus = corpus()?;
    let reg = Registry::start()?;
    reg.push(&corpus, "base", "lib/base:1");
    Some((reg, corpus))
}

/// The store built from the layout, to compare registry builds with.
fn layout_build(corpus: &Path, dir: &Path) -> PathBuf {
    let a = dir.join("layout");
    build(&a, &format!("oci:{}:base", corpus.display()), "b");
    a
}

#[test]
fn tokens_are_refreshed_before_they_expire() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    let proxy = FaultProxy::start(reg.port);
    *proxy.faults.token.lock().unwrap() = Some(TokenService {
        user_pass: Some((USER.into(), PASS.into())),
        refresh_token: None,
        expires_in: 2,
        valid: Duration::from_secs(2),
    });
    // Each answer takes half a token's life: a token is due for renewal
    // (its issued_at counted) after one or two uses.
    *proxy.faults.delay.lock().unwrap() = Duration::from_secs(1);
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let started = Instant::now();
    let r = build_in(
        &store,
        &home,
        &src,
        "b",
        &["--creds", &format!("{USER}:{PASS}")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(started.elapsed() > Duration::from_secs(2));
    assert!(proxy.tokens_issued() >= 2, "{:#?}", proxy.seen());
    assert_eq!(
        proxy.stale_tokens.load(Ordering::SeqCst),
        0,
        "an expired token was sent: {:#?}",
        proxy.seen()
    );
    assert_eq!(
        metadata_of(&layout_build(&corpus, tmp.path()), "b"),
        metadata_of(&store, "b")
    );
    // Wrong credentials at the token service: one line, no secret.
    let r = build_in(
        &store,
        &home,
        &src,
        "w",
        &["--creds", &format!("{USER}:{WRONG}")],
    );
    assert_denied(&r, &src);
    assert!(r.stderr.contains("token service"), "{}", r.stderr);
}

#[test]
fn a_refused_cached_token_is_replaced_once() {
    let Some((reg, _)) = base_registry() else {
        return;
    };
    let proxy = FaultProxy::start(reg.port);
    // Tokens announced for 300 s that the registry drops after 1 s.
    *proxy.faults.token.lock().unwrap() = Some(TokenService {
        user_pass: None,
        refresh_token: None,
        expires_in: 300,
        valid: Duration::from_secs(1),
    });
    *proxy.faults.delay.lock().unwrap() = Duration::from_millis(400);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let r = build_in(&store, &tmp.path().join("home"), &src, "b", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        proxy.stale_tokens.load(Ordering::SeqCst) >= 1,
        "{:#?}",
        proxy.seen()
    );
    assert!(proxy.tokens_issued() >= 2);
}

#[test]
fn throttling_and_failures_are_retried_honouring_retry_after() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    let proxy = FaultProxy::start(reg.port);
    let f = &proxy.faults;
    f.too_many.store(2, Ordering::SeqCst);
    f.unavailable.store(1, Ordering::SeqCst);
    f.close.store(1, Ordering::SeqCst);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let r = build_in(&store, &tmp.path().join("home"), &src, "b", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = proxy.seen();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert_eq!(&statuses[..5], &[429, 429, 503, 0, 200], "{seen:#?}");
    // The manifest was asked for again each time, the second try after
    // the 429 at least a second later (Retry-After: 1).
    assert!(
        seen[..5].iter().all(|s| s.line.contains("/manifests/")),
        "{seen:#?}"
    );
    let gap = seen[1].at.duration_since(seen[0].at);
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
    assert_eq!(
        metadata_of(&layout_build(&corpus, tmp.path()), "b"),
        metadata_of(&store, "b")
    );
    // A registry that stays unavailable: a bounded number of tries, then one
    // line naming the registry.
    f.unavailable.store(1000, Ordering::SeqCst);
    let before = proxy.seen().len();
    let r = build_in(&store, &tmp.path().join("home"), &src, "c", &[]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("503") && r.stderr.contains(&src),
        "{}",
        r.stderr
    );
    let tries = proxy.seen().len() - before;
    assert!((2..=10).contains(&tries), "{tries}");
}

#[test]
fn a_registry_ignoring_range_after_a_cut_gives_the_blob_once() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    let proxy = FaultProxy::start(reg.port);
    proxy.faults.ignore_range.store(true, Ordering::SeqCst);
    *proxy.faults.cut_blob_at.lock().unwrap() = Some(100_000);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", proxy.port);
    let r = build_in(&store, &tmp.path().join("home"), &src, "b", &["--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = proxy.seen();
    let resumed: Vec<&Seen> = seen.iter().filter(|s| s.range.is_some()).collect();
    assert!(
        !resumed.is_empty(),
        "no Range request after the cut: {seen:#?}"
    );
    assert!(resumed.iter().all(|s| s.status == 200), "{resumed:#?}");
    assert_eq!(
        metadata_of(&layout_build(&corpus, tmp.path()), "b"),
        metadata_of(&store, "b")
    );
    let r = run(puzzle(&store).arg("verify"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn redirected_blob_gets_carry_no_credentials_to_the_other_host() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    let storage = FaultProxy::start(reg.port);
    let front = FaultProxy::start(reg.port);
    *front.faults.token.lock().unwrap() = Some(TokenService {
        user_pass: Some((USER.into(), PASS.into())),
        refresh_token: None,
        expires_in: 300,
        valid: Duration::from_secs(300),
    });
    *front.faults.redirect_blobs_to.lock().unwrap() = Some(storage.port);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let src = format!("docker://127.0.0.1:{}/lib/base:1", front.port);
    let creds = format!("{USER}:{PASS}");
    let r = build_in(
        &store,
        &tmp.path().join("home"),
        &src,
        "b",
        &["--creds", &creds],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let redirected = front.seen().iter().filter(|s| s.status == 307).count();
    let got = storage.seen();
    assert!(redirected >= 2 && got.len() == redirected, "{got:#?}");
    assert!(got.iter().all(|s| s.authorization.is_none()), "{got:#?}");
    // The registry itself did get the token.
    assert!(front.seen().iter().any(|s| s
        .authorization
        .as_deref()
        .is_some_and(|a| a.starts_with("Bearer tok-"))));
    assert_eq!(
        metadata_of(&layout_build(&corpus, tmp.path()), "b"),
        metadata_of(&store, "b")
    );
}

/// The GETs of `seen` per blob digest, in order: (status, ranged).
fn blob_gets(seen: &[Seen]) -> std::collections::BTreeMap<String, Vec<(u16, bool)>> {
    let mut by = std::collections::BTreeMap::<String, Vec<(u16, bool)>>::new();
    for s in seen {
        if let Some((_, d)) = s.line.split_once("/blobs/") {
            let d = d.split(' ').next().unwrap().to_owned();
            by.entry(d).or_default().push((s.status, s.range.is_some()));
        }
    }
    by
}

#[test]
fn a_blob_redirect_is_reused_until_the_other_host_refuses_it() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = layout_build(&corpus, tmp.path());
    for expired in [false, true] {
        let storage = FaultProxy::start(reg.port);
        let front = FaultProxy::start(reg.port);
        *front.faults.redirect_blobs_to.lock().unwrap() = Some(storage.port);
        // The layer's download drops after 100 kB, so it resumes.
        *storage.faults.cut_blob_at.lock().unwrap() = Some(100_000);
        if expired {
            storage.faults.forbid_ranged.store(1, Ordering::SeqCst);
        }
        let store = tmp.path().join(format!("store-{expired}"));
        let src = format!("docker://127.0.0.1:{}/lib/base:1", front.port);
        let r = build_in(&store, &tmp.path().join("home"), &src, "b", &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(metadata_of(&layout, "b"), metadata_of(&store, "b"));
        let (asked, got) = (blob_gets(&front.seen()), blob_gets(&storage.seen()));
        let resumed: Vec<_> = got.iter().filter(|(_, g)| g.len() > 1).collect();
        assert_eq!(resumed.len(), 1, "one blob resumed: {got:?}");
        let (layer, at_storage) = resumed[0];
        if expired {
            // Cut, refused at the remembered place, asked of the registry
            // again, fetched from where it now redirects.
            assert_eq!(
                at_storage,
                &[(200, false), (403, true), (206, true)],
                "{got:?}"
            );
            assert_eq!(asked[layer], [(307, false), (307, true)], "{asked:?}");
        } else {
            // The resume went where the registry had sent the first GET.
            assert_eq!(at_storage, &[(200, false), (206, true)], "{got:?}");
            assert_eq!(asked[layer], [(307, false)], "{asked:?}");
        }
        // Every other blob: one redirect, one GET at the other host.
        assert_eq!(
            asked.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        );
        assert!(asked.len() >= 2, "{asked:?}");
    }
}

#[test]
fn tls_verify_false_allows_plain_http_to_other_hosts() {
    let Some((reg, corpus)) = base_registry() else {
        return;
    };
    // 127.0.0.2 is not one of the names spoken to in plain HTTP by default.
    let proxy = FaultProxy::start_on("127.0.0.2", reg.port);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let home = tmp.path().join("home");
    let src = format!("docker://127.0.0.2:{}/lib/base:1", proxy.port);
    let r = build_in(&store, &home, &src, "b", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("--tls-verify=false"), "{}", r.stderr);
    let r = build_in(&store, &home, &src, "b", &["--tls-verify=false"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        metadata_of(&layout_build(&corpus, tmp.path()), "b"),
        metadata_of(&store, "b")
    );
}
