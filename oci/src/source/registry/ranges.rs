//! A registry's blobs as a [`BlobRead`]: byte ranges fetched with HTTP
//! `Range` requests, for `puzzle pull` (docs/FORMAT.md, "Pull").
//!
//! [`open_remote`] fetches a manifest by tag or digest and returns it with a
//! [`RegistryBlobs`] over the blobs it names. `read_ranges` sorts the ranges
//! it is given and coalesces neighbours (at most [`gap`] bytes apart, at most
//! [`request_cap`] bytes per request) into one single-range request each:
//! registries refuse multi-range requests or answer them with the whole
//! blob. A registry that ignores `Range` (200 instead of 206) sends the whole
//! blob; the ranges are then cut from that one stream.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use puzzle_store::blobs::{short_blob, BlobRead};
use puzzle_store::manifest::{MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use puzzle_store::BlobDigest;
use reqwest::header::CONTENT_RANGE;
use reqwest::StatusCode;

use crate::error::{Error, Result};

use super::client::{describe_status, Client};
use super::options::ClientOptions;
use super::reference::{Reference, RegistryRef};
use super::stream::range_start;

/// Ranges at most this far apart go in one request: fetching the gap costs
/// less than another round trip (about 6 ms even on loopback; 64 KiB is
/// about 5 ms at 100 Mbit/s). Benchmarks may replace it with the
/// environment variable `PUZZLE_RANGE_GAP` (see [`gap`]).
pub const GAP: u64 = 64 << 10;

/// Most bytes one request asks for, gaps included (a single range longer
/// than this is asked for alone). Keeps the buffer of a request bounded and
/// a retried request cheap. Benchmarks may replace it with the environment
/// variable `PUZZLE_RANGE_CAP` (see [`request_cap`]).
pub const REQUEST_CAP: u64 = 8 << 20;

/// The gap requests coalesce across: [`GAP`], or `PUZZLE_RANGE_GAP` (bytes)
/// when that is set to a number, read once per process. A knob for
/// benchmarks (benches/README.md), not a user setting.
pub fn gap() -> u64 {
    static GAP_BYTES: OnceLock<u64> = OnceLock::new();
    *GAP_BYTES.get_or_init(|| bench_knob("PUZZLE_RANGE_GAP", GAP, 0))
}

/// The most bytes one request asks for: [`REQUEST_CAP`], or
/// `PUZZLE_RANGE_CAP` (bytes, at least 1) when that is set to a number,
/// read once per process. A knob for benchmarks, not a user setting. Lazy
/// mounts cut their fetch batches and read-ahead at it too.
pub fn request_cap() -> u64 {
    static CAP_BYTES: OnceLock<u64> = OnceLock::new();
    *CAP_BYTES.get_or_init(|| bench_knob("PUZZLE_RANGE_CAP", REQUEST_CAP, 1))
}

/// The number of bytes the variable `name` holds, or `default` when it is
/// absent, not a number or below `min`.
fn bench_knob(name: &str, default: u64, min: u64) -> u64 {
    knob_value(std::env::var(name).ok().as_deref(), default, min)
}

fn knob_value(value: Option<&str>, default: u64, min: u64) -> u64 {
    value
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v >= min)
        .unwrap_or(default)
}

/// Attempts at one request (a dropped connection or a short body) before
/// giving up.
const ATTEMPTS: u32 = 3;

/// What [`RegistryBlobs`] sent and received so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Range requests sent (retries included).
    pub requests: u64,
    /// Response body bytes received for them.
    pub bytes: u64,
    /// Requests the registry answered with the whole blob (200).
    pub whole_blobs: u64,
}

/// The blobs a manifest of a registry repository names, read by range.
pub struct RegistryBlobs {
    client: Arc<Client>,
    sizes: HashMap<BlobDigest, u64>,
    requests: AtomicU64,
    bytes: AtomicU64,
    whole: AtomicU64,
}

