//! Registry authentication: `WWW-Authenticate` challenges, the Bearer token
//! response, and basic credentials from a docker `config.json`.

use std::{collections::BTreeMap, path::PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use super::reference::DOCKER_HUB;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Bearer realm="...",service="...",scope="..."`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses a `WWW-Authenticate` value; `None` for schemes we do not speak
/// or a Bearer challenge without a realm.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm").filter(|r| !r.is_empty())?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `key=value` pairs separated by commas; values may be quoted (with `\`
/// escapes) and then contain commas (scopes like `repository:a:pull,push`).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        if !key.trim().is_empty() {
            out.push((key.trim().to_owned(), value.trim_end().to_owned()));
        }
    }
}

/// The token endpoint's answer: registries send `token`, `access_token`, or both.
#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// The token out of a token endpoint's JSON body.
pub(crate) fn parse_token(body: &[u8]) -> Option<String> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    r.token
        .filter(|t| !t.is_empty())
        .or(r.access_token.filter(|t| !t.is_empty()))
}

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The auth file read: `$REGISTRY_AUTH_FILE`, else
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn auth_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return Some(p.into());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".docker/config.json"))
}

/// Basic credentials for `host` from the auth file, if it has some.
/// Credential helpers (`credsStore`) are not run.
pub(crate) fn credentials_for(host: &str) -> Option<Credentials> {
    let bytes = std::fs::read(auth_file()?).ok()?;
    credentials_in(&bytes, host)
}

/// Looks `host` up in a config.json's `auths`: keys may be bare hosts or
/// URLs (`https://index.docker.io/v1/` for Docker Hub).
pub(crate) fn credentials_in(config: &[u8], host: &str) -> Option<Credentials> {
    let config: DockerConfig = serde_json::from_slice(config).ok()?;
    let key_host = |k: &str| -> String {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        let k = k.split('/').next().unwrap_or(k);
        match k {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            k => k.to_owned(),
        }
    };
    let entry = config
        .auths
        .iter()
        .find(|(k, _)| key_host(k) == host)
        .map(|(_, v)| v)?;
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Some(Credentials {
            user: user.clone(),
            password: password.clone(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.auth.as_deref()?.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let h = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#;
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/debian:pull".into()),
            })
        );
        // Commas inside quotes, unquoted values, odd spacing, escapes.
        let h = r#"bearer  scope="repository:a/b:pull,push" , realm=http://127.0.0.1:1/t,service="a\"b""#;
        assert_eq!(
            parse_challenge(h),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("a\"b".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(""), None);
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_some());
    }

    #[test]
    fn token_or_access_token() {
        assert_eq!(parse_token(br#"{"token":"a"}"#).as_deref(), Some("a"));
        assert_eq!(
            parse_token(br#"{"access_token":"b"}"#).as_deref(),
            Some("b")
        );
        assert_eq!(
            parse_token(br#"{"token":"","access_token":"c","expires_in":300}"#).as_deref(),
            Some("c")
        );
        assert_eq!(parse_token(br#"{"expires_in":300}"#), None);
        assert_eq!(parse_token(b"not json"), None);
    }

    #[test]
    fn reads_docker_config_auths() {
        // "user:pa:ss" in base64.
        let config = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000":{"username":"u","password":"p"}}}"#;
        let hub = credentials_in(config, "docker.io").unwrap();
        assert_eq!(
            (hub.user.as_str(), hub.password.as_str()),
            ("user", "pa:ss")
        );
        let local = credentials_in(config, "127.0.0.1:5000").unwrap();
        assert_eq!((local.user.as_str(), local.password.as_str()), ("u", "p"));
        assert_eq!(credentials_in(config, "quay.io"), None);
        assert_eq!(credentials_in(b"{}", "docker.io"), None);
        assert_eq!(
            credentials_in(br#"{"auths":{"quay.io":{"auth":"!!"}}}"#, "quay.io"),
            None
        );
    }
}
