//! A fault-injecting HTTP proxy in front of a test registry: one request
//! per upstream connection, so it can answer for the registry (429 with
//! `Retry-After`, 503, a closed connection), change the request (drop
//! `Range`), redirect blob GETs to another port, cut a blob response short,
//! slow every request, and play a Bearer token service whose tokens expire.
//! Every request is logged with what it carried.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// A Bearer token service in the proxy: `GET /token` (with these basic
/// credentials, if any) gives `tok-N`, which the proxy accepts for `valid`
/// and announces as lasting `expires_in` seconds.
#[derive(Clone)]
pub(crate) struct TokenService {
    pub(crate) user_pass: Option<(String, String)>,
    /// OAuth2: `POST /token` with `grant_type=refresh_token` and this
    /// refresh token (an identity token) also gives a token.
    pub(crate) refresh_token: Option<String>,
    pub(crate) expires_in: u64,
    pub(crate) valid: Duration,
}

/// What the proxy does; counters apply to the next GETs under `/v2/` that
/// are not for `/v2/` itself, then fall to zero.
#[derive(Default)]
pub(crate) struct Faults {
    pub(crate) too_many: AtomicU32,
    pub(crate) unavailable: AtomicU32,
    pub(crate) close: AtomicU32,
    /// Answer 403 to the next GETs that carry `Range` (an object store's
    /// signed URL that expired, seen when a read resumes).
    pub(crate) forbid_ranged: AtomicU32,
    pub(crate) ignore_range: AtomicBool,
    /// Cut the first blob response after this many body bytes.
    pub(crate) cut_blob_at: Mutex<Option<u64>>,
    /// Stop sending the first blob response after this many body bytes,
    /// keeping the connection open (for two minutes).
    pub(crate) stall_blob_at: Mutex<Option<u64>>,
    /// Flip the bits of the body byte at this offset of the first blob
    /// response over 64 KiB (a layer, not a config).
    pub(crate) flip_blob_at: Mutex<Option<u64>>,
    /// The same, in the first partial (206) response over 64 KiB for a blob
    /// other than the one named (a pack, not the metadata blob).
    pub(crate) flip_range_at: Mutex<Option<(u64, String)>>,
    /// Send blob GETs to `http://127.0.0.1:PORT` (same path) with a 307.
    pub(crate) redirect_blobs_to: Mutex<Option<u16>>,
    pub(crate) delay: Mutex<Duration>,
    pub(crate) token: Mutex<Option<TokenService>>,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) at: Instant,
    /// `GET /v2/...`.
    pub(crate) line: String,
    pub(crate) authorization: Option<String>,
    pub(crate) range: Option<String>,
    /// The status the proxy answered (0: closed without answering).
    pub(crate) status: u16,
}

