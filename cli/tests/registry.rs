//! `puzzle build docker://...` against a local `docker-registry` (Debian's
//! package; scripts/setup.sh installs it), fed with `skopeo copy`, sometimes
//! behind a proxy that logs requests and cuts a blob response short.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::util::*;

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A `docker-registry` on 127.0.0.1, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nothing listens on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Registry {
    /// `None` (after a note) when docker-registry or skopeo are missing and
    /// tools are not required.
    fn start() -> Option<Registry> {
        if !Path::new(REGISTRY).exists() {
            assert!(
                !require_tools(),
                "{REGISTRY} is required (run scripts/setup.sh)"
            );
            eprintln!("note: {REGISTRY} is not installed; skipping");
            return None;
        }
        if !have("skopeo") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let reg = Registry {
            child,
            port,
            _dir: dir,
        };
        wait_for_port(port);
        Some(reg)
    }

    /// `skopeo copy`s corpus image `tag` to `REPO:TAG` here.
    fn push(&self, corpus: &Path, tag: &str, dest: &str) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", corpus.display()))
            .arg(format!("docker://127.0.0.1:{}/{dest}", self.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A TCP proxy in front of a registry: logs every request line and `Range`
/// header, and can cut the first connection whose responses pass `cut_at`
/// bytes (mid-blob: manifests and configs are far smaller).
struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: u16, cut_at: Option<u64>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(AtomicBool::new(false));
        let (log2, cut2) = (Arc::clone(&log), Arc::clone(&cut));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (log, cut) = (Arc::clone(&log2), Arc::clone(&cut2));
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || requests(client, server, &log));
                std::thread::spawn(move || responses(s2, c2, cut_at, &cut));
            }
        });
        Proxy { port, log, cut }
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// The digests of the blobs GET was asked for.
    fn blob_gets(&self) -> BTreeSet<String> {
        self.take_log()
            .iter()
            .filter_map(|l| l.strip_prefix("GET "))
            .filter_map(|l| l.split_once("/blobs/"))
            .map(|(_, d)| d.split(' ').next().unwrap().to_owned())
            .collect()
    }
}

/// Client to server: GET requests have no body, so every line is a request
/// line or a header.
fn requests(mut from: TcpStream, mut to: TcpStream, log: &Mutex<Vec<String>>) {
    let mut buf = [0u8; 16 << 10];
    let mut pending = String::new();
    while let Ok(n @ 1..) = from.read(&mut buf) {
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(i) = pending.find("\r\n") {
            let line: String = pending.drain(..i + 2).collect();
            let line = line.trim_end();
            if line.starts_with("GET ") || line.to_ascii_lowercase().starts_with("range:") {
                log.lock().unwrap().push(line.to_owned());
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn responses(mut from: TcpStream, mut to: TcpStream, cut_at: Option<u64>, cut: &AtomicBool) {
    let mut buf = [0u8; 16 << 10];
    let mut sent = 0u64;
    while let Ok(n @ 1..) = from.read(&mut buf) {
        let mut n = n;
        let limit = cut_at.filter(|_| !cut.load(Ordering::SeqCst));
        if let Some(limit) = limit.filter(|l| sent + n as u64 > *l) {
            if !cut.swap(true, Ordering::SeqCst) {
                n = (limit - sent) as usize;
                let _ = to.write_all(&buf[..n]);
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = to.shutdown(Shutdown::Both);
}

fn metadata_of(store: &Path, tag: &str) -> String {
    images(store)
        .into_iter()
        .find(|i| i.name == tag)
        .unwrap_or_else(|| panic!("no image {tag}"))
        .metadata
}

/// The layer digests and sizes of corpus image `tag`.
fn corpus_layers(corpus: &Path, tag: &str) -> Vec<(String, u64)> {
    let digest = corpus_manifest(corpus, tag);
    let path: PathBuf = corpus
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

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

/// A registry front that demands a Bearer token: a connection whose first
/// request lacks `Authorization: Bearer <token>` gets a 401 challenge
/// pointing at its own `/token` (which answers with `access_token` only),
/// and is closed; an authorized one is piped to the registry.
struct TokenFront {
    port: u16,
    token_requests: Arc<Mutex<Vec<String>>>,
}

const TOKEN: &str = "t0k-3n";

impl TokenFront {
    fn start(upstream: u16) -> TokenFront {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&token_requests);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let log = Arc::clone(&log);
                std::thread::spawn(move || token_conn(client, upstream, port, &log));
            }
        });
        TokenFront {
            port,
            token_requests,
        }
    }
}

fn token_conn(mut client: TcpStream, upstream: u16, port: u16, log: &Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let first = text.lines().next().unwrap_or("").to_owned();
    let reply = |client: &mut TcpStream, status: &str, extra: &str, body: &str| {
        let _ = write!(
            client,
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if first.starts_with("GET /token") {
        log.lock().unwrap().push(first);
        let body = format!("{{\"access_token\":\"{TOKEN}\",\"expires_in\":300}}");
        return reply(&mut client, "200 OK", "", &body);
    }
    let want = format!("authorization: bearer {TOKEN}");
    let authorized = text.lines().any(|l| l.eq_ignore_ascii_case(&want));
    if !authorized {
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",\
             service=\"test-registry\",scope=\"repository:lib/base:pull\"\r\n"
        );
        return reply(&mut client, "401 Unauthorized", &challenge, "{}");
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    if server.write_all(&head).is_err() {
        return;
    }
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut s2, &mut c2);
        let _ = c2.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut client, &mut server);
    let _ = server.shutdown(Shutdown::Write);
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
