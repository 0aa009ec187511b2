//! Pushing to one repository of a registry (distribution API v2): is a blob
//! there (`HEAD`), mount it from another repository, upload it (`POST` then
//! one monolithic `PUT` streaming the file), and put a manifest.
//!
//! Every request goes through [`Client::request`], on top of the client's
//! one path for authentication and retries ([`Client::send_with`]).

use std::{
    fs::File,
    io::{self, Read},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use reqwest::{
    blocking::{Body, Response},
    header::{HeaderName, CONTENT_LENGTH, CONTENT_TYPE, LOCATION},
    Method, StatusCode,
};

use crate::error::{Error, Result};

use super::client::{describe_status, Client};

/// A request body that can be sent again (after an authentication
/// challenge): nothing, bytes, or a file streamed from its start.
pub(crate) enum Payload {
    Empty,
    Bytes(Vec<u8>),
    File {
        path: PathBuf,
        size: u64,
        /// Called with the bytes sent so far.
        sent: Arc<dyn Fn(u64) + Send + Sync>,
        /// Set: the upload fails at its next read.
        cancel: Arc<AtomicBool>,
    },
}

/// What a mount request got.
pub(crate) enum Mounted {
    /// The registry linked the blob from the other repository.
    Yes,
    /// It did not (it lacks it there, or does not mount): upload to this
    /// session instead.
    UploadTo(String),
}

/// A file read with its progress reported and the cancel flag checked.
struct Sending {
    file: File,
    done: u64,
    sent: Arc<dyn Fn(u64) + Send + Sync>,
    cancel: Arc<AtomicBool>,
}

impl Read for Sending {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::SeqCst) {
            // Not `Interrupted`: readers retry that.
            return Err(io::Error::other("interrupted"));
        }
        let n = self.file.read(buf)?;
        self.done += n as u64;
        (self.sent)(self.done);
        Ok(n)
    }
}

impl Payload {
    fn body(&self) -> Result<Option<Body>> {
        Ok(match self {
            Payload::Empty => None,
            Payload::Bytes(b) => Some(Body::from(b.clone())),
            Payload::File {
                path,
                size,
                sent,
                cancel,
            } => {
                let file = File::open(path).map_err(|e| Error::io(path, e))?;
                let reader = Sending {
                    file,
                    done: 0,
                    sent: Arc::clone(sent),
                    cancel: Arc::clone(cancel),
                };
                Some(Body::sized(reader, *size))
            }
        })
    }
}