/// A manifest fetched from a registry, and its blobs.
pub struct RemoteImage {
    /// The reference as given (what follows `docker://`), normalized.
    pub reference: String,
    /// The manifest's bytes, as the registry sent them.
    pub manifest: Vec<u8>,
    /// Their SHA-256 (checked against the reference when it is a digest).
    pub digest: BlobDigest,
    pub blobs: RegistryBlobs,
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// Fetches the manifest `reference` (what follows `docker://`) names. An
/// image index is refused: a puzzle image is one manifest.
pub fn open_remote(reference: &str, opts: &ClientOptions) -> Result<RemoteImage> {
    let r = RegistryRef::parse(reference)?;
    let client = Arc::new(Client::with_options(r.clone(), opts)?);
    let (bytes, media_type) = client.manifest(r.reference.as_str(), ACCEPT)?;
    let digest = BlobDigest::of(&bytes);
    if let Reference::Digest(d) = &r.reference {
        if d != &digest.to_string() {
            return Err(Error::DigestMismatch {
                what: format!("manifest of {r}"),
                expected: d.clone(),
                actual: digest.to_string(),
            });
        }
    }
    #[derive(serde::Deserialize)]
    struct Loose {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        #[serde(default)]
        config: Option<Desc>,
        #[serde(default)]
        layers: Vec<Desc>,
    }
    #[derive(serde::Deserialize)]
    struct Desc {
        digest: String,
        size: u64,
    }
    let loose: Option<Loose> = serde_json::from_slice(&bytes).ok();
    let is_index = media_type == MEDIA_TYPE_INDEX
        || media_type.contains("manifest.list")
        || loose
            .as_ref()
            .is_some_and(|l| l.media_type == MEDIA_TYPE_INDEX);
    if is_index {
        return Err(Error::Invalid(format!(
            "{r} is an image index, not a puzzle image (puzzle pull takes a manifest \
             `puzzle push` wrote; `puzzle build {r}` converts a plain image)"
        )));
    }
    let mut sizes = HashMap::new();
    if let Some(l) =
        loose.filter(|l| l.media_type.is_empty() || l.media_type == MEDIA_TYPE_MANIFEST)
    {
        for d in l.config.iter().chain(&l.layers) {
            if let Ok(digest) = d.digest.parse::<BlobDigest>() {
                sizes.insert(digest, d.size);
            }
        }
    }
    Ok(RemoteImage {
        reference: r.to_string(),
        manifest: bytes,
        digest,
        blobs: RegistryBlobs::new(client, sizes),
    })
}

/// Ranges of a batch, by their index, grouped into requests: sorted by
/// offset, a range joins the request before it when it starts at most
/// `gap` bytes past its end and the request stays within `cap` bytes.
/// Returns `(start, end, members)` per request.
pub fn coalesce(ranges: &[(u64, u64)], gap: u64, cap: u64) -> Vec<(u64, u64, Vec<usize>)> {
    let mut order: Vec<usize> = (0..ranges.len()).filter(|&i| ranges[i].1 > 0).collect();
    order.sort_by_key(|&i| (ranges[i].0, ranges[i].1));
    let mut out: Vec<(u64, u64, Vec<usize>)> = Vec::new();
    for i in order {
        let (start, len) = ranges[i];
        let end = start + len;
        match out.last_mut() {
            Some((s, e, members)) if start <= e.saturating_add(gap) && end.max(*e) - *s <= cap => {
                *e = end.max(*e);
                members.push(i);
            }
            _ => out.push((start, end, vec![i])),
        }
    }
    out
}

impl RegistryBlobs {
    /// The blobs of `client`'s repository listed in `sizes` (the others
    /// are missing).
    fn new(client: Arc<Client>, sizes: HashMap<BlobDigest, u64>) -> Self {
        RegistryBlobs {
            client,
            sizes,
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            whole: AtomicU64::new(0),
        }
    }

    /// What was sent and received so far.
    pub fn transfer(&self) -> Transfer {
        Transfer {
            requests: self.requests.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            whole_blobs: self.whole.load(Ordering::Relaxed),
        }
    }

    fn url(&self, digest: &BlobDigest) -> String {
        self.client.url(&format!("blobs/{digest}"))
    }

    fn net(&self, digest: &BlobDigest, why: String) -> puzzle_store::Error {
        puzzle_store::Error::Io {
            path: PathBuf::from(self.url(digest)),
            source: io::Error::other(why),
        }
    }

