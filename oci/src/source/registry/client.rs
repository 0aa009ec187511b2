//! A blocking HTTP client for one repository of a registry (distribution
//! API v2): anonymous, Bearer token or basic authentication, size-capped
//! document reads, and blob streams that resume after a dropped connection.

use std::{
    io::{self, Read},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use reqwest::{
    blocking::{Client as Http, Response},
    header::{ACCEPT, AUTHORIZATION, CONTENT_RANGE, RANGE, WWW_AUTHENTICATE},
    StatusCode,
};
use serde::Deserialize;

use crate::error::{Error, Result};

use super::{
    auth::{self, Challenge, Credentials},
    reference::RegistryRef,
};

/// Consecutive failed attempts at a blob (connect or read) before giving up.
const MAX_ATTEMPTS: u32 = 5;

/// One repository of a registry.
pub(crate) struct Client {
    pub(super) http: Http,
    pub(crate) r: RegistryRef,
    pub(super) creds: Option<Credentials>,
    /// The `Authorization` value earned from the last challenge.
    pub(super) auth: Mutex<Option<String>>,
}

fn net_error(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::io(what, io::Error::other(e))
}

/// A failed request as one line: reqwest's error and its causes, and what
/// to check.
pub(super) fn send_error(r: &RegistryRef, e: &reqwest::Error) -> Error {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    let hint = if r.plain_http() {
        "check that a registry listens there (plain HTTP: it is a loopback address)"
    } else {
        "check the host name and the network (registries other than loopback ones are spoken to over HTTPS)"
    };
    Error::io(
        r.to_string(),
        io::Error::other(format!(
            "cannot reach the registry {} ({msg}); {hint}",
            r.api_host()
        )),
    )
}

/// The registry's JSON error body, for the codes in messages.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    code: Option<String>,
}

/// `404 (MANIFEST_UNKNOWN)`: the status and the registry's error codes.
pub(crate) fn describe_status(resp: Response) -> String {
    let status = resp.status();
    let mut body = Vec::new();
    let _ = resp.take(64 << 10).read_to_end(&mut body);
    let codes: Vec<String> = serde_json::from_slice::<ErrorBody>(&body)
        .map(|b| b.errors.into_iter().filter_map(|e| e.code).collect())
        .unwrap_or_default();
    let codes: Vec<String> = codes
        .iter()
        .map(|c| c.escape_debug().to_string().chars().take(40).collect())
        .collect();
    if codes.is_empty() {
        format!("{}", status.as_u16())
    } else {
        format!("{} ({})", status.as_u16(), codes.join(", "))
    }
}

impl Client {
    pub(crate) fn new(r: RegistryRef) -> Result<Self> {
        // reqwest is built without a TLS crypto provider of its own: use
        // ring's (an error means one is installed already). Deprecated only
        // for lacking post-quantum key exchange; aws-lc-rs, which has it,
        // is a large C build.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = Http::builder()
            // The blocking client's default 30 s total timeout would cut off
            // large layers; only connecting is bounded.
            .timeout(None::<Duration>)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("puzzle/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| net_error("the HTTP client", e))?;
        let creds = auth::credentials_for(&r.host);
        Ok(Client {
            http,
            r,
            creds,
            auth: Mutex::new(None),
        })
    }

    pub(crate) fn url(&self, tail: &str) -> String {
        format!("{}{tail}", self.r.base_url())
    }

    fn send(&self, url: &str, accept: Option<&str>, from: u64) -> reqwest::Result<Response> {
        let mut req = self.http.get(url);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        if from > 0 {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        let auth = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(a) = auth {
            req = req.header(AUTHORIZATION, a);
        }
        req.send()
    }

    /// GETs `url`, answering one authentication challenge if there is one.
    /// Returns any status; callers judge it.
    pub(crate) fn get(&self, url: &str, accept: Option<&str>, from: u64) -> Result<Response> {
        let resp = self
            .send(url, accept, from)
            .map_err(|e| send_error(&self.r, &e))?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        self.answer(&resp, None)?;
        let resp = self
            .send(url, accept, from)
            .map_err(|e| send_error(&self.r, &e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.denied("it refused the credentials"));
        }
        Ok(resp)
    }

    /// Earns the `Authorization` value the challenge of a 401 `resp` asks
    /// for, and keeps it for the next requests. A Bearer challenge that names
    /// no scope gets `default_scope` (push asks for pull and push).
    pub(super) fn answer(&self, resp: &Response, default_scope: Option<String>) -> Result<()> {
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge);
        let value = match challenge {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => format!(
                "Bearer {}",
                self.token(&realm, service, scope.or(default_scope))?
            ),
            Some(Challenge::Basic) => match &self.creds {
                Some(c) => format!("Basic {}", basic(c)),
                None => return Err(self.denied("it asks for a user name and password")),
            },
            None => {
                return Err(
                    self.denied("it asks for an authentication scheme puzzle does not speak")
                )
            }
        };
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }

    /// GETs bytes `start..=end` of `url` with one single-range `Range`
    /// header, answering an authentication challenge as [`Client::get`]
    /// does. Returns any status; callers judge it (a 200 means the registry
    /// ignored the range and sends the whole blob).
    pub(crate) fn get_range(&self, url: &str, start: u64, end: u64) -> Result<Response> {
        let send = || {
            let mut req = self
                .http
                .get(url)
                .header(RANGE, format!("bytes={start}-{end}"));
            let auth = self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            req.send().map_err(|e| send_error(&self.r, &e))
        };
        let resp = send()?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        self.answer(&resp, None)?;
        let resp = send()?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.denied("it refused the credentials"));
        }
        Ok(resp)
    }

    pub(super) fn denied(&self, why: &str) -> Error {
        Error::NotFound(format!(
            "{}: access denied, {why}; log in with `docker login {}` \
             (puzzle reads $REGISTRY_AUTH_FILE or ~/.docker/config.json)",
            self.r, self.r.host
        ))
    }

    /// Runs the Bearer token flow against `realm`.
    pub(super) fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
    ) -> Result<String> {
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.r.repo));
        let mut params = vec![("scope", scope)];
        if let Some(s) = service {
            params.push(("service", s));
        }
        let url = reqwest::Url::parse_with_params(realm, &params)
            .map_err(|e| Error::Invalid(format!("{}: bad token realm {realm:?}: {e}", self.r)))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(Error::Invalid(format!(
                "{}: bad token realm {realm:?}",
                self.r
            )));
        }
        let what = format!("the token service of {}", self.r.host);
        let mut req = self.http.get(url);
        if let Some(c) = &self.creds {
            req = req.basic_auth(&c.user, Some(&c.password));
        }
        let resp = req.send().map_err(|e| send_error(&self.r, &e))?;
        if !resp.status().is_success() {
            let status = describe_status(resp);
            return Err(self.denied(&format!("its token service answered {status}")));
        }
        let body = read_capped(resp, super::super::MAX_JSON_BYTES, &what)?;
        auth::parse_token(&body)
            .ok_or_else(|| Error::Invalid(format!("{what} answered without a token")))
    }

    /// A manifest (or index) by tag or digest: its bytes and content type.
    pub(crate) fn manifest(&self, reference: &str, accept: &str) -> Result<(Vec<u8>, String)> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self.get(&url, Some(accept), 0)?;
        if !resp.status().is_success() {
            let status = describe_status(resp);
            return Err(Error::NotFound(format!(
                "no image {reference} in {}: the registry answered {status}; check the \
                 repository and the tag",
                self.r
            )));
        }
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let what = format!("manifest {reference} of {}", self.r);
        Ok((
            read_capped(resp, super::super::MAX_JSON_BYTES, &what)?,
            media_type,
        ))
    }

    /// A small blob (a config), whole; the caller verifies it.
    pub(crate) fn small_blob(&self, digest: &str, what: &str) -> Result<Vec<u8>> {
        let resp = self.get(&self.url(&format!("blobs/{digest}")), None, 0)?;
        if !resp.status().is_success() {
            let status = describe_status(resp);
            return Err(Error::NotFound(format!(
                "{what}: the registry answered {status}"
            )));
        }
        read_capped(resp, super::super::MAX_JSON_BYTES, what)
    }

    /// Streams a blob of `size` bytes, reconnecting with `Range` after a
    /// dropped connection. The caller checks its digest.
    pub(crate) fn blob_stream(self: &Arc<Self>, digest: &str, size: u64) -> BlobStream {
        BlobStream {
            client: Arc::clone(self),
            url: self.url(&format!("blobs/{digest}")),
            size,
            pos: 0,
            resp: None,
            failures: 0,
        }
    }
}

