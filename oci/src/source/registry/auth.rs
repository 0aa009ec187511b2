//! Registry authentication: `WWW-Authenticate` challenges and the Bearer
//! token response (credentials are found by `creds`).

use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::retry::parse_rfc3339;

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

/// The token endpoint's answer: registries send `token`, `access_token`, or
/// both, and may say how long it lasts.
#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    issued_at: Option<String>,
}

/// A token as the token service gave it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub value: String,
    /// Seconds it is valid for (60 when the service does not say, as the
    /// distribution spec sets).
    pub expires_in: u64,
    /// When the service says it issued it.
    pub issued_at: Option<SystemTime>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(***, {} s)", self.expires_in)
    }
}

/// The lifetime the distribution spec gives a token that states none.
pub(crate) const DEFAULT_EXPIRES_IN: u64 = 60;

/// The token out of a token endpoint's JSON body.
pub(crate) fn parse_token(body: &[u8]) -> Option<Token> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    let value = r
        .token
        .filter(|t| !t.is_empty())
        .or(r.access_token.filter(|t| !t.is_empty()))?;
    // A number (some services send a float); anything else or zero: the
    // default.
    let expires_in = r
        .expires_in
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
        .filter(|&s| s > 0)
        .unwrap_or(DEFAULT_EXPIRES_IN);
    Some(Token {
        value,
        expires_in,
        issued_at: r.issued_at.as_deref().and_then(parse_rfc3339),
    })
}

impl Token {
    /// How long from `now` it stays valid: `expires_in` from its
    /// `issued_at` when that is in the past (time already spent in transit
    /// or a clock ahead of ours counts against it), else from now.
    pub(crate) fn lifetime(&self, now: SystemTime) -> Duration {
        let full = Duration::from_secs(self.expires_in);
        let spent = self
            .issued_at
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::ZERO);
        full.saturating_sub(spent)
    }
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
        let value = |b: &[u8]| parse_token(b).map(|t| t.value);
        assert_eq!(value(br#"{"token":"a"}"#).as_deref(), Some("a"));
        assert_eq!(value(br#"{"access_token":"b"}"#).as_deref(), Some("b"));
        assert_eq!(
            value(br#"{"token":"","access_token":"c","expires_in":300}"#).as_deref(),
            Some("c")
        );
        assert_eq!(parse_token(br#"{"expires_in":300}"#), None);
        assert_eq!(parse_token(b"not json"), None);
    }

    #[test]
    fn token_lifetimes() {
        let t =
            parse_token(br#"{"token":"a","expires_in":300,"issued_at":"2024-05-01T10:00:00Z"}"#)
                .unwrap();
        assert_eq!(t.expires_in, 300);
        let issued = parse_rfc3339("2024-05-01T10:00:00Z").unwrap();
        assert_eq!(t.issued_at, Some(issued));
        assert_eq!(
            t.lifetime(issued + Duration::from_secs(100)),
            Duration::from_secs(200)
        );
        assert_eq!(
            t.lifetime(issued + Duration::from_secs(400)),
            Duration::ZERO
        );
        // Issued "in the future" (a clock behind theirs): the full lifetime.
        assert_eq!(
            t.lifetime(issued - Duration::from_secs(50)),
            Duration::from_secs(300)
        );
        for body in [
            &br#"{"token":"a"}"#[..],
            br#"{"token":"a","expires_in":0}"#,
            br#"{"token":"a","expires_in":"300"}"#,
            br#"{"token":"a","expires_in":-5}"#,
        ] {
            assert_eq!(parse_token(body).unwrap().expires_in, DEFAULT_EXPIRES_IN);
        }
        assert_eq!(
            parse_token(br#"{"token":"a","expires_in":90.5,"issued_at":"garbage"}"#),
            Some(Token {
                value: "a".into(),
                expires_in: 90,
                issued_at: None
            })
        );
        let secret = parse_token(br#"{"token":"s3cret-t0ken"}"#).unwrap();
        assert!(!format!("{secret:?}").contains("s3cret"), "{secret:?}");
    }
}