impl Client {
    /// Sends `method url` with `headers` and `payload` through
    /// [`Client::send_with`] (authentication, retries). A file upload is not
    /// sent again once it may have reached the registry: a cancelled or cut
    /// upload fails at once, and a rerun starts that blob afresh. Returns
    /// any other status; callers judge it.
    pub(crate) fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, String)],
        payload: &Payload,
    ) -> Result<Response> {
        // Opened once here so that a missing file is an error, not an
        // empty body.
        payload.body()?;
        let idempotent = method != Method::POST && !matches!(payload, Payload::File { .. });
        self.send_with(self.http_for(&method), idempotent, &|http| {
            let mut req = http.request(method.clone(), url);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match payload.body().ok().flatten() {
                Some(body) => req.body(body),
                None if method == Method::POST || method == Method::PUT => {
                    req.header(CONTENT_LENGTH, "0")
                }
                None => req,
            }
        })
    }

    /// The error for an unexpected answer to `what` (e.g. "uploading blob
    /// sha256:…"), with what to do for the statuses users meet.
    pub(crate) fn unexpected(&self, what: &str, resp: Response) -> Error {
        let status = resp.status();
        let described = describe_status(resp);
        let repo = format!("repository {} of {}", self.r.repo, self.r.host);
        let hint = match status {
            StatusCode::FORBIDDEN => format!(
                "; the account may not push to {repo}: log in as one that may \
                 (`docker login {}`; puzzle reads $REGISTRY_AUTH_FILE or ~/.docker/config.json)",
                self.r.host
            ),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                "; the registry may be read-only or not accept pushes there".to_owned()
            }
            _ => String::new(),
        };
        Error::Invalid(format!(
            "{}: {what}: the registry answered {described}{hint}",
            self.r
        ))
    }

    /// The size of blob `digest` in this repository; `None` if it is not there.
    pub(crate) fn blob_size(&self, digest: &str) -> Result<Option<u64>> {
        let url = self.url(&format!("blobs/{digest}"));
        let resp = self.request(Method::HEAD, &url, &[], &Payload::Empty)?;
        match resp.status() {
            StatusCode::OK => Ok(resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.unexpected(&format!("looking for blob {digest}"), resp)),
        }
    }

    /// Where an upload session's `Location` points (it may be relative).
    fn location(&self, resp: &Response, what: &str) -> Result<String> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: {what}: the registry started an upload without a Location",
                    self.r
                ))
            })?;
        let base = reqwest::Url::parse(&self.url(""))
            .map_err(|e| Error::Invalid(format!("{}: bad registry URL: {e}", self.r)))?;
        base.join(loc).map(String::from).map_err(|e| {
            Error::Invalid(format!(
                "{}: {what}: bad upload Location {loc:?}: {e}",
                self.r
            ))
        })
    }

    /// Asks the registry to link blob `digest` from repository `from` of
    /// the same registry.
    pub(crate) fn mount(&self, digest: &str, from: &str) -> Result<Mounted> {
        let mut url = reqwest::Url::parse(&self.url("blobs/uploads/"))
            .map_err(|e| Error::Invalid(format!("{}: bad registry URL: {e}", self.r)))?;
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let what = format!("mounting blob {digest} from {from}");
        // A token service must grant pull on the repository mounted from.
        self.add_scope(&format!("repository:{from}:pull"));
        let resp = self.request(Method::POST, url.as_str(), &[], &Payload::Empty)?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mounted::Yes),
            StatusCode::ACCEPTED => Ok(Mounted::UploadTo(self.location(&resp, &what)?)),
            _ => Err(self.unexpected(&what, resp)),
        }
    }

    /// Starts an upload session; returns its URL.
    pub(crate) fn start_upload(&self, digest: &str) -> Result<String> {
        let what = format!("starting the upload of blob {digest}");
        let url = self.url("blobs/uploads/");
        let resp = self.request(Method::POST, &url, &[], &Payload::Empty)?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.unexpected(&what, resp));
        }
        self.location(&resp, &what)
    }

    /// Completes session `session` with the whole blob in one `PUT`.
    pub(crate) fn put_blob(&self, session: &str, digest: &str, payload: &Payload) -> Result<()> {
        let what = format!("uploading blob {digest}");
        let mut url = reqwest::Url::parse(session)
            .map_err(|e| Error::Invalid(format!("{}: {what}: bad upload URL: {e}", self.r)))?;
        url.query_pairs_mut().append_pair("digest", digest);
        let headers = [(CONTENT_TYPE, "application/octet-stream".to_owned())];
        let resp = self.request(Method::PUT, url.as_str(), &headers, payload)?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.unexpected(&what, resp));
        }
        Ok(())
    }

    /// Puts manifest `bytes` of `media_type` under `reference` (a tag or
    /// its digest); returns the `Docker-Content-Digest` the registry gave.
    pub(crate) fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Option<String>> {
        let url = self.url(&format!("manifests/{reference}"));
        let headers = [(CONTENT_TYPE, media_type.to_owned())];
        let resp = self.request(Method::PUT, &url, &headers, &Payload::Bytes(bytes))?;
        if resp.status() != StatusCode::CREATED {
            let status = resp.status();
            let mut e = self.unexpected("putting the manifest", resp);
            if status == StatusCode::BAD_REQUEST {
                if let Error::Invalid(msg) = &mut e {
                    msg.push_str(
                        "; some registries refuse media types they do not know \
                         (puzzle's are application/vnd.puzzle.*): allow them in its configuration",
                    );
                }
            }
            return Err(e);
        }
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned))
    }
}
