//! A blob's bytes as a `Read` that survives dropped connections: it
//! reconnects with `Range` from where it stopped, and skips what it already
//! has when the registry ignores `Range` (answers 200 with the whole blob).

use std::{
    io::{self, Read},
    path::PathBuf,
    sync::Arc,
};

use reqwest::{blocking::Response, header::CONTENT_RANGE, StatusCode};

use super::{
    client::{describe_status, Client},
    retry::random,
};

/// The start offset of a `Content-Range: bytes START-END/TOTAL`.
pub(super) fn range_start(v: &str) -> Option<u64> {
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
/// the retry policy's `max_attempts` times in a row; nothing is buffered beyond the read.
pub(crate) struct BlobStream {
    client: Arc<Client>,
    url: String,
    size: u64,
    pos: u64,
    resp: Option<Response>,
    failures: u32,
}

impl BlobStream {
    pub(crate) fn new(client: Arc<Client>, url: String, size: u64) -> Self {
        BlobStream {
            client,
            url,
            size,
            pos: 0,
            resp: None,
            failures: 0,
        }
    }

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
        let policy = &self.client.opts.retry;
        if self.failures >= policy.max_attempts || e.kind() == io::ErrorKind::NotFound {
            return Err(e);
        }
        std::thread::sleep(policy.backoff(self.failures, random()));
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
