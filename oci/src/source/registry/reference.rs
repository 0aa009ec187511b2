//! Registry references: `[HOST[:PORT]/]REPO[:TAG|@DIGEST]`, as skopeo's
//! `docker://` transport takes them.

use std::fmt;

use crate::error::{Error, Result};

use super::super::digest::{parse_sha256, shorten};

/// Docker Hub as written in references, and where its API really is.
pub(crate) const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed `docker://` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RegistryRef {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub host: String,
    /// Repository path, e.g. `library/debian`.
    pub repo: String,
    /// A tag, or a `sha256:` digest.
    pub reference: Reference,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    Tag(String),
    Digest(String),
}

impl Reference {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) | Reference::Digest(t) => t,
        }
    }
}

/// Whether the first path component names a registry rather than a
/// repository (Docker's rule: it has a '.' or a ':', or is `localhost`).
fn is_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_repo(repo: &str) -> bool {
    !repo.is_empty()
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn valid_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `name[:port]`, `name` a DNS name or IPv4 address, or `[IPv6][:port]`.
fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => (&host[..i], Some(&host[i + 1..])),
        _ => (host, None),
    };
    let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    name_ok && port_ok
}

impl RegistryRef {
    /// Parses what follows `docker://`. A name without a registry host is on
    /// Docker Hub, and a one-component Docker Hub name is under `library/`;
    /// without a tag or digest the tag is `latest`.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid registry reference docker://{}: {why} \
                 (expected docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST])",
                shorten(s).trim_matches('"')
            ))
        };
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                parse_sha256(d).map_err(|_| bad("the digest is not sha256:<64 hex>"))?;
                (n, Some(d))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag (one before is a port).
        let (name, tag) = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        let (host, repo) = match name.split_once('/') {
            Some((h, r)) if is_host(h) => (h.to_owned(), r.to_owned()),
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_host(&host) {
            return Err(bad("bad registry host"));
        }
        let host = if host == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            host
        };
        let repo = if host == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if !valid_repo(&repo) {
            return Err(bad(
                "the repository must be lowercase [a-z0-9._-] components",
            ));
        }
        let reference = match (tag, digest) {
            (Some(t), _) if !valid_tag(t) => return Err(bad("bad tag")),
            // `REPO:TAG@DIGEST`: the digest decides (as docker does).
            (_, Some(d)) => Reference::Digest(d.to_owned()),
            (Some(t), None) => Reference::Tag(t.to_owned()),
            (None, None) => Reference::Tag("latest".to_owned()),
        };
        Ok(RegistryRef {
            host,
            repo,
            reference,
        })
    }

    /// `host[:port]` that serves the registry API.
    pub(crate) fn api_host(&self) -> &str {
        if self.host == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.host
        }
    }

    /// Loopback registries are spoken to in plain HTTP (like a local
    /// `docker-registry`); every other one over HTTPS with verified TLS.
    pub(crate) fn plain_http(&self) -> bool {
        let host = match self.host.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.host,
        };
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
    }

    /// `http(s)://HOST/v2/REPO/` under which manifests and blobs are (the
    /// default scheme; the client may choose plain HTTP for others).
    #[allow(dead_code)] // the client picks its scheme; kept for other callers
    pub(crate) fn base_url(&self) -> String {
        let scheme = if self.plain_http() { "http" } else { "https" };
        self.base_url_with(scheme)
    }

    pub(crate) fn base_url_with(&self, scheme: &str) -> String {
        format!("{scheme}://{}/v2/{}/", self.api_host(), self.repo)
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "docker://{}/{}", self.host, self.repo)?;
        match &self.reference {
            Reference::Tag(t) => write!(f, ":{t}"),
            Reference::Digest(d) => write!(f, "@{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parts(s: &str) -> (String, String, Reference) {
        let r = RegistryRef::parse(s).unwrap();
        (r.host, r.repo, r.reference)
    }

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.into())
    }

    #[test]
    fn bare_names_are_docker_hub_library() {
        assert_eq!(
            parts("debian"),
            ("docker.io".into(), "library/debian".into(), tag("latest"))
        );
        assert_eq!(
            parts("debian:bookworm"),
            ("docker.io".into(), "library/debian".into(), tag("bookworm"))
        );
        assert_eq!(
            parts("bitnami/redis:7"),
            ("docker.io".into(), "bitnami/redis".into(), tag("7"))
        );
        assert_eq!(
            parts("docker.io/python:3"),
            ("docker.io".into(), "library/python".into(), tag("3"))
        );
        assert_eq!(
            parts("index.docker.io/library/python"),
            ("docker.io".into(), "library/python".into(), tag("latest"))
        );
        let r = RegistryRef::parse("debian").unwrap();
        assert_eq!(
            r.base_url(),
            "https://registry-1.docker.io/v2/library/debian/"
        );
        assert_eq!(r.to_string(), "docker://docker.io/library/debian:latest");
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        assert_eq!(
            parts("127.0.0.1:5000/lib/python3:1"),
            ("127.0.0.1:5000".into(), "lib/python3".into(), tag("1"))
        );
        assert_eq!(
            parts("localhost/x"),
            ("localhost".into(), "x".into(), tag("latest"))
        );
        assert_eq!(
            parts(&format!("quay.io/a/b@{D}")),
            ("quay.io".into(), "a/b".into(), Reference::Digest(D.into()))
        );
        assert_eq!(
            parts(&format!("quay.io/a/b:t@{D}")).2,
            Reference::Digest(D.into())
        );
        let r = RegistryRef::parse("127.0.0.1:5000/lib/python3:1").unwrap();
        assert!(r.plain_http());
        assert_eq!(r.base_url(), "http://127.0.0.1:5000/v2/lib/python3/");
        assert!(!RegistryRef::parse("quay.io/a").unwrap().plain_http());
        assert!(RegistryRef::parse("localhost:5000/a").unwrap().plain_http());
        assert!(RegistryRef::parse("[::1]:5000/a").unwrap().plain_http());
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "Upper/case",
            "quay.io/",
            "quay.io//x",
            "x:",
            "x:bad/tag",
            "x@sha256:abc",
            "x@md5:0",
            "host:5000/x:t:u",
            "x:-t",
            "[::1/x",
        ] {
            match RegistryRef::parse(bad) {
                Err(Error::Invalid(m)) => assert!(m.contains("docker://"), "{bad}: {m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
