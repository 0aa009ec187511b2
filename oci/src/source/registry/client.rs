//! A blocking HTTP client for one repository of a registry (distribution
//! API v2): anonymous, Bearer token or basic authentication, retries,
//! size-capped document reads, and blob streams that resume after a
//! dropped connection.

use std::{
    collections::HashMap,
    io::{self, Read},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use reqwest::{
    blocking::{Client as Http, RequestBuilder, Response},
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE},
    StatusCode,
};
use serde::Deserialize;

use crate::error::{Error, Result};

use super::{
    auth::{self, Challenge},
    creds::{self, Credentials, Secret},
    options::ClientOptions,
    reference::RegistryRef,
    retry::{parse_retry_after, random},
    stream::BlobStream,
};

/// One repository of a registry. Every request goes through
/// [`Client::send_with`], which adds authentication (answering challenges,
/// refreshing tokens before they expire, re-authenticating once when a
/// cached one is refused) and retries (429, 502, 503, 504, dropped
/// connections; jittered backoff honouring `Retry-After`).
pub(crate) struct Client {
    http: Http,
    /// For GET and HEAD: with the idle read deadline.
    reads: Http,
    pub(crate) r: RegistryRef,
    /// `http(s)://HOST/v2/REPO/`.
    base: String,
    pub(crate) opts: ClientOptions,
    /// Looked up at the first challenge (a helper is run only if asked).
    creds: OnceLock<Option<Credentials>>,
    /// The scopes tokens are asked for: `repository:REPO:pull` unless
    /// [`Client::with_actions`] or [`Client::add_scope`] say more.
    scopes: Mutex<Vec<String>>,
    auth: Mutex<AuthState>,
    /// Where the registry redirected a blob's GET to another host (object
    /// storage), by the blob's URL: later reads of that blob go there
    /// directly, until that host refuses or fails them.
    redirects: Mutex<HashMap<String, reqwest::Url>>,
}

/// What the registry asked for, and the tokens earned.
#[derive(Default)]
struct AuthState {
    scheme: Option<Scheme>,
    /// By the scopes asked for (space-joined).
    tokens: HashMap<String, CachedToken>,
}

#[derive(Clone)]
enum Scheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        /// The challenge's own scope, asked for with ours.
        scope: Option<String>,
    },
}

struct CachedToken {
    value: String,
    /// When to fetch a new one: before it expires, by a margin of a fifth
    /// of its life (at most 30 s).
    refresh_at: Instant,
}

/// The Authorization value of one try, and whether it came from a cache
/// (a refused cached token is worth one more try with a fresh one).
struct Sent {
    value: Option<String>,
    cached: bool,
}

fn net_error(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::io(what, io::Error::other(e))
}

/// A failed request as one line: reqwest's error and its causes, and what
/// to check.
fn send_error(r: &RegistryRef, base: &str, e: &reqwest::Error) -> Error {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    let hint = if base.starts_with("http:") {
        "check that a registry listens there (plain HTTP)"
    } else {
        "check the host name and the network (registries other than loopback ones are \
         spoken to over HTTPS; --tls-verify=false allows plain HTTP and unverified \
         certificates, --cert-dir DIR adds CA certificates)"
    };
    Error::io(
        r.to_string(),
        io::Error::other(format!(
            "cannot reach the registry {} ({msg}); {hint}",
            r.api_host()
        )),
    )
}

/// Whether a failed send is worth another try: the connection failed or
/// dropped. A request with a body that is not idempotent is tried again
/// only if it never connected.
fn retryable(e: &reqwest::Error, idempotent: bool) -> bool {
    e.is_connect() || (idempotent && (e.is_request() || e.is_timeout() || e.is_body()))
}

