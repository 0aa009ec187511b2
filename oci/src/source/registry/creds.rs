//! Registry credentials, looked up where skopeo and podman look, in their
//! order: `--creds`, `--authfile`, `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config`), then docker's
//! `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`). The first source
//! that knows the registry wins. In a file, a `credHelpers` entry for the
//! registry comes first, then its `auths` entry, then `credsStore`; helpers
//! are run as `docker-credential-NAME get` with the registry on stdin.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

use super::reference::DOCKER_HUB;

/// What proves who we are to a registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Secret {
    Password(String),
    /// An OAuth2 refresh token (a helper's `<token>` user, an auth file's
    /// `identitytoken`), exchanged at the token service.
    IdentityToken(String),
}

/// Credentials and where they came from (for messages).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub user: String,
    pub secret: Secret,
    pub from: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.secret {
            Secret::Password(_) => "password",
            Secret::IdentityToken(_) => "identity token",
        };
        write!(
            f,
            "Credentials({:?}, {kind} ***, from {})",
            self.user, self.from
        )
    }
}

#[derive(Deserialize, Default)]
struct AuthConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Where one auth file entry points: stored credentials or a helper.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    Stored { user: String, secret: Secret },
    Helper(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The registry host an `auths` or `credHelpers` key names: keys may be
/// bare hosts, `host/path` or URLs (`https://index.docker.io/v1/` is
/// Docker Hub).
fn key_host(k: &str) -> &str {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        k => k,
    }
}

/// Looks `host` up in an auth file (containers' auth.json or docker's
/// config.json; the same shape). `Ok(None)` if it does not know the host;
/// `Err` (a message) if it does not parse.
pub(crate) fn lookup(config: &[u8], host: &str) -> std::result::Result<Option<Found>, String> {
    let config: AuthConfig = serde_json::from_slice(config).map_err(|e| e.to_string())?;
    if let Some((_, helper)) = config
        .cred_helpers
        .iter()
        .find(|(k, _)| key_host(k) == host)
    {
        return Ok(Some(Found::Helper(helper.clone())));
    }
    let entry = config.auths.iter().find(|(k, _)| key_host(k) == host);
    if let Some((_, e)) = entry {
        if let Some(found) = stored(e)? {
            return Ok(Some(found));
        }
    }
    Ok(config
        .creds_store
        .filter(|s| !s.is_empty())
        .map(Found::Helper))
}

/// The credentials of one `auths` entry (none if it is empty, as docker
/// leaves them when a `credsStore` holds the secret).
fn stored(e: &AuthEntry) -> std::result::Result<Option<Found>, String> {
    if let Some(t) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        let user = e.username.clone().unwrap_or_default();
        return Ok(Some(Found::Stored {
            user,
            secret: Secret::IdentityToken(t.clone()),
        }));
    }
    if let (Some(user), Some(password)) = (&e.username, &e.password) {
        return Ok(Some(Found::Stored {
            user: user.clone(),
            secret: Secret::Password(password.clone()),
        }));
    }
    let Some(auth) = e.auth.as_deref().filter(|a| !a.trim().is_empty()) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or("an \"auth\" value is not base64 of USER:PASSWORD")?;
    let (user, password) = decoded
        .split_once(':')
        .ok_or("an \"auth\" value is not base64 of USER:PASSWORD")?;
    Ok(Some(Found::Stored {
        user: user.to_owned(),
        secret: Secret::Password(password.to_owned()),
    }))
}

/// A credential helper's answer to `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Parses what `docker-credential-NAME get` printed.
pub(crate) fn parse_helper_answer(out: &[u8]) -> Option<(String, Secret)> {
    let a: HelperAnswer = serde_json::from_slice(out).ok()?;
    if a.secret.is_empty() {
        return None;
    }
    let secret = if a.username == "<token>" {
        Secret::IdentityToken(a.secret)
    } else {
        Secret::Password(a.secret)
    };
    Some((a.username, secret))
}

/// Runs `docker-credential-NAME get` for `host`. `Ok(None)` when the helper
/// says it has nothing for the host.
fn run_helper(name: &str, host: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let fail = |why: String| {
        Error::Invalid(format!(
            "credential helper {program} for {host}: {why}; check the helper \
             (`echo {host} | {program} get`) or log in again"
        ))
    };
    if name.is_empty() || name.contains(['/', '\0']) {
        return Err(fail("bad helper name".into()));
    }
    // Docker Hub's entries are kept under its old v1 URL.
    let server = if host == DOCKER_HUB {
        "https://index.docker.io/v1/"
    } else {
        host
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it ({e})")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot run it ({e})")))?;
    if !out.status.success() {
        // "credentials not found in native keychain" is how helpers say no.
        let said = String::from_utf8_lossy(&out.stdout).to_lowercase()
            + &String::from_utf8_lossy(&out.stderr).to_lowercase();
        if said.contains("not found") {
            return Ok(None);
        }
        return Err(fail(format!("it failed ({})", out.status)));
    }
    let (user, secret) =
        parse_helper_answer(&out.stdout).ok_or_else(|| fail("it printed no Secret".into()))?;
    Ok(Some(Credentials {
        user,
        secret,
        from: format!("credential helper {program}"),
    }))
}