pub(super) fn basic(c: &Credentials) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.user, c.password))
}

/// Reads a whole response, refusing more than `limit` bytes.
fn read_capped(resp: Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| net_error(what, e))?;
    if buf.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: what.to_owned(),
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// The start offset of a `Content-Range: bytes START-END/TOTAL`.
fn range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A blob's bytes from the registry. A failed connect or a connection that
/// ends before `size` bytes is retried (with a `Range` from where it
/// stopped, or skipping what was read if the registry ignores `Range`) up to
/// [`MAX_ATTEMPTS`] times in a row; nothing is buffered beyond the read.
pub(crate) struct BlobStream {
    client: Arc<Client>,
    url: String,
    size: u64,
    pos: u64,
    resp: Option<Response>,
    failures: u32,
}

impl BlobStream {
    pub(crate) fn url(&self) -> PathBuf {
        PathBuf::from(&self.url)
    }

    fn connect(&self) -> io::Result<Response> {
        let resp = self
            .client
            .get(&self.url, None, self.pos)
            .map_err(io::Error::from)?;
        let status = resp.status();
        if status == StatusCode::PARTIAL_CONTENT {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range_start);
            if start != Some(self.pos) {
                return Err(io::Error::other(format!(
                    "asked for bytes from {} and got Content-Range {start:?}",
                    self.pos
                )));
            }
            return Ok(resp);
        }
        if status.is_success() {
            // The registry ignored Range: skip what was already read.
            let mut resp = resp;
            let skipped = io::copy(&mut (&mut resp).take(self.pos), &mut io::sink())?;
            if skipped != self.pos {
                return Err(io::Error::other(
                    "the response ended before the resume point",
                ));
            }
            return Ok(resp);
        }
        let fatal = status.is_client_error();
        let msg = format!(
            "{}: the registry answered {}",
            self.url,
            describe_status(resp)
        );
        Err(io::Error::new(
            if fatal {
                io::ErrorKind::NotFound
            } else {
                io::ErrorKind::Other
            },
            msg,
        ))
    }

    fn failed(&mut self, e: io::Error) -> io::Result<()> {
        self.resp = None;
        self.failures += 1;
        if self.failures >= MAX_ATTEMPTS || e.kind() == io::ErrorKind::NotFound {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(100 << self.failures));
        Ok(())
    }
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let resp = match &mut self.resp {
                Some(r) => r,
                None if self.pos >= self.size => return Ok(0),
                None => match self.connect() {
                    Ok(r) => self.resp.insert(r),
                    Err(e) => {
                        self.failed(e)?;
                        continue;
                    }
                },
            };
            match resp.read(buf) {
                Ok(0) if self.pos < self.size => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{}: the connection ended at byte {}", self.url, self.pos),
                    );
                    self.failed(e)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) => self.failed(e)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes 0-0/*"), Some(0));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }
}