fn retryable_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 502 | 503 | 504)
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
    pub(crate) fn with_options(r: RegistryRef, opts: &ClientOptions) -> Result<Self> {
        let http = opts.http_client()?;
        let reads = opts.read_client()?;
        // Loopback registries are spoken to in plain HTTP unless --cert-dir
        // (HTTPS) or --tls-verify=false (HTTPS if it answers) says otherwise.
        let base = if r.plain_http() && opts.cert_dir.is_none() && !opts.insecure {
            r.base_url_with("http")
        } else if opts.insecure {
            // HTTPS if it answers at all, else plain HTTP.
            let https = r.base_url_with("https");
            let probe = http
                .get(format!("https://{}/v2/", r.api_host()))
                .timeout(Duration::from_secs(10))
                .send();
            if probe.is_ok() {
                https
            } else {
                r.base_url_with("http")
            }
        } else {
            r.base_url_with("https")
        };
        let scopes = vec![format!("repository:{}:pull", r.repo)];
        Ok(Client {
            http,
            reads,
            r,
            base,
            opts: opts.clone(),
            creds: OnceLock::new(),
            scopes: Mutex::new(scopes),
            auth: Mutex::new(AuthState::default()),
            redirects: Mutex::new(HashMap::new()),
        })
    }

    /// Tokens for this repository carry `actions` (`&["pull", "push"]` to
    /// push) instead of pull only.
    pub(crate) fn with_actions(self, actions: &[&str]) -> Self {
        let scope = format!("repository:{}:{}", self.r.repo, actions.join(","));
        *lock(&self.scopes) = vec![scope];
        self
    }

    /// Tokens also carry `scope` (e.g. `repository:OTHER:pull` to mount a
    /// blob from another repository). Cached tokens for fewer scopes are
    /// not used again.
    pub(crate) fn add_scope(&self, scope: &str) {
        let mut s = lock(&self.scopes);
        if !s.iter().any(|x| x == scope) {
            s.push(scope.to_owned());
        }
    }

    /// `BASE` + `tail`, e.g. `blobs/sha256:...`.
    pub(crate) fn url(&self, tail: &str) -> String {
        format!("{}{tail}", self.base)
    }

    fn creds(&self) -> Result<Option<&Credentials>> {
        if let Some(c) = self.creds.get() {
            return Ok(c.as_ref());
        }
        let found = creds::credentials_for(
            &self.r.host,
            self.opts.creds.as_ref(),
            self.opts.authfile.as_deref(),
        )
        .map_err(|e| Error::Invalid(format!("{}: {e}", self.r)))?;
        Ok(self.creds.get_or_init(|| found).as_ref())
    }

    /// Sends the request `build` makes (called again for each try), with
    /// authentication and retries. Returns any other status; callers judge
    /// it. `idempotent`: whether a request that may have reached the
    /// registry can be sent again (GET, HEAD, PUT).
    /// [`Client::send_with`] for a download: the answer and each read of its
    /// body have the idle read deadline.
    pub(crate) fn send_read(&self, build: &dyn Fn(&Http) -> RequestBuilder) -> Result<Response> {
        self.send_with(&self.reads, true, build)
    }

    /// The HTTP client for `method`: a GET or HEAD has the read deadline.
    pub(crate) fn http_for(&self, method: &reqwest::Method) -> &Http {
        if matches!(*method, reqwest::Method::GET | reqwest::Method::HEAD) {
            &self.reads
        } else {
            &self.http
        }
    }

    /// Sends the request `build` makes with `http` (called again for each
    /// try), with authentication and retries. Returns any other status;
    /// callers judge it. `idempotent`: whether a request that may have
    /// reached the registry can be sent again (GET, HEAD, PUT).
    pub(crate) fn send_with(
        &self,
        http: &Http,
        idempotent: bool,
        build: &dyn Fn(&Http) -> RequestBuilder,
    ) -> Result<Response> {
        let started = Instant::now();
        let mut answered_challenge = false;
        loop {
            let sent = self.authorization()?;
            let resp = self.retrying(started, idempotent, &|| {
                let mut req = build(http);
                if let Some(a) = &sent.value {
                    req = req.header(AUTHORIZATION, a);
                }
                req.send()
            })?;
            let status = resp.status();
            if status == StatusCode::BAD_REQUEST && self.base.starts_with("http:") {
                return self.plain_to_https(resp);
            }
            let refused = status == StatusCode::UNAUTHORIZED
                || (status == StatusCode::FORBIDDEN && sent.value.is_some());
            if !refused {
                return Ok(resp);
            }
            if answered_challenge || (sent.value.is_some() && !sent.cached) {
                return Err(self.refused(status));
            }
            answered_challenge = true;
            self.learn(&resp, sent.value.is_some())?;
        }
    }

    /// A 400 to plain HTTP: an HTTPS-only server (Go's answers "Client sent
    /// an HTTP request to an HTTPS server") is one line with the fix; a
    /// registry's own 400 (JSON) is passed on.
    fn plain_to_https(&self, resp: Response) -> Result<Response> {
        if resp.headers().contains_key(CONTENT_TYPE)
            && !resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/plain"))
        {
            return Ok(resp);
        }
        let mut body = Vec::new();
        let _ = resp.take(4 << 10).read_to_end(&mut body);
        let text = String::from_utf8_lossy(&body);
        let why = if text.contains("HTTPS") {
            format!(
                "the registry {} speaks HTTPS only and loopback registries are spoken to \
                 in plain HTTP; give its CA certificate with --cert-dir DIR (as DIR/ca.crt) \
                 to use HTTPS, or --tls-verify=false to not verify its certificate",
                self.r.api_host()
            )
        } else {
            format!(
                "the registry {} answered 400 in plain HTTP ({}); check that it is a \
                 registry",
                self.r.api_host(),
                text.trim()
                    .escape_debug()
                    .to_string()
                    .chars()
                    .take(100)
                    .collect::<String>()
            )
        };
        Err(Error::io(self.r.to_string(), io::Error::other(why)))
    }

    /// GETs `url` (from byte `from` on, with `Range`, if not 0).
    pub(crate) fn get(&self, url: &str, accept: Option<&str>, from: u64) -> Result<Response> {
        let range = (from > 0).then(|| format!("bytes={from}-"));
        let Some(accept) = accept else {
            return self.get_blob(url, range);
        };
        self.send_read(&|http| with_range(http.get(url).header(ACCEPT, accept), &range))
    }

    /// GETs bytes `start..=end` of `url` with one single-range `Range`
    /// header. Returns any status; callers judge it (a 200 means the registry
    /// ignored the range and sends the whole blob).
    pub(crate) fn get_range(&self, url: &str, start: u64, end: u64) -> Result<Response> {
        self.get_blob(url, Some(format!("bytes={start}-{end}")))
    }

    /// GETs a blob (`range`: a `Range` value), from where the registry last
    /// redirected it to if that was another host. The registry is asked
    /// again (and the redirect forgotten) when that host answers anything
    /// but success, e.g. a 403 for a signed URL that expired, or fails.
    fn get_blob(&self, url: &str, range: Option<String>) -> Result<Response> {
        let cached = lock(&self.redirects).get(url).cloned();
        if let Some(to) = cached {
            match with_range(self.reads.get(to), &range).send() {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                _ => {
                    lock(&self.redirects).remove(url);
                }
            }
        }
        let resp = self.send_read(&|http| with_range(http.get(url), &range))?;
        let other_host =
            reqwest::Url::parse(url).is_ok_and(|asked| resp.url().origin() != asked.origin());
        if resp.status().is_success() && other_host {
            lock(&self.redirects).insert(url.to_owned(), resp.url().clone());
        }
        Ok(resp)
    }

    /// Tries `send` until it gets an answer that is not 429/502/503/504, or
    /// the retry policy gives up (then the last answer or error is the
    /// result).
    fn retrying(
        &self,
        started: Instant,
        idempotent: bool,
        send: &dyn Fn() -> reqwest::Result<Response>,
    ) -> Result<Response> {
        let policy = &self.opts.retry;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (retry_after, result) = match send() {
                Ok(resp) if retryable_status(resp.status()) => {
                    let after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    (after, Ok(resp))
                }
                Ok(resp) => return Ok(resp),
                Err(e) if retryable(&e, idempotent) => (None, Err(e)),
                Err(e) => return Err(send_error(&self.r, &self.base, &e)),
            };
            match policy.next_wait(attempt, started.elapsed(), retry_after, random()) {
                Some(wait) => std::thread::sleep(wait),
                None => return result.map_err(|e| send_error(&self.r, &self.base, &e)),
            }
        }
    }

    /// The Authorization value for the next try: basic credentials, or the
    /// token for our scopes (fetched again when close to expiring).
    fn authorization(&self) -> Result<Sent> {
        let scheme = lock(&self.auth).scheme.clone();
        match scheme {
            None => Ok(Sent {
                value: None,
                cached: false,
            }),
            Some(Scheme::Basic) => Ok(Sent {
                value: Some(self.basic_value()?),
                cached: false,
            }),
            Some(Scheme::Bearer {
                realm,
                service,
                scope,
            }) => {
                let scopes = self.scopes_with(scope.as_deref());
                let key = scopes.join(" ");
                if let Some(t) = lock(&self.auth).tokens.get(&key) {
                    if Instant::now() < t.refresh_at {
                        return Ok(Sent {
                            value: Some(format!("Bearer {}", t.value)),
                            cached: true,
                        });
                    }
                }
                let value = self.fetch_token(&realm, service.as_deref(), &scopes)?;
                Ok(Sent {
                    value: Some(format!("Bearer {value}")),
                    cached: false,
                })
            }
        }
    }

    fn scopes_with(&self, challenge: Option<&str>) -> Vec<String> {
        let mut scopes = lock(&self.scopes).clone();
        if let Some(c) = challenge.filter(|c| !c.is_empty()) {
            if !scopes.iter().any(|s| s == c) {
                scopes.push(c.to_owned());
            }
        }
        scopes
    }

    /// Takes in a 401's challenge (or, for a refused cached token, forgets
    /// the tokens) so that the next try authenticates afresh.
    fn learn(&self, resp: &Response, had_auth: bool) -> Result<()> {
        let challenge = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(auth::parse_challenge);
        let mut state = lock(&self.auth);
        state.tokens.clear();
        match challenge {
            Some(Challenge::Basic) => state.scheme = Some(Scheme::Basic),
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                state.scheme = Some(Scheme::Bearer {
                    realm,
                    service,
                    scope,
                })
            }
            // A 403 to a cached token: the same scheme, a new token.
            None if had_auth && state.scheme.is_some() => {}
            None => {
                drop(state);
                return Err(
                    self.denied("it asks for an authentication scheme puzzle does not speak")
                );
            }
        }
        Ok(())
    }

    fn basic_value(&self) -> Result<String> {
        match self.creds()? {
            Some(Credentials {
                user,
                secret: Secret::Password(p),
                ..
            }) => Ok(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{p}"))
            )),
            Some(c) => Err(self.denied(&format!(
                "it asks for a password and {} holds an identity token",
                c.from
            ))),
            None => Err(self.denied("it asks for a user name and password")),
        }
    }

    /// The fix for refused credentials, naming where they came from.
    fn refused(&self, status: StatusCode) -> Error {
        let from = match self.creds.get() {
            Some(Some(c)) => format!("the credentials from {}", c.from),
            _ => "anonymous access".to_owned(),
        };
        self.denied(&format!("it refused {from} ({})", status.as_u16()))
    }

    pub(crate) fn denied(&self, why: &str) -> Error {
        Error::NotFound(format!(
            "{}: access denied, {why}; give credentials with --creds USER:PASS or \
             --authfile FILE, or log in with `skopeo login {}` or `docker login {}` \
             (puzzle reads --creds, --authfile, $REGISTRY_AUTH_FILE, containers' \
             auth.json, then ~/.docker/config.json)",
            self.r, self.r.host, self.r.host
        ))
    }

    /// Runs the Bearer token flow against `realm` for `scopes` and caches
    /// the token.
    fn fetch_token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<String> {
        let bad_realm = |why: String| {
            Error::Invalid(format!(
                "{}: bad token realm {:?} in the registry's challenge{why}",
                self.r,
                realm.chars().take(200).collect::<String>()
            ))
        };
        let mut url = reqwest::Url::parse(realm).map_err(|e| bad_realm(format!(": {e}")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(bad_realm(String::new()));
        }
        let creds = self.creds()?.cloned();
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            params.push(("service", s));
        }
        for s in scopes {
            params.push(("scope", s));
        }
        let what = format!("the token service of {}", self.r.host);
        let started = Instant::now();
        let resp = match &creds {
            // OAuth2: a refresh token is exchanged by POST.
            Some(Credentials {
                secret: Secret::IdentityToken(t),
                ..
            }) => {
                let mut form = params.clone();
                form.extend([
                    ("grant_type", "refresh_token"),
                    ("client_id", "puzzle"),
                    ("refresh_token", t.as_str()),
                ]);
                let body = reqwest::Url::parse_with_params("http://x/", &form)
                    .map_err(|e| bad_realm(format!(": {e}")))?
                    .query()
                    .unwrap_or("")
                    .to_owned();
                self.retrying(started, true, &|| {
                    self.http
                        .post(url.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body.clone())
                        .send()
                })?
            }
            _ => {
                url.query_pairs_mut().extend_pairs(&params);
                self.retrying(started, true, &|| {
                    let mut req = self.http.get(url.clone());
                    if let Some(Credentials {
                        user,
                        secret: Secret::Password(p),
                        ..
                    }) = &creds
                    {
                        req = req.basic_auth(user, Some(p));
                    }
                    req.send()
                })?
            }
        };
        if !resp.status().is_success() {
            let status = describe_status(resp);
            let from = match &creds {
                Some(c) => format!("the credentials from {}", c.from),
                None => "anonymous access".to_owned(),
            };
            return Err(self.denied(&format!("its token service refused {from} ({status})")));
        }
        let body = read_capped(resp, super::super::MAX_JSON_BYTES, &what)?;
        let token = auth::parse_token(&body)
            .ok_or_else(|| Error::Invalid(format!("{what} answered without a token")))?;
        // Capped: a token "for years" is still asked for again daily.
        let life = token
            .lifetime(SystemTime::now())
            .min(Duration::from_secs(86_400));
        let margin = (life / 5).min(Duration::from_secs(30));
        lock(&self.auth).tokens.insert(
            scopes.join(" "),
            CachedToken {
                value: token.value.clone(),
                refresh_at: Instant::now() + life - margin,
            },
        );
        Ok(token.value)
    }

    /// A manifest (or index) by tag or digest: its bytes and content type.
    pub(crate) fn manifest(&self, reference: &str, accept: &str) -> Result<(Vec<u8>, String)> {
        let url = self.url(&format!("manifests/{reference}"));
        let resp = self.get(&url, Some(accept), 0)?;
        if retryable_status(resp.status()) {
            let status = describe_status(resp);
            return Err(net_error(
                &self.r.to_string(),
                format!(
                    "manifest {reference}: the registry still answered {status} after \
                     retrying; try again later"
                ),
            ));
        }
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
        BlobStream::new(Arc::clone(self), self.url(&format!("blobs/{digest}")), size)
    }
}

/// `req` with a `Range` header if `range` holds one.
fn with_range(req: RequestBuilder, range: &Option<String>) -> RequestBuilder {
    match range {
        Some(r) => req.header(RANGE, r),
        None => req,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
