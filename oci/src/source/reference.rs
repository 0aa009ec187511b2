//! Source strings (`oci:DIR[:TAG]`, ...) and platforms (`os/arch[/variant]`).

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use crate::error::{Error, Result};

use super::digest::shorten;

/// Where an image comes from, as written on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceRef {
    /// `oci:DIR[:TAG]`: an OCI image layout directory. `TAG` matches the
    /// `org.opencontainers.image.ref.name` annotation in `index.json` (or is a
    /// `sha256:` manifest digest); without it the index must hold one image.
    OciDir {
        dir: PathBuf,
        reference: Option<String>,
    },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    /// `docker-archive:FILE[:REF]`: `docker save` output. `REF` picks an image
    /// by one of its `RepoTags` (or `@N`, the N-th image) when the archive
    /// holds several.
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    /// `docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST]`: an image in a registry,
    /// as skopeo writes it. Without a host it is on Docker Hub (`debian` is
    /// `docker.io/library/debian:latest`). Loopback hosts (`localhost`,
    /// `127.0.0.1`, `[::1]`) are spoken to in plain HTTP, others over HTTPS.
    /// `reference` is what follows `docker://`, checked but as written.
    Registry { reference: String },
}

const USAGE: &str =
    "expected oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF], docker://REF or an OCI layout directory";

/// Splits `PATH[:REF]`.
///
/// Both paths and references may contain ':', so the file system decides
/// first: the whole string if it exists, else the shortest prefix ending
/// before a ':' that exists. When nothing exists (the open will fail anyway)
/// the split is at the last ':' if what follows has no '/'.
fn split_path_ref(kind: &str, rest: &str) -> Result<(PathBuf, Option<String>)> {
    if rest.is_empty() {
        return Err(Error::Invalid(format!("{kind}: missing path ({USAGE})")));
    }
    let (path, reference) = if Path::new(rest).exists() {
        (rest, None)
    } else if let Some((i, _)) = rest
        .match_indices(':')
        .find(|(i, _)| *i > 0 && Path::new(&rest[..*i]).exists())
    {
        (&rest[..i], Some(&rest[i + 1..]))
    } else {
        match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        }
    };
    if path.is_empty() {
        return Err(Error::Invalid(format!(
            "{kind}{}: missing path ({USAGE})",
            shorten(rest)
        )));
    }
    if reference == Some("") {
        return Err(Error::Invalid(format!(
            "{kind}{}: empty tag after ':'",
            shorten(rest)
        )));
    }
    Ok((PathBuf::from(path), reference.map(str::to_owned)))
}