pub(crate) struct FaultProxy {
    pub(crate) port: u16,
    pub(crate) faults: Arc<Faults>,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
    /// Tokens issued, with when.
    issued: Arc<Mutex<Vec<(String, Instant)>>>,
    /// Requests that carried an issued token past its validity.
    pub(crate) stale_tokens: Arc<AtomicU32>,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

fn reply(c: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn base64(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl FaultProxy {
    /// Listens on `host` (a 127.x address), forwarding to the registry at
    /// 127.0.0.1:`upstream`.
    pub(crate) fn start_on(host: &str, upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind((host, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = FaultProxy {
            port,
            faults: Arc::default(),
            seen: Arc::default(),
            issued: Arc::default(),
            stale_tokens: Arc::default(),
        };
        let (faults, seen, issued, stale) = (
            Arc::clone(&p.faults),
            Arc::clone(&p.seen),
            Arc::clone(&p.issued),
            Arc::clone(&p.stale_tokens),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (faults, seen, issued, stale) = (
                    Arc::clone(&faults),
                    Arc::clone(&seen),
                    Arc::clone(&issued),
                    Arc::clone(&stale),
                );
                std::thread::spawn(move || {
                    let conn = Conn {
                        upstream,
                        port,
                        faults: &faults,
                        seen: &seen,
                        issued: &issued,
                        stale: &stale,
                    };
                    conn.serve(client);
                });
            }
        });
        p
    }

    pub(crate) fn start(upstream: u16) -> FaultProxy {
        Self::start_on("127.0.0.1", upstream)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn tokens_issued(&self) -> usize {
        self.issued.lock().unwrap().len()
    }
}

struct Conn<'a> {
    upstream: u16,
    port: u16,
    faults: &'a Faults,
    seen: &'a Mutex<Vec<Seen>>,
    issued: &'a Mutex<Vec<(String, Instant)>>,
    stale: &'a AtomicU32,
}

impl Conn<'_> {
    /// Answers requests on one client connection until it closes (every
    /// answer closes it, so one request).
    fn serve(&self, mut client: TcpStream) {
        // A TLS handshake: answer as a plain HTTP server does.
        let mut first = [0u8; 1];
        if client.peek(&mut first).is_ok() && first[0] == 0x16 {
            let _ = client.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nplain HTTP here\n");
            return;
        }
        let Some(head) = read_head(&mut client) else {
            return;
        };
        let text = String::from_utf8_lossy(&head).into_owned();
        let line = text.lines().next().unwrap_or("").to_owned();
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        let mut seen = Seen {
            at: Instant::now(),
            line: line.clone(),
            authorization: header(&text, "authorization").map(str::to_owned),
            range: header(&text, "range").map(str::to_owned),
            status: 0,
        };
        let status = self.answer(&mut client, &text, &line, &path);
        seen.status = status;
        self.seen.lock().unwrap().push(seen);
        let _ = client.shutdown(Shutdown::Both);
    }

    fn answer(&self, client: &mut TcpStream, text: &str, line: &str, path: &str) -> u16 {
        let f = self.faults;
        // Latency after the request is judged (a token checked on arrival).
        let delay = *f.delay.lock().unwrap();
        let token = f.token.lock().unwrap().clone();
        if let (Some(t), true) = (&token, path.starts_with("/token")) {
            if line.starts_with("POST ") {
                let len: usize = header(text, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len.min(1 << 16)];
                let _ = client.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body).into_owned();
                let pairs: Vec<(&str, &str)> = body
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .collect();
                let granted = t.refresh_token.as_deref().is_some_and(|r| {
                    pairs.contains(&("grant_type", "refresh_token"))
                        && pairs.contains(&("refresh_token", r))
                });
                if !granted {
                    std::thread::sleep(delay);
                    reply(client, "401 Unauthorized", "", "{}");
                    return 401;
                }
            } else if let Some((u, p)) = &t.user_pass {
                let want = format!("Basic {}", base64(&format!("{u}:{p}")));
                if header(text, "authorization") != Some(want.as_str()) {
                    std::thread::sleep(delay);
                    reply(
                        client,
                        "401 Unauthorized",
                        "",
                        r#"{"details":"bad credentials"}"#,
                    );
                    return 401;
                }
            }
            let mut issued = self.issued.lock().unwrap();
            let value = format!("tok-{}", issued.len());
            issued.push((value.clone(), Instant::now()));
            drop(issued);
            let now = Command::new("date")
                .arg("-u")
                .arg("+%Y-%m-%dT%H:%M:%S.%NZ")
                .output()
                .unwrap();
            let now = String::from_utf8(now.stdout).unwrap();
            let body = format!(
                "{{\"token\":\"{value}\",\"expires_in\":{},\"issued_at\":\"{}\"}}",
                t.expires_in,
                now.trim()
            );
            std::thread::sleep(delay);
            reply(client, "200 OK", "", &body);
            return 200;
        }
        if let Some(t) = &token {
            let valid = header(text, "authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|v| {
                    let issued = self.issued.lock().unwrap();
                    issued.iter().find(|(t, _)| t == v).map(|(_, at)| *at)
                });
            let ok = match valid {
                Some(at) if at.elapsed() <= t.valid => true,
                Some(_) => {
                    self.stale.fetch_add(1, Ordering::SeqCst);
                    false
                }
                None => false,
            };
            std::thread::sleep(delay);
            if !ok {
                let challenge = format!(
                    "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{}/token\",\
                     service=\"fault-proxy\",scope=\"repository:lib/base:pull\"\r\n",
                    self.port
                );
                reply(client, "401 Unauthorized", &challenge, "{}");
                return 401;
            }
        }
        if token.is_none() {
            std::thread::sleep(delay);
        }
        let faultable = line.starts_with("GET /v2/") && path != "/v2/";
        if faultable && take(&f.too_many) {
            reply(client, "429 Too Many Requests", "Retry-After: 1\r\n", "{}");
            return 429;
        }
        if faultable && take(&f.unavailable) {
            reply(client, "503 Service Unavailable", "", "{}");
            return 503;
        }
        if faultable && take(&f.close) {
            return 0;
        }
        if faultable && header(text, "range").is_some() && take(&f.forbid_ranged) {
            reply(client, "403 Forbidden", "", "{}");
            return 403;
        }
        let blob = faultable && path.contains("/blobs/");
        if let Some(port) = f.redirect_blobs_to.lock().unwrap().filter(|_| blob) {
            let loc = format!("Location: http://127.0.0.1:{port}{path}\r\n");
            reply(client, "307 Temporary Redirect", &loc, "");
            return 307;
        }
        self.forward(client, text, blob)
    }

