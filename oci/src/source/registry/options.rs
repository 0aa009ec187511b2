//! How to talk to registries: credentials, TLS and retries, as the command
//! line gives them (skopeo's and podman's flag names).

use std::{path::PathBuf, time::Duration};

use reqwest::{
    blocking::Client as Http,
    tls::{Certificate, Identity},
};

use crate::error::{Error, Result};

pub use super::retry::RetryPolicy;

/// Options for the registry client (`docker://` sources).
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// `--creds USER:PASS`: used before any auth file.
    pub creds: Option<(String, String)>,
    /// `--authfile FILE`: read before `$REGISTRY_AUTH_FILE` and the default
    /// auth files.
    pub authfile: Option<PathBuf>,
    /// `--tls-verify=false`: plain HTTP allowed for any registry (tried
    /// after HTTPS, loopback ones included) and certificates not checked.
    pub insecure: bool,
    /// `--cert-dir DIR`: `*.crt` files are extra CA certificates, a
    /// `NAME.cert` with a `NAME.key` a client certificate (docker's
    /// `certs.d` layout). Loopback registries, spoken to in plain HTTP by
    /// default, are spoken to over HTTPS when it is given.
    pub cert_dir: Option<PathBuf>,
    /// How long a download (a GET or HEAD) may wait for the answer or for
    /// its next bytes before the connection is given up and the request
    /// tried again (blobs resume with `Range`); `None`:
    /// [`DEFAULT_READ_TIMEOUT`]. Uploads have no such deadline.
    pub read_timeout: Option<Duration>,
    pub retry: RetryPolicy,
}

/// The idle deadline of downloads when [`ClientOptions::read_timeout`] is
/// not given.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field(
                "creds",
                &self.creds.as_ref().map(|(u, _)| format!("{u}:***")),
            )
            .field("authfile", &self.authfile)
            .field("insecure", &self.insecure)
            .field("cert_dir", &self.cert_dir)
            .field("read_timeout", &self.read_timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

/// Splits `--creds USER:PASS` at the first ':'.
pub fn parse_creds(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_owned(), p.to_owned())),
        _ => Err("expected USER:PASSWORD (the password after the first ':')".to_owned()),
    }
}

fn cert_error(path: &std::path::Path, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "--cert-dir: {}: {why}; it must hold PEM *.crt CA certificates and \
         NAME.cert/NAME.key client pairs",
        path.display()
    ))
}

/// The extra CAs and the client identity in a `--cert-dir`.
fn load_cert_dir(dir: &std::path::Path) -> Result<(Vec<Certificate>, Option<Identity>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| cert_error(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| cert_error(p, e));
    let mut cas = Vec::new();
    let mut identity = None;
    for p in &names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => {
                let certs =
                    Certificate::from_pem_bundle(&read(p)?).map_err(|e| cert_error(p, e))?;
                if certs.is_empty() {
                    return Err(cert_error(p, "no PEM certificate in it"));
                }
                cas.extend(certs);
            }
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(cert_error(p, format!("no {} beside it", key.display())));
                }
                if identity.is_some() {
                    return Err(cert_error(p, "more than one client certificate"));
                }
                // rustls takes the certificate and its key in one PEM.
                let mut both = read(p)?;
                both.push(b'\n');
                both.extend(read(&key)?);
                identity = Some(Identity::from_pem(&both).map_err(|e| cert_error(p, e))?);
            }
            Some("key") if !p.with_extension("cert").exists() => {
                return Err(cert_error(p, "a key without its NAME.cert"));
            }
            _ => {}
        }
    }
    Ok((cas, identity))
}

impl ClientOptions {
    /// The HTTP client these options ask for. Redirects are followed (blob
    /// GETs are often sent to object storage) with reqwest's default policy,
    /// which drops `Authorization` when the host, port or scheme changes
    /// (pinned by a test).
    pub(crate) fn http_client(&self) -> Result<Http> {
        self.client_with(None)
    }

    /// The client for downloads (GET, HEAD): waiting for an answer and each
    /// read of its body are bounded by the read timeout (reqwest's blocking
    /// `timeout` is per read, not for the whole body; it would bound a
    /// whole request body's send, which is why uploads use the other).
    pub(crate) fn read_client(&self) -> Result<Http> {
        self.client_with(Some(self.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT)))
    }

    fn client_with(&self, timeout: Option<Duration>) -> Result<Http> {
        // reqwest is built without a TLS crypto provider of its own: use
        // ring's (an error means one is installed already). Deprecated only
        // for lacking post-quantum key exchange; aws-lc-rs, which has it,
        // is a large C build.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = Http::builder()
            // The blocking client's default 30 s would cut off large
            // uploads; without one only connecting is bounded.
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("puzzle/", env!("CARGO_PKG_VERSION")));
        if self.insecure {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        if let Some(dir) = &self.cert_dir {
            let (cas, identity) = load_cert_dir(dir)?;
            for c in cas {
                b = b.add_root_certificate(c);
            }
            if let Some(id) = identity {
                b = b.identity(id);
            }
        }
        b.build()
            .map_err(|e| Error::io("the HTTP client", std::io::Error::other(e.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_split_at_the_first_colon() {
        assert_eq!(parse_creds("u:p:q"), Ok(("u".into(), "p:q".into())));
        assert_eq!(parse_creds("u:"), Ok(("u".into(), String::new())));
        assert!(parse_creds("u").is_err());
        assert!(parse_creds(":p").is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let o = ClientOptions {
            creds: Some(("alice".into(), "hunter2".into())),
            ..ClientOptions::default()
        };
        let text = format!("{o:?} {o:#?}");
        assert!(
            text.contains("alice") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn cert_dir_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "not pem").unwrap();
        let o = ClientOptions {
            cert_dir: Some(dir.path().into()),
            ..ClientOptions::default()
        };
        let e = o.http_client().err().unwrap().to_string();
        assert!(e.contains("ca.crt"), "{e}");
        std::fs::remove_file(dir.path().join("ca.crt")).unwrap();
        std::fs::write(dir.path().join("me.cert"), "x").unwrap();
        let e = o.http_client().err().unwrap().to_string();
        assert!(e.contains("me.key"), "{e}");
        std::fs::remove_file(dir.path().join("me.cert")).unwrap();
        o.http_client().unwrap();
        let missing = ClientOptions {
            cert_dir: Some(dir.path().join("nope")),
            ..ClientOptions::default()
        };
        assert!(missing.http_client().is_err());
    }
}