/// The auth files, in the order they are read; `true` for those named by
/// the user (an unreadable one is an error, not skipped).
fn auth_files(authfile: Option<&Path>) -> Vec<(PathBuf, bool)> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let mut files = Vec::new();
    if let Some(f) = authfile {
        files.push((f.to_owned(), true));
    }
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push((f, true));
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        files.push((d.join("containers/auth.json"), false));
    }
    let home = env("HOME");
    if let Some(d) = env("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config"))) {
        files.push((d.join("containers/auth.json"), false));
    }
    if let Some(d) = env("DOCKER_CONFIG").or_else(|| home.as_ref().map(|h| h.join(".docker"))) {
        files.push((d.join("config.json"), false));
    }
    files
}

/// Credentials for `host`: `creds` (from `--creds`) if given, else the
/// first auth file that knows the host.
pub(crate) fn credentials_for(
    host: &str,
    creds: Option<&(String, String)>,
    authfile: Option<&Path>,
) -> Result<Option<Credentials>> {
    if let Some((user, password)) = creds {
        return Ok(Some(Credentials {
            user: user.clone(),
            secret: Secret::Password(password.clone()),
            from: "--creds".into(),
        }));
    }
    for (file, named) in auth_files(authfile) {
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "cannot read the auth file {} ({e}); fix the path or the permissions",
                    file.display()
                )))
            }
        };
        let found = lookup(&bytes, host).map_err(|e| {
            Error::Invalid(format!(
                "the auth file {} is not valid ({e}); fix it or log in again",
                file.display()
            ))
        })?;
        match found {
            None => continue,
            Some(Found::Stored { user, secret }) => {
                return Ok(Some(Credentials {
                    user,
                    secret,
                    from: file.display().to_string(),
                }))
            }
            Some(Found::Helper(name)) => match run_helper(&name, host)? {
                Some(c) => return Ok(Some(c)),
                None => continue,
            },
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(user: &str, password: &str) -> Option<Found> {
        Some(Found::Stored {
            user: user.into(),
            secret: Secret::Password(password.into()),
        })
    }

    #[test]
    fn reads_auths_entries() {
        // "user:pa:ss" in base64.
        let config = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000":{"username":"u","password":"p"},
            "http://reg.example:8080/v2/":{"auth":"YTpi"},
            "quay.io/some/repo":{"identitytoken":"idt"},
            "empty.example":{"auth":""}}}"#;
        assert_eq!(lookup(config, "docker.io"), Ok(stored("user", "pa:ss")));
        assert_eq!(lookup(config, "127.0.0.1:5000"), Ok(stored("u", "p")));
        assert_eq!(lookup(config, "reg.example:8080"), Ok(stored("a", "b")));
        assert_eq!(
            lookup(config, "quay.io"),
            Ok(Some(Found::Stored {
                user: String::new(),
                secret: Secret::IdentityToken("idt".into())
            }))
        );
        assert_eq!(lookup(config, "empty.example"), Ok(None));
        assert_eq!(lookup(config, "ghcr.io"), Ok(None));
        assert_eq!(lookup(b"{}", "docker.io"), Ok(None));
        assert!(lookup(br#"{"auths":{"quay.io":{"auth":"!!"}}}"#, "quay.io").is_err());
        assert!(lookup(b"not json", "quay.io").is_err());
        assert!(lookup(br#"{"auths":[]}"#, "quay.io").is_err());
    }

    #[test]
    fn helpers_come_before_auths_and_store_after() {
        let config = br#"{"auths":{"a.io":{"auth":"YTpi"},"b.io":{}},
            "credHelpers":{"a.io":"pass","registry-1.docker.io":"hub"},
            "credsStore":"desktop"}"#;
        assert_eq!(
            lookup(config, "a.io"),
            Ok(Some(Found::Helper("pass".into())))
        );
        assert_eq!(
            lookup(config, "docker.io"),
            Ok(Some(Found::Helper("hub".into())))
        );
        // An empty auths entry (what docker leaves with a store) and an
        // unknown registry both go to the store.
        assert_eq!(
            lookup(config, "b.io"),
            Ok(Some(Found::Helper("desktop".into())))
        );
        assert_eq!(
            lookup(config, "c.io"),
            Ok(Some(Found::Helper("desktop".into())))
        );
        let config = br#"{"auths":{"a.io":{"auth":"YTpi"}},"credsStore":"desktop"}"#;
        assert_eq!(lookup(config, "a.io"), Ok(stored("a", "b")));
    }

    #[test]
    fn helper_answers() {
        assert_eq!(
            parse_helper_answer(br#"{"ServerURL":"x","Username":"u","Secret":"s"}"#),
            Some(("u".into(), Secret::Password("s".into())))
        );
        assert_eq!(
            parse_helper_answer(br#"{"Username":"<token>","Secret":"rt"}"#),
            Some(("<token>".into(), Secret::IdentityToken("rt".into())))
        );
        assert_eq!(parse_helper_answer(br#"{"Username":"u"}"#), None);
        assert_eq!(parse_helper_answer(b"credentials not found"), None);
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = Credentials {
            user: "me".into(),
            secret: Secret::Password("hunter2".into()),
            from: "--creds".into(),
        };
        let f = Found::Stored {
            user: "me".into(),
            secret: Secret::IdentityToken("refresh-me".into()),
        };
        let text = format!("{c:?} {c:#?} {f:?} {f:#?}");
        assert!(
            !text.contains("hunter2") && !text.contains("refresh-me"),
            "{text}"
        );
        assert!(text.contains("me"), "{text}");
    }
}
