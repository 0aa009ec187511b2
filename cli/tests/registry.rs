//! `puzzle build docker://...` against a local `docker-registry`, fed with
//! `skopeo copy`, sometimes behind a proxy that logs requests and cuts a blob
//! response short (harness in regkit.rs).

use std::{collections::BTreeSet, sync::atomic::Ordering};

use crate::regkit::*;
use crate::util::*;
#[test]
fn a_registry_image_builds_the_same_as_its_layout() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    reg.push(&corpus, "python3", "lib/python3:1");
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build(&a, &format!("oci:{}:python3", corpus.display()), "p");
    let s = build(
        &b,
        &format!("docker://127.0.0.1:{}/lib/python3:1", reg.port),
        "p",
    );
    let layers = corpus_layers(&corpus, "python3");
    assert_eq!(s.bytes_read, layers.iter().map(|(_, n)| n).sum::<u64>());
    assert_eq!(metadata_of(&a, "p"), metadata_of(&b, "p"));
    let (ta, tb) = (tmp.path().join("ta"), tmp.path().join("tb"));
    extract(&a, "p", &ta);
    extract(&b, "p", &tb);
    assert_same_tree(&ta, &tb);
}

#[test]
fn only_layers_the_store_lacks_are_fetched() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    reg.push(&corpus, "python3", "lib/python3:1");
    reg.push(&corpus, "django-5.0.8", "lib/django:5.0.8");
    let proxy = Proxy::start(reg.port, None);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let base = format!("docker://127.0.0.1:{}", proxy.port);
    build(&store, &format!("{base}/lib/python3:1"), "p");
    let python: Vec<(String, u64)> = corpus_layers(&corpus, "python3");
    let fetched = proxy.blob_gets();
    for (d, _) in &python {
        assert!(fetched.contains(d), "python3 layer {d} was not fetched");
    }
    let s = build(&store, &format!("{base}/lib/django:5.0.8"), "d");
    let django = corpus_layers(&corpus, "django-5.0.8");
    let new: Vec<&(String, u64)> = django.iter().filter(|l| !python.contains(l)).collect();
    assert!(!new.is_empty() && new.len() < django.len(), "{new:?}");
    let fetched = proxy.blob_gets();
    let fetched_layers: BTreeSet<String> = fetched
        .iter()
        .filter(|d| django.iter().any(|(l, _)| l == *d))
        .cloned()
        .collect();
    let want: BTreeSet<String> = new.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(fetched_layers, want);
    // The config is the only other blob.
    assert_eq!(fetched.len(), want.len() + 1, "{fetched:?}");
    assert_eq!(s.bytes_read, new.iter().map(|(_, n)| n).sum::<u64>());
}

#[test]
fn a_dropped_connection_mid_layer_resumes_with_range() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    reg.push(&corpus, "python3", "lib/python3:1");
    let proxy = Proxy::start(reg.port, Some(300_000));
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build(&a, &format!("oci:{}:python3", corpus.display()), "p");
    build(
        &b,
        &format!("docker://127.0.0.1:{}/lib/python3:1", proxy.port),
        "p",
    );
    assert!(proxy.cut.load(Ordering::SeqCst), "the proxy never cut");
    let log = proxy.take_log();
    assert!(
        log.iter()
            .any(|l| l.to_ascii_lowercase().starts_with("range: bytes=")),
        "no Range request after the cut: {log:?}"
    );
    assert_eq!(metadata_of(&a, "p"), metadata_of(&b, "p"));
    let r = run(puzzle(&b).arg("verify"));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_missing_tag_or_repository_is_one_line_naming_it() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    reg.push(&corpus, "base", "lib/base:1");
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    for name in ["lib/base:nope", "lib/nothing:1"] {
        let src = format!("docker://127.0.0.1:{}/{name}", reg.port);
        let r = run(puzzle(&store).args(["build", &src, "--tag", "x"]));
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.contains(&src), "{}", r.stderr);
        assert!(r.stderr.contains("404"), "{}", r.stderr);
    }
    assert!(images(&store).is_empty());
}

#[test]
fn a_bearer_token_is_fetched_from_the_realm_of_the_challenge() {
    let Some(corpus) = corpus() else { return };
    let Some(reg) = Registry::start() else { return };
    reg.push(&corpus, "base", "lib/base:1");
    let front = TokenFront::start(reg.port);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    build(
        &store,
        &format!("docker://127.0.0.1:{}/lib/base:1", front.port),
        "b",
    );
    let asked = front.token_requests.lock().unwrap().clone();
    assert!(!asked.is_empty(), "no token was asked for");
    assert!(
        asked[0].contains("service=test-registry")
            && asked[0].contains("scope=repository%3Alib%2Fbase%3Apull"),
        "{asked:?}"
    );
    let a = tmp.path().join("a");
    build(&a, &format!("oci:{}:base", corpus.display()), "b");
    assert_eq!(metadata_of(&a, "b"), metadata_of(&store, "b"));
}
