//! Registry flags shared by the commands that talk to registries (`build`
//! from `docker://`; `push` and `pull` take the same), named as skopeo and
//! podman name them, mapped to the library's [`ClientOptions`].

use std::path::PathBuf;

use clap::{ArgAction, Args};
use puzzle_oci::source::{parse_creds, ClientOptions};

/// `USER:PASS` from `--creds`, whose Debug never shows the password.
#[derive(Clone)]
pub struct Creds(String, String);

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Creds({:?}, ***)", self.0)
    }
}

fn creds(s: &str) -> Result<Creds, String> {
    parse_creds(s).map(|(u, p)| Creds(u, p))
}

#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Credentials for a docker:// registry, as USER:PASSWORD. Without it
    /// they are looked up in --authfile, $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json
    /// and ~/.docker/config.json, in that order (credential helpers
    /// included).
    #[arg(long, value_name = "USER:PASSWORD", value_parser = creds)]
    creds: Option<Creds>,
    /// The auth file to read registry credentials from first (containers'
    /// auth.json or docker's config.json format).
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Verify registry TLS certificates and require HTTPS (loopback
    /// registries are spoken to in plain HTTP unless --cert-dir is given);
    /// --tls-verify=false tries HTTPS without checking certificates, then
    /// plain HTTP, for any registry.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    tls_verify: bool,
    /// A directory of registry certificates: *.crt are added as CA
    /// certificates, a NAME.cert with NAME.key is the client certificate.
    /// With it, loopback registries (localhost, 127.0.0.1, [::1]) are
    /// spoken to over HTTPS too.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// How long a download may wait for the registry's answer or its next
    /// bytes before the connection is dropped and tried again (a blob
    /// resumes where it stopped). Uploads have no such deadline.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout: u64,
}

impl RegistryArgs {
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            creds: self.creds.clone().map(|Creds(u, p)| (u, p)),
            authfile: self.authfile.clone(),
            insecure: !self.tls_verify,
            cert_dir: self.cert_dir.clone(),
            read_timeout: Some(std::time::Duration::from_secs(self.read_timeout)),
            ..ClientOptions::default()
        }
    }
}

impl RegistryArgs {
    /// The flags that give a re-executed puzzle (a mount daemon) these
    /// settings, and the `USER:PASSWORD` of `--creds` apart: it must not
    /// show in the daemon's command line.
    pub fn to_args(&self) -> (Vec<std::ffi::OsString>, Option<String>) {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        if let Some(f) = &self.authfile {
            a.extend(["--authfile".into(), f.into()]);
        }
        a.push(format!("--tls-verify={}", self.tls_verify).into());
        if let Some(d) = &self.cert_dir {
            a.extend(["--cert-dir".into(), d.into()]);
        }
        a.extend([
            "--read-timeout".into(),
            self.read_timeout.to_string().into(),
        ]);
        let creds = self.creds.as_ref().map(|Creds(u, p)| format!("{u}:{p}"));
        (a, creds)
    }

    /// Sets `--creds` from `USER:PASSWORD` (what [`RegistryArgs::to_args`]
    /// kept apart).
    pub fn set_creds(&mut self, s: &str) -> Result<(), String> {
        self.creds = Some(creds(s)?);
        Ok(())
    }

    /// The read deadline, in seconds.
    pub fn read_timeout(&self) -> u64 {
        self.read_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        r: RegistryArgs,
    }

    fn parse(args: &[&str]) -> Result<ClientOptions, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.r.options())
    }

    #[test]
    fn flags_map_to_options() {
        let o = parse(&[]).unwrap();
        assert!(!o.insecure && o.creds.is_none() && o.authfile.is_none());
        assert!(parse(&["--tls-verify=false"]).unwrap().insecure);
        assert!(!parse(&["--tls-verify"]).unwrap().insecure);
        assert!(!parse(&["--tls-verify=true"]).unwrap().insecure);
        assert!(parse(&["--tls-verify=maybe"]).is_err());
        let o = parse(&["--creds", "me:p:w", "--authfile", "/a", "--cert-dir", "/c"]).unwrap();
        assert_eq!(o.creds, Some(("me".into(), "p:w".into())));
        assert_eq!(o.authfile, Some("/a".into()));
        assert_eq!(o.cert_dir, Some("/c".into()));
        assert!(parse(&["--creds", "nopassword"]).is_err());
        assert_eq!(o.read_timeout, Some(std::time::Duration::from_secs(60)));
        let o = parse(&["--read-timeout", "3"]).unwrap();
        assert_eq!(o.read_timeout, Some(std::time::Duration::from_secs(3)));
        assert!(parse(&["--read-timeout", "0"]).is_err());
    }

    #[test]
    fn a_daemon_gets_the_same_settings_and_the_password_apart() {
        let t = T::try_parse_from([
            "t",
            "--creds",
            "me:s3cr3t",
            "--authfile",
            "/a",
            "--tls-verify=false",
            "--cert-dir",
            "/c",
            "--read-timeout",
            "7",
        ])
        .unwrap();
        let (args, creds) = t.r.to_args();
        assert!(!args.iter().any(|a| a.to_string_lossy().contains("s3cr3t")));
        let mut again = T::try_parse_from(std::iter::once("t".into()).chain(args)).unwrap();
        again.r.set_creds(&creds.unwrap()).unwrap();
        assert_eq!(
            format!("{:?}", again.r.options()),
            format!("{:?}", t.r.options())
        );
        assert_eq!(again.r.options().creds, t.r.options().creds);
    }

    #[test]
    fn debug_hides_the_password() {
        let t = T::try_parse_from(["t", "--creds", "me:s3cr3t"]).unwrap();
        let text = format!("{t:?}");
        assert!(text.contains("me") && !text.contains("s3cr3t"), "{text}");
    }
}
