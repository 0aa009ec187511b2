//! Where an export is written: the [`Target`] syntax, an OCI layout
//! directory being filled ([`Layout`]), and the archives made from one.

use std::io::{Read as _, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use puzzle_store::manifest::{Descriptor, ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX};
use puzzle_store::BlobDigest;

use puzzle_store::tree::Meta;

use super::tarw::{self, HeadKind};
use super::{dir_name, head, order_key, Exported};
use crate::error::{Error, Result};

/// Where an export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `oci:DIR[:TAG]`: an OCI layout directory, created or added to (a
    /// manifest already tagged `TAG` there is replaced in `index.json`).
    OciDir { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: a tar of such a layout.
    OciArchive { file: PathBuf, tag: Option<String> },
    /// `docker-archive:FILE[:REF]`: what `docker save` writes (with an OCI
    /// layout inside, as docker 25 does); `docker load` reads it.
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
}

const TARGET_USAGE: &str =
    "expected oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:REF]";

/// Splits `PATH[:TAG]` for a destination that may not exist yet: the whole
/// string if it exists, else at the first ':' whose prefix's parent
/// directory exists (a tag or docker reference may hold ':' itself).
fn split_target(kind: &str, rest: &str) -> Result<(PathBuf, Option<String>)> {
    let parent_exists = |p: &str| match Path::new(p).parent() {
        Some(d) if !d.as_os_str().is_empty() => d.is_dir(),
        _ => true,
    };
    let (path, tag) = if Path::new(rest).exists() {
        (rest, None)
    } else {
        match rest
            .match_indices(':')
            .find(|(i, _)| *i > 0 && parent_exists(&rest[..*i]))
        {
            Some((i, _)) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        }
    };
    if path.is_empty() {
        return Err(Error::Invalid(format!(
            "{kind}: missing path ({TARGET_USAGE})"
        )));
    }
    if tag == Some("") {
        return Err(Error::Invalid(format!("{kind}{rest}: empty tag after ':'")));
    }
    Ok((PathBuf::from(path), tag.map(str::to_owned)))
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Target> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_target("oci:", rest)?;
            Ok(Target::OciDir { dir, tag })
        } else if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_target("oci-archive:", rest)?;
            Ok(Target::OciArchive { file, tag })
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, reference) = split_target("docker-archive:", rest)?;
            Ok(Target::DockerArchive { file, reference })
        } else if s.starts_with("docker://") {
            Err(Error::Unsupported(format!(
                "exporting to a registry ({s}); export to oci:DIR and copy it with skopeo"
            )))
        } else {
            Err(Error::Invalid(format!(
                "unrecognized export target {s}: {TARGET_USAGE}"
            )))
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, path, r) = match self {
            Target::OciDir { dir, tag } => ("oci", dir, tag),
            Target::OciArchive { file, tag } => ("oci-archive", file, tag),
            Target::DockerArchive { file, reference } => ("docker-archive", file, reference),
        };
        write!(f, "{kind}:{}", path.display())?;
        if let Some(r) = r {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

/// An OCI layout directory being written.
pub(super) struct Layout {
    dir: PathBuf,
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

impl Layout {
    /// `dir` created if missing; an existing directory must be an OCI
    /// layout or empty.
    pub(super) fn open(dir: &Path) -> Result<Layout> {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?
            }
            Err(e) => return Err(Error::io(dir, e)),
            Ok(m) if !m.is_dir() => {
                return Err(Error::Invalid(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )))
            }
            Ok(_) => {
                let is_layout = dir.join("oci-layout").is_file();
                let empty = std::fs::read_dir(dir)
                    .map_err(|e| Error::io(dir, e))?
                    .next()
                    .is_none();
                if !is_layout && !empty {
                    return Err(Error::Invalid(format!(
                        "{} is neither an OCI layout nor empty",
                        dir.display()
                    )));
                }
            }
        }
        let layout = Layout { dir: dir.into() };
        let blobs = layout.blobs();
        std::fs::create_dir_all(&blobs).map_err(|e| Error::io(&blobs, e))?;
        let ol = dir.join("oci-layout");
        if !ol.is_file() {
            write_atomic(dir, "oci-layout", OCI_LAYOUT)?;
        }
        Ok(layout)
    }

    pub(super) fn blobs(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    pub(super) fn write_blob(&self, bytes: &[u8]) -> Result<BlobDigest> {
        let d = BlobDigest::of(bytes);
        write_atomic(&self.blobs(), &d.hex(), bytes)?;
        Ok(d)
    }

    /// Adds `manifest` to `index.json` (kept as it was otherwise), replacing
    /// any manifest tagged `tag`.
    pub(super) fn add_to_index(&self, manifest: &Descriptor, tag: Option<&str>) -> Result<()> {
        let path = self.dir.join("index.json");
        let mut index = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| Error::Json {
                what: format!("{}", path.display()),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                serde_json::json!({"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []})
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let manifests = index
            .get_mut("manifests")
            .and_then(|m| m.as_array_mut())
            .ok_or_else(|| Error::Invalid(format!("{} has no manifests list", path.display())))?;
        let mut desc = manifest.clone();
        if let Some(tag) = tag {
            manifests.retain(|m| m["annotations"][ANNOTATION_REF_NAME] != tag);
            desc.annotations
                .insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
        }
        manifests.push(serde_json::to_value(&desc).expect("descriptor serializes"));
        let bytes = serde_json::to_vec(&index).expect("index serializes");
        write_atomic(&self.dir, "index.json", &bytes)
    }

    /// `manifest.json` as `docker save` writes it, naming blobs of the layout.
    pub(super) fn write_docker_manifest(
        &self,
        out: &Exported,
        reference: Option<&str>,
    ) -> Result<()> {
        let blob = |d: &BlobDigest| format!("blobs/sha256/{}", d.hex());
        let m = serde_json::json!([{
            "Config": blob(&out.config.digest),
            "RepoTags": reference.map(|r| vec![r.to_string()]).unwrap_or_default(),
            "Layers": out.layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
        }]);
        write_atomic(
            &self.dir,
            "manifest.json",
            &serde_json::to_vec(&m).expect("json"),
        )
    }
}

/// Writes `bytes` as `dir/name` through a synced temp file and a rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(tmp.path(), e))?;
    let dest = dir.join(name);
    tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
    Ok(())
}

/// Writes a layout in a temp directory beside `file`, then a tar of it to
/// `file` (through a temp file and a rename).
pub(super) fn archive(
    file: &Path,
    fill: impl FnOnce(&Layout) -> Result<Exported>,
) -> Result<Exported> {
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if file.is_dir() {
        return Err(Error::Invalid(format!(
            "{} is a directory; an archive is written as a file",
            file.display()
        )));
    }
    let work = tempfile::Builder::new()
        .prefix(".puzzle-export-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let layout = Layout::open(&work.path().join("layout"))?;
    let out = fill(&layout)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-archive-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let tmp_path = tmp.path().to_path_buf();
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        tar_dir(&layout.dir, &mut w).map_err(|e| Error::io(&tmp_path, e))?;
        w.flush().map_err(|e| Error::io(&tmp_path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(&tmp_path, e))?;
    tmp.persist(file).map_err(|e| Error::io(file, e.error))?;
    Ok(out)
}

/// A tar of a layout directory: every entry in sorted path order, owned by
/// root, mode 0644 (0755 for directories), time 0.
fn tar_dir(dir: &Path, w: &mut dyn Write) -> std::io::Result<()> {
    let mut paths = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(dir.join(&rel))? {
            let e = e?;
            let name = rel.join(e.file_name());
            if e.file_name().as_bytes().starts_with(b".tmp-") {
                continue;
            }
            if e.file_type()?.is_dir() {
                stack.push(name.clone());
            }
            paths.push((name, e.file_type()?.is_dir()));
        }
    }
    paths.sort_by(|a, b| {
        order_key(a.0.as_os_str().as_bytes()).cmp(&order_key(b.0.as_os_str().as_bytes()))
    });
    let fixed = Meta {
        mode: 0o644,
        ..Meta::default()
    };
    let dir_meta = Meta {
        mode: 0o755,
        ..Meta::default()
    };
    for (rel, is_dir) in paths {
        let bytes = rel.as_os_str().as_bytes();
        if is_dir {
            w.write_all(&tarw::header_bytes(&head(
                dir_name(bytes),
                HeadKind::Dir,
                &dir_meta,
            ))?)?;
            continue;
        }
        let mut f = std::fs::File::open(dir.join(&rel))?;
        let size = f.metadata()?.len();
        w.write_all(&tarw::header_bytes(&head(
            bytes.to_vec(),
            HeadKind::File { size },
            &fixed,
        ))?)?;
        let copied = std::io::copy(&mut (&mut f).take(size), w)?;
        if copied != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} shrank while archived", rel.display()),
            ));
        }
        let rem = (size % 512) as usize;
        if rem != 0 {
            w.write_all(&[0u8; 512][..512 - rem])?;
        }
    }
    w.write_all(&[0u8; 1024])
}