    /// Sends the request upstream (without `Range` if told so) and relays
    /// the answer, cut short once if told so.
    fn forward(&self, client: &mut TcpStream, text: &str, blob: bool) -> u16 {
        let f = self.faults;
        let drop_range = f.ignore_range.load(Ordering::SeqCst);
        let mut req = String::new();
        for l in text.split("\r\n").filter(|l| !l.is_empty()) {
            let name = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if name == "connection" || (drop_range && name == "range") {
                continue;
            }
            req.push_str(l);
            req.push_str("\r\n");
        }
        req.push_str("Connection: close\r\n\r\n");
        let Ok(mut up) = TcpStream::connect(("127.0.0.1", self.upstream)) else {
            return 0;
        };
        if up.write_all(req.as_bytes()).is_err() {
            return 0;
        }
        let Some(head) = read_head(&mut up) else {
            return 0;
        };
        let head = String::from_utf8_lossy(&head).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut out = String::new();
        for l in head.split("\r\n").filter(|l| !l.is_empty()) {
            if !l.to_ascii_lowercase().starts_with("connection:") {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        if client.write_all(out.as_bytes()).is_err() {
            return status;
        }
        // Only a blob longer than the cut (not the config).
        let length: u64 = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let cut = {
            let mut cut = f.cut_blob_at.lock().unwrap();
            match *cut {
                Some(n) if blob && length > n => cut.take(),
                _ => None,
            }
        };
        // The first blob response over `min` bytes and longer than n.
        let once = |slot: &Mutex<Option<u64>>, min: u64| {
            let mut slot = slot.lock().unwrap();
            match *slot {
                Some(n) if blob && length > n.max(min) => slot.take(),
                _ => None,
            }
        };
        if let Some(n) = once(&f.stall_blob_at, 0) {
            let _ = std::io::copy(&mut (&mut up).take(n), client);
            let _ = client.flush();
            std::thread::sleep(Duration::from_secs(120));
            return status;
        }
        let flip = match once(&f.flip_blob_at, 64 << 10) {
            Some(n) => Some(n),
            None if status == 206 => {
                let first = text.lines().next().unwrap_or("");
                let mut slot = f.flip_range_at.lock().unwrap();
                match &*slot {
                    Some((n, skip))
                        if blob
                            && length > (*n).max(64 << 10)
                            && !first.contains(skip.as_str()) =>
                    {
                        slot.take().map(|(n, _)| n)
                    }
                    _ => None,
                }
            }
            None => None,
        };
        if let Some(n) = flip {
            let _ = std::io::copy(&mut (&mut up).take(n), client);
            let mut byte = [0u8; 1];
            if up.read_exact(&mut byte).is_ok() {
                let _ = client.write_all(&[!byte[0]]);
            }
            let _ = std::io::copy(&mut up, client);
            return status;
        }
        match cut {
            Some(n) => {
                let _ = std::io::copy(&mut (&mut up).take(n), client);
            }
            None => {
                let _ = std::io::copy(&mut up, client);
            }
        }
        status
    }
}

#[test]
fn base64_matches_the_standard() {
    assert_eq!(base64("user:pa:ss"), "dXNlcjpwYTpzcw==");
    assert_eq!(base64("a:b"), "YTpi");
    assert_eq!(base64("ab"), "YWI=");
}
