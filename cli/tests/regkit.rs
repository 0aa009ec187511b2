//! Test harness for registry tests: a local `docker-registry` (Debian's
//! package; scripts/setup.sh installs it) fed with `skopeo copy`, a logging
//! proxy that can cut a blob response short, and a Bearer-token front.

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

pub(crate) const REGISTRY: &str = "/usr/bin/docker-registry";

/// A `docker-registry` on 127.0.0.1, killed on drop.
pub(crate) struct Registry {
    child: Child,
    pub(crate) port: u16,
    /// Its config and data (kept across [`Registry::restart`]).
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docker-registry serve config`.
fn serve(config: &Path) -> Child {
    Command::new(REGISTRY)
        .arg("serve")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_for_port(port: u16) {
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
    pub(crate) fn start() -> Option<Registry> {
        Self::start_with(None)
    }

    /// Like [`Registry::start`], demanding basic authentication from the
    /// users of `htpasswd` (bcrypt entries).
    pub(crate) fn start_with(htpasswd: Option<&Path>) -> Option<Registry> {
        Self::start_tls(htpasswd, None)
    }

    /// Like [`Registry::start_with`], serving HTTPS only with `tls`'s
    /// certificate and key (PEM files).
    pub(crate) fn start_tls(
        htpasswd: Option<&Path>,
        tls: Option<(&Path, &Path)>,
    ) -> Option<Registry> {
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
                 http:\n  addr: 127.0.0.1:{port}\n{}{}",
                dir.path().join("data").display(),
                tls.map_or(String::new(), |(c, k)| format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    c.display(),
                    k.display()
                )),
                htpasswd.map_or(String::new(), |h| format!(
                    "auth:\n  htpasswd:\n    realm: puzzle-test\n    path: {}\n",
                    h.display()
                ))
            ),
        )
        .unwrap();
        let reg = Registry {
            child: serve(&config),
            port,
            dir,
        };
        wait_for_port(port);
        Some(reg)
    }

    /// Kills the registry (its data stays).
    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data, after [`Registry::stop`].
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.child = serve(&self.dir.path().join("config.yml"));
        wait_for_port(self.port);
    }

    /// `skopeo copy`s corpus image `tag` to `REPO:TAG` here.
    pub(crate) fn push(&self, corpus: &Path, tag: &str, dest: &str) {
        self.push_as(corpus, tag, dest, None)
    }

    /// [`Registry::push`] with `USER:PASS` for a registry that wants them.
    pub(crate) fn push_as(&self, corpus: &Path, tag: &str, dest: &str, creds: Option<&str>) {
        let creds = creds.map(|c| format!("--dest-creds={c}"));
        self.copy_from(corpus, tag, dest, creds.as_slice());
    }

    /// `skopeo copy`s image `tag` of the OCI layout `layout` (a corpus or a
    /// puzzle store) to `REPO:TAG` here, with `extra` skopeo flags.
    pub(crate) fn copy_from<S: AsRef<std::ffi::OsStr>>(
        &self,
        layout: &Path,
        tag: &str,
        dest: &str,
        extra: &[S],
    ) {
        let out = Command::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
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
pub(crate) struct Proxy {
    pub(crate) port: u16,
    log: Arc<Mutex<Vec<String>>>,
    pub(crate) cut: Arc<AtomicBool>,
}

impl Proxy {
    pub(crate) fn start(upstream: u16, cut_at: Option<u64>) -> Proxy {
        Proxy::with(upstream, cut_at, None, None)
    }

    /// A proxy that passes responses on at about `bytes_per_sec`.
    pub(crate) fn slow(upstream: u16, bytes_per_sec: u64) -> Proxy {
        Proxy::with(upstream, None, None, Some(bytes_per_sec))
    }

    /// A proxy that passes request bodies on at about `bytes_per_sec`.
    pub(crate) fn throttled(upstream: u16, bytes_per_sec: u64) -> Proxy {
        Proxy::with(upstream, None, Some(bytes_per_sec), None)
    }

    fn with(upstream: u16, cut_at: Option<u64>, throttle: Option<u64>, down: Option<u64>) -> Proxy {
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
                std::thread::spawn(move || requests(client, server, &log, throttle));
                std::thread::spawn(move || responses(s2, c2, cut_at, &cut, down));
            }
        });
        Proxy { port, log, cut }
    }

    /// How many logged lines start with `prefix` so far (the log is kept).
    pub(crate) fn count(&self, prefix: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.starts_with(prefix)).count()
    }

    pub(crate) fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// The digests of the blobs GET was asked for.
    pub(crate) fn blob_gets(&self) -> BTreeSet<String> {
        self.take_log()
            .iter()
            .filter_map(|l| l.strip_prefix("GET "))
            .filter_map(|l| l.split_once("/blobs/"))
            .map(|(_, d)| d.split(' ').next().unwrap().to_owned())
            .collect()
    }
}

/// Client to server, request by request: logs each request line (any
/// method) and `Range` header, and passes bodies (`Content-Length`) through
/// unread (at about `throttle` bytes a second, if given). A chunked body
/// ends the parsing: the rest is piped as is.
pub(crate) fn requests(
    mut from: TcpStream,
    mut to: TcpStream,
    log: &Mutex<Vec<String>>,
    throttle: Option<u64>,
) {
    let mut buf = [0u8; 16 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut body_left = 0u64;
    let mut raw = false;
    loop {
        if !raw && body_left == 0 {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = pending.drain(..i + 4).collect();
                let text = String::from_utf8_lossy(&head).into_owned();
                for (n, line) in text.lines().enumerate() {
                    let lower = line.to_ascii_lowercase();
                    if n == 0 || lower.starts_with("range:") {
                        log.lock().unwrap().push(line.to_owned());
                    }
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        body_left = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                        raw = true;
                    }
                }
                if to.write_all(&head).is_err() {
                    break;
                }
                continue;
            }
        } else {
            let n = if raw {
                pending.len()
            } else {
                pending.len().min(body_left as usize)
            };
            if n > 0 {
                if to.write_all(&pending[..n]).is_err() {
                    break;
                }
                pending.drain(..n);
                body_left -= if raw { 0 } else { n as u64 };
                if let Some(rate) = throttle {
                    std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
                }
                continue;
            }
        }
        match from.read(&mut buf) {
            Ok(n @ 1..) => pending.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let _ = to.write_all(&pending);
    let _ = to.shutdown(Shutdown::Write);
}

pub(crate) fn responses(
    mut from: TcpStream,
    mut to: TcpStream,
    cut_at: Option<u64>,
    cut: &AtomicBool,
    throttle: Option<u64>,
) {
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
        if let Some(rate) = throttle {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

pub(crate) fn metadata_of(store: &Path, tag: &str) -> String {
    images(store)
        .into_iter()
        .find(|i| i.name == tag)
        .unwrap_or_else(|| panic!("no image {tag}"))
        .metadata
}

/// The layer digests and sizes of corpus image `tag`.
pub(crate) fn corpus_layers(corpus: &Path, tag: &str) -> Vec<(String, u64)> {
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

/// A registry front that demands a Bearer token: a connection whose first
/// request lacks `Authorization: Bearer <token>` gets a 401 challenge
/// pointing at its own `/token` (which answers with `access_token` only),
/// and is closed; an authorized one is piped to the registry.
pub(crate) struct TokenFront {
    pub(crate) port: u16,
    pub(crate) token_requests: Arc<Mutex<Vec<String>>>,
}

pub(crate) const TOKEN: &str = "t0k-3n";

impl TokenFront {
    pub(crate) fn start(upstream: u16) -> TokenFront {
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

pub(crate) fn token_conn(
    mut client: TcpStream,
    upstream: u16,
    port: u16,
    log: &Mutex<Vec<String>>,
) {
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

/// A registry front that answers chosen requests itself: one request per
/// connection (it asks the registry to close after each), so every request
/// is judged. `refuse` gets the request line and returns a status line and
/// JSON body to answer with, or `None` to pass the request on.
pub(crate) struct Front {
    pub(crate) port: u16,
}

pub(crate) type Rule = fn(&str) -> Option<(&'static str, &'static str)>;

impl Front {
    pub(crate) fn start(upstream: u16, refuse: Rule) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                std::thread::spawn(move || front_conn(client, upstream, refuse));
            }
        });
        Front { port }
    }
}

fn front_conn(mut client: TcpStream, upstream: u16, refuse: Rule) {
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
    let length: u64 = text
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = Vec::new();
    if (&mut client).take(length).read_to_end(&mut body).is_err() {
        return;
    }
    if let Some((status, reply)) = refuse(&first) {
        let _ = write!(
            client,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
            reply.len()
        );
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    head.truncate(head.len() - 2);
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    if server.write_all(&head).is_err() || server.write_all(&body).is_err() {
        return;
    }
    let _ = std::io::copy(&mut server, &mut client);
    let _ = client.shutdown(Shutdown::Both);
}