impl FromStr for SourceRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix("docker://") {
            super::registry::check_reference(rest)?;
            return Ok(SourceRef::Registry {
                reference: rest.to_owned(),
            });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, reference) = split_path_ref("oci:", rest)?;
            return Ok(SourceRef::OciDir { dir, reference });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, reference) = split_path_ref("oci-archive:", rest)?;
            return Ok(SourceRef::OciArchive { file, reference });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, reference) = split_path_ref("docker-archive:", rest)?;
            return Ok(SourceRef::DockerArchive { file, reference });
        }
        let path = Path::new(s);
        // A bare directory is a layout (opening it says so if it is not).
        if !s.is_empty() && path.is_dir() {
            return Ok(SourceRef::OciDir {
                dir: path.to_owned(),
                reference: None,
            });
        }
        if !s.is_empty() && path.is_file() {
            return Err(Error::Invalid(format!(
                "image source {} is a file: name its kind, as oci-archive:{s} or docker-archive:{s}",
                shorten(s)
            )));
        }
        Err(Error::Invalid(format!(
            "unrecognized image source {}: {USAGE}",
            shorten(s)
        )))
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, path, reference) = match self {
            SourceRef::Registry { reference } => return write!(f, "docker://{reference}"),
            SourceRef::OciDir { dir, reference } => ("oci", dir, reference),
            SourceRef::OciArchive { file, reference } => ("oci-archive", file, reference),
            SourceRef::DockerArchive { file, reference } => ("docker-archive", file, reference),
        };
        write!(f, "{kind}:{}", path.display())?;
        if let Some(r) = reference {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

/// The platform to pick from a multi-platform image index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    /// linux/amd64
    fn default() -> Self {
        Platform {
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = Error;

    /// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(Error::Invalid(format!(
                "invalid platform {}: expected os/arch[/variant]",
                shorten(s)
            )));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Whether an image for `os/architecture/variant` runs on this platform.
    /// A missing requested variant accepts any; arm64's variant defaults to v8.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != architecture {
            return false;
        }
        let Some(want) = self.variant.as_deref() else {
            return true;
        };
        let default = (architecture == "arm64").then_some("v8");
        variant.or(default) == Some(want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(dir: &str, reference: Option<&str>) -> SourceRef {
        SourceRef::OciDir {
            dir: dir.into(),
            reference: reference.map(Into::into),
        }
    }

    #[test]
    fn parses_prefixed_sources() {
        let cases: Vec<(&str, SourceRef)> = vec![
            ("oci:./no-such-img", oci("./no-such-img", None)),
            (
                "oci:./no-such-img:latest",
                oci("./no-such-img", Some("latest")),
            ),
            ("oci:/no/such:dir/img", oci("/no/such:dir/img", None)),
            (
                "oci:/no/such:dir/img:v1.2",
                oci("/no/such:dir/img", Some("v1.2")),
            ),
            (
                "oci-archive:/no/such.tar:v1",
                SourceRef::OciArchive {
                    file: "/no/such.tar".into(),
                    reference: Some("v1".into()),
                },
            ),
            (
                "docker-archive:/no/such.tar",
                SourceRef::DockerArchive {
                    file: "/no/such.tar".into(),
                    reference: None,
                },
            ),
            (
                "docker://127.0.0.1:5000/app:2",
                SourceRef::Registry {
                    reference: "127.0.0.1:5000/app:2".into(),
                },
            ),
        ];
        for (s, want) in cases {
            let got: SourceRef = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(got, want, "{s}");
            assert_eq!(got.to_string(), s);
        }
    }

    #[test]
    fn existing_paths_decide_where_the_reference_starts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.tar");
        std::fs::write(&file, b"x").unwrap();
        let f = file.display();
        // A docker reference has ':' and '/' of its own.
        let s = format!("docker-archive:{f}:docker.io/library/alpine:3.19");
        assert_eq!(
            s.parse::<SourceRef>().unwrap(),
            SourceRef::DockerArchive {
                file: file.clone(),
                reference: Some("docker.io/library/alpine:3.19".into()),
            }
        );
        // A path with ':' in it that exists is taken whole.
        let odd = dir.path().join("img:v1");
        std::fs::create_dir(&odd).unwrap();
        let s = format!("oci:{}", odd.display());
        assert_eq!(
            s.parse::<SourceRef>().unwrap(),
            oci(&odd.display().to_string(), None)
        );
    }

    #[test]
    fn bare_directory_is_a_layout_and_a_bare_file_needs_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display().to_string();
        assert_eq!(p.parse::<SourceRef>().unwrap(), oci(&p, None));
        let file = dir.path().join("app.tar");
        std::fs::write(&file, b"x").unwrap();
        let f = file.display().to_string();
        match f.parse::<SourceRef>() {
            Err(Error::Invalid(m)) => assert!(m.contains(&format!("oci-archive:{f}")), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_sources() {
        for s in [
            "",
            "oci:",
            "oci::tag",
            "oci:./no-such:",
            "docker://",
            "nonsense:thing",
            "/definitely/not/here",
        ] {
            assert!(
                matches!(s.parse::<SourceRef>(), Err(Error::Invalid(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn platforms() {
        assert_eq!(Platform::default().to_string(), "linux/amd64");
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.to_string(), "linux/arm64/v8");
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/amd 64", ""] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
        assert!(p.matches("linux", "arm64", None));
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "arm64", Some("v9")));
        let any_arm: Platform = "linux/arm".parse().unwrap();
        assert!(any_arm.matches("linux", "arm", Some("v7")));
        assert!(!Platform::default().matches("linux", "arm64", None));
    }
}