    /// Fetches `start..end` of `digest`: its bytes, first of the returned
    /// bodies. On a 200 (the registry ignored the range) the whole blob
    /// comes: the requests of `rest` (later, sorted) are served from the
    /// same body, their bytes following in the returned list.
    fn fetch(
        &self,
        digest: &BlobDigest,
        start: u64,
        end: u64,
        rest: &[(u64, u64)],
    ) -> puzzle_store::Result<Vec<Vec<u8>>> {
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let resp = self
                .client
                .get_range(&self.url(digest), start, end - 1)
                .map_err(|e| self.net(digest, puzzle_store::error::line(&e)))?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Err(puzzle_store::Error::BlobMissing {
                    digest: digest.to_string(),
                });
            }
            let whole = status == StatusCode::OK;
            if status == StatusCode::PARTIAL_CONTENT {
                let at = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range_start);
                if at != Some(start) {
                    return Err(self.net(
                        digest,
                        format!("the registry answered a Range from {start} with {at:?}"),
                    ));
                }
            } else if !whole {
                let status = describe_status(resp);
                return Err(self.net(digest, format!("the registry answered {status}")));
            }
            if whole {
                self.whole.fetch_add(1, Ordering::Relaxed);
            }
            let mut body = resp.take(if whole { u64::MAX } else { end - start });
            let mut read = |skip_to: u64, pos: &mut u64, n: u64| -> io::Result<Vec<u8>> {
                if whole {
                    let skipped = io::copy(&mut (&mut body).take(skip_to - *pos), &mut io::sink())?;
                    self.bytes.fetch_add(skipped, Ordering::Relaxed);
                    *pos += skipped;
                    if *pos < skip_to {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                let mut buf = vec![0u8; n as usize];
                let mut got = 0;
                while got < buf.len() {
                    match body.read(&mut buf[got..]) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(k) => got += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                self.bytes.fetch_add(n, Ordering::Relaxed);
                *pos += n;
                Ok(buf)
            };
            let mut pos = 0u64;
            let first = match read(start, &mut pos, end - start) {
                Ok(b) => b,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            if !whole {
                return Ok(vec![first]);
            }
            let mut more = Vec::with_capacity(rest.len() + 1);
            more.push(first);
            let mut failed = None;
            for &(s, e) in rest {
                // Requests may overlap only if ranges did; they are sorted.
                if s < pos {
                    failed = Some(format!("overlapping requests at {s}"));
                    break;
                }
                match read(s, &mut pos, e - s) {
                    Ok(b) => more.push(b),
                    Err(err) => {
                        failed = Some(err.to_string());
                        break;
                    }
                }
            }
            match failed {
                None => return Ok(more),
                Some(why) => last = why,
            }
        }
        Err(self.net(
            digest,
            format!("reading bytes {start}..{end} failed {ATTEMPTS} times: {last}"),
        ))
    }
}

impl BlobRead for RegistryBlobs {
    fn size(&self, digest: &BlobDigest) -> puzzle_store::Result<u64> {
        self.sizes
            .get(digest)
            .copied()
            .ok_or_else(|| puzzle_store::Error::BlobMissing {
                digest: digest.to_string(),
            })
    }

    fn read_at(
        &self,
        digest: &BlobDigest,
        offset: u64,
        buf: &mut [u8],
    ) -> puzzle_store::Result<()> {
        self.read_ranges(digest, &mut [(offset, buf)])
    }

    fn read_ranges(
        &self,
        digest: &BlobDigest,
        ranges: &mut [(u64, &mut [u8])],
    ) -> puzzle_store::Result<()> {
        let size = self.size(digest)?;
        for (off, buf) in ranges.iter() {
            if off
                .checked_add(buf.len() as u64)
                .is_none_or(|end| end > size)
            {
                return Err(short_blob(digest, *off, buf.len(), size));
            }
        }
        let spans: Vec<(u64, u64)> = ranges
            .iter()
            .map(|(off, buf)| (*off, buf.len() as u64))
            .collect();
        let requests = coalesce(&spans, gap(), request_cap());
        let mut i = 0;
        while i < requests.len() {
            let (start, end, _) = &requests[i];
            let rest: Vec<(u64, u64)> = requests[i + 1..].iter().map(|r| (r.0, r.1)).collect();
            let bodies = self.fetch(digest, *start, *end, &rest)?;
            let served = bodies.len();
            for ((s, _, members), body) in requests[i..i + served].iter().zip(bodies) {
                for &m in members {
                    let (off, buf) = &mut ranges[m];
                    let at = (*off - s) as usize;
                    let n = buf.len();
                    buf.copy_from_slice(&body[at..at + n]);
                }
            }
            i += served;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_knobs_fall_back_to_the_constants() {
        assert_eq!(knob_value(None, GAP, 0), GAP);
        assert_eq!(knob_value(Some("1048576"), GAP, 0), 1 << 20);
        assert_eq!(knob_value(Some(" 0 "), GAP, 0), 0);
        assert_eq!(knob_value(Some("1M"), GAP, 0), GAP);
        assert_eq!(knob_value(Some("-1"), GAP, 0), GAP);
        assert_eq!(knob_value(Some("0"), REQUEST_CAP, 1), REQUEST_CAP);
    }

    #[test]
    fn neighbours_coalesce_within_the_gap_and_cap() {
        // Out of order; 0 and 1 touch, 2 is within the gap of 1, 3 is past it.
        let r = [(100, 50), (0, 100), (150 + GAP, 10), (160 + 2 * GAP + 1, 5)];
        let got = coalesce(&r, GAP, REQUEST_CAP);
        assert_eq!(
            got,
            vec![
                (0, 160 + GAP, vec![1, 0, 2]),
                (160 + 2 * GAP + 1, 165 + 2 * GAP + 1, vec![3])
            ]
        );
        // The cap splits a run of touching ranges.
        let r: Vec<(u64, u64)> = (0..5).map(|i| (i * 1000, 1000)).collect();
        let got = coalesce(&r, GAP, 2500);
        let spans: Vec<(u64, u64)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(spans, vec![(0, 2000), (2000, 4000), (4000, 5000)]);
        // Overlapping ranges share a request; empty ranges ask for nothing.
        let got = coalesce(&[(10, 100), (50, 20), (7, 0)], 0, REQUEST_CAP);
        assert_eq!(got, vec![(10, 110, vec![0, 1])]);
    }

    /// A registry serving `blobs` of repository `t` on 127.0.0.1, answering
    /// a Range with 206, or with the whole blob (200) when `ignore_range`.
    fn serve(blobs: Vec<(BlobDigest, Vec<u8>)>, ignore_range: bool) -> u16 {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let blobs: Arc<HashMap<String, Vec<u8>>> =
            Arc::new(blobs.into_iter().map(|(d, b)| (d.to_string(), b)).collect());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let blobs = Arc::clone(&blobs);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut out = conn;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split(' ').nth(1).unwrap_or("").to_string();
                        let mut range = None;
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).unwrap();
                            if h.trim().is_empty() {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                                let (a, b) = v.trim().split_once('-').unwrap();
                                range = Some((
                                    a.parse::<usize>().unwrap(),
                                    b.parse::<usize>().unwrap(),
                                ));
                            }
                        }
                        let digest = path.rsplit('/').next().unwrap();
                        let (status, extra, body): (&str, String, &[u8]) = match blobs.get(digest) {
                            None => ("404 Not Found", String::new(), b"{}"),
                            Some(b) => match range.filter(|_| !ignore_range) {
                                Some((a, z)) => (
                                    "206 Partial Content",
                                    format!("Content-Range: bytes {a}-{z}/{}\r\n", b.len()),
                                    &b[a..=z],
                                ),
                                None => ("200 OK", String::new(), &b[..]),
                            },
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if out.write_all(head.as_bytes()).is_err() || out.write_all(body).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn blobs_at(port: u16, listed: &[(BlobDigest, Vec<u8>)]) -> RegistryBlobs {
        let r = RegistryRef::parse(&format!("127.0.0.1:{port}/t:x")).unwrap();
        let client = Arc::new(Client::with_options(r, &ClientOptions::default()).unwrap());
        let sizes = listed.iter().map(|(d, b)| (*d, b.len() as u64)).collect();
        RegistryBlobs::new(client, sizes)
    }

    /// The shared suite, against a registry answering ranges with 206 and
    /// one that ignores them (200, the whole blob).
    #[test]
    fn registry_blobs_conform_with_or_without_range_support() {
        let all = puzzle_store::blobs::conformance::blobs();
        let present = all[..all.len() - 1].to_vec();
        for ignore in [false, true] {
            let port = serve(present.clone(), ignore);
            let blobs = blobs_at(port, &present);
            puzzle_store::blobs::conformance::check(&blobs);
            let t = blobs.transfer();
            assert_eq!(t.whole_blobs > 0, ignore, "{t:?}");
        }
    }

    /// Neighbouring ranges cost one request; ranges far apart one each.
    #[test]
    fn neighbouring_ranges_share_a_request() {
        let big: Vec<u8> = (0..(GAP as usize * 4)).map(|i| (i % 251) as u8).collect();
        let d = BlobDigest::of(&big);
        let listed = vec![(d, big.clone())];
        for ignore in [false, true] {
            let blobs = blobs_at(serve(listed.clone(), ignore), &listed);
            let spots = [
                (0usize, 100usize),
                (100 + GAP as usize, 50),
                (3 * GAP as usize, 10),
            ];
            let mut bufs: Vec<Vec<u8>> = spots.iter().map(|&(_, n)| vec![0; n]).collect();
            let mut ranges: Vec<(u64, &mut [u8])> = spots
                .iter()
                .zip(bufs.iter_mut())
                .map(|(&(o, _), b)| (o as u64, b.as_mut_slice()))
                .collect();
            blobs.read_ranges(&d, &mut ranges).unwrap();
            for ((o, n), b) in spots.iter().zip(&bufs) {
                assert!(b[..] == big[*o..o + n]);
            }
            let t = blobs.transfer();
            if ignore {
                // One whole blob, cut up: the later request is never sent.
                assert_eq!((t.requests, t.whole_blobs), (1, 1), "{t:?}");
                assert_eq!(t.bytes, 3 * GAP + 10, "{t:?}");
            } else {
                assert_eq!(t.requests, 2, "{t:?}");
                assert_eq!(t.bytes, 100 + GAP + 50 + 10, "{t:?}");
            }
        }
    }
}
