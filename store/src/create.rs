//! Where a store may be created, and restoring a lost `puzzle.json`.
//!
//! A store is created only in a directory that does not exist, is empty, or
//! holds nothing but what an interrupted creation of our own leaves (the
//! `lock` file and empty `blobs/sha256`, `tmp`, `index` directories, an
//! `oci-layout` and an `index.json` naming no image). Anything else is
//! refused with [`Error::Unusable`], so puzzle never takes over an OCI layout
//! written by another tool (whose `index.json` it would replace) and never
//! sets up again, with default settings, a store that lost its
//! `puzzle.json`. Such a store's settings are recorded in every manifest it
//! wrote (the `dev.puzzle.*` annotations); [`recover_config`] reads them back.

use std::fs;
use std::path::Path;

use puzzle_chunker::ChunkParams;

use crate::error::{Error, IoContext, Result, Unusable};
use crate::layout::{write_file_atomic, StoreConfig, FORMAT_VERSION, MAX_JSON};
use crate::manifest::{
    Index, Manifest, ANNOTATION_CHUNKER, ANNOTATION_COMPRESSION, ANNOTATION_FORMAT,
};

/// What a directory holds, as far as store creation is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirState {
    /// Nothing at the path.
    Missing,
    /// A store: `puzzle.json` is there.
    Store,
    /// Empty, or only what an interrupted creation of ours leaves.
    Empty,
    /// Something else, which is never written to.
    Unusable(Unusable),
}

/// What a store holds besides `puzzle.json`: a directory with anything else
/// is not one of ours.
const STORE_ENTRIES: [&str; 9] = [
    "lock",
    "reserve",
    "blobs",
    "tmp",
    "index",
    "oci-layout",
    "index.json",
    "pins",
    "remotes",
];

pub(crate) fn classify(root: &Path) -> Result<DirState> {
    let md = match fs::metadata(root) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Missing),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return Ok(DirState::Unusable(Unusable::NotADirectory))
        }
        Err(e) => return Err(e).at(root),
    };
    if !md.is_dir() {
        return Ok(DirState::Unusable(Unusable::NotADirectory));
    }
    if root.join("puzzle.json").exists() {
        return Ok(DirState::Store);
    }
    let mut names = Vec::new();
    for e in fs::read_dir(root).at(root)? {
        let name = e.at(root)?.file_name();
        // The empty lost+found of a fresh ext4 volume's root is not content.
        if name == "lost+found" && !non_empty(&root.join(&name))? {
            continue;
        }
        names.push(name);
    }
    if names.is_empty() {
        return Ok(DirState::Empty);
    }
    let has = |n: &str| names.iter().any(|x| x == n);
    let only_ours = names.iter().all(|n| STORE_ENTRIES.iter().any(|l| n == *l));
    let foreign = if has("oci-layout") {
        Unusable::ForeignLayout
    } else {
        Unusable::NotEmpty
    };
    let index_used = non_empty(&root.join("index"))?;
    if !only_ours || (!has("lock") && !index_used) {
        // Something else, or no sign of puzzle: another tool's directory
        // (an empty OCI layout included).
        return Ok(DirState::Unusable(foreign));
    }
    if !index_used
        && !has("pins")
        && !non_empty(&root.join("blobs/sha256"))?
        && index_is_empty(root)?
    {
        return Ok(DirState::Empty);
    }
    Ok(DirState::Unusable(Unusable::ConfigLost))
}

/// True when `dir` exists and has an entry.
fn non_empty(dir: &Path) -> Result<bool> {
    match fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(true),
        Err(e) => Err(e).at(dir),
    }
}

/// True when `index.json` is missing or names no manifest.
fn index_is_empty(root: &Path) -> Result<bool> {
    let path = root.join("index.json");
    match fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice::<Index>(&b).is_ok_and(|i| i.manifests.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).at(path),
    }
}

/// The refusal for a directory in `state`, or `None` if a store may be
/// opened or created there.
pub(crate) fn refusal(root: &Path, state: DirState) -> Option<Error> {
    match state {
        DirState::Unusable(why) => Some(Error::Unusable {
            path: root.to_path_buf(),
            why,
        }),
        _ => None,
    }
}

/// How many manifests [`recover_config`] found and the settings they record.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub config: StoreConfig,
    pub manifests: usize,
}

/// Restores the `puzzle.json` of a store that lost it, from the settings its
/// manifests record (`dev.puzzle.chunker`, `dev.puzzle.compression`). The
/// manifests are those `index.json` names, or, when it names none, every
/// manifest-sized JSON blob. They must all agree and match this build's
/// chunker and format version; otherwise nothing is written.
pub fn recover_config(root: &Path) -> Result<Recovered> {
    let unusable = |why| Error::Unusable {
        path: root.to_path_buf(),
        why,
    };
    match classify(root)? {
        DirState::Unusable(Unusable::ConfigLost) => {}
        DirState::Store => match crate::layout::Store::open(root) {
            Err(Error::Unusable {
                why: Unusable::ConfigDamaged,
                ..
            }) => {}
            _ => return Err(unusable(Unusable::HasConfig)),
        },
        DirState::Missing | DirState::Empty => return Err(Error::NotAStore(root.to_path_buf())),
        DirState::Unusable(why) => return Err(unusable(why)),
    }
    let manifests = find_manifests(root)?;
    let fail = |msg: String| Error::BadStore {
        path: root.to_path_buf(),
        msg,
    };
    let mut found: Option<(String, String)> = None;
    for m in &manifests {
        let get = |k| m.annotations.get(k).cloned().unwrap_or_default();
        if get(ANNOTATION_FORMAT) != FORMAT_VERSION.to_string() {
            return Err(fail(format!(
                "a manifest records format version {:?}; this puzzle reads version {FORMAT_VERSION}",
                get(ANNOTATION_FORMAT)
            )));
        }
        let these = (get(ANNOTATION_CHUNKER), get(ANNOTATION_COMPRESSION));
        match &found {
            None => found = Some(these),
            Some(f) if *f == these => {}
            Some(f) => {
                return Err(fail(format!(
                "its manifests record two settings ({} {} and {} {}); restore puzzle.json by hand",
                f.0, f.1, these.0, these.1
            )))
            }
        }
    }
    let Some((chunker, compression)) = found else {
        return Err(fail(
            "no manifest records its settings; move it away and start a new store".to_string(),
        ));
    };
    let config = parse_labels(&chunker, &compression).ok_or_else(|| {
        fail(format!(
            "cannot read the settings {chunker:?} {compression:?}"
        ))
    })?;
    let tmp = root.join("tmp");
    fs::create_dir_all(&tmp).at(&tmp)?;
    let mut bytes = serde_json::to_vec_pretty(&config).expect("config serializes");
    bytes.push(b'\n');
    write_file_atomic(root, "puzzle.json", &bytes, &tmp)?;
    Ok(Recovered {
        config,
        manifests: manifests.len(),
    })
}

/// The puzzle manifests of a store without a config: those `index.json`
/// names if it names any, else every blob that parses as one.
fn find_manifests(root: &Path) -> Result<Vec<Manifest>> {
    let blobs = root.join("blobs/sha256");
    let read = |hex: &str| -> Result<Option<Manifest>> {
        let path = blobs.join(hex);
        let md = match fs::metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(path),
        };
        if !md.is_file() || md.len() > MAX_JSON {
            return Ok(None);
        }
        let bytes = fs::read(&path).at(&path)?;
        Ok(serde_json::from_slice::<Manifest>(&bytes)
            .ok()
            .filter(|m| m.annotations.contains_key(ANNOTATION_CHUNKER)))
    };
    let mut out = Vec::new();
    if let Ok(b) = fs::read(root.join("index.json")) {
        if let Ok(index) = serde_json::from_slice::<Index>(&b) {
            for d in &index.manifests {
                out.extend(read(&d.digest.hex())?);
            }
        }
    }
    if out.is_empty() {
        let rd = match fs::read_dir(&blobs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&blobs),
        };
        for e in rd {
            let name = e.at(&blobs)?.file_name();
            if let Some(hex) = name.to_str() {
                out.extend(read(hex)?);
            }
        }
    }
    Ok(out)
}

/// Parses the labels [`StoreConfig::chunker_label`] and
/// `CompressionConfig::label` write, e.g. `fastcdc-v2020 3.2.1
/// 16384/65536/262144` and `zstd-3 frames 1048576`, into a config; `None`
/// if they do not parse or name another chunker than this build's.
pub fn parse_labels(chunker: &str, compression: &str) -> Option<StoreConfig> {
    let mut c = chunker.split(' ');
    let (algorithm, krate, sizes) = (c.next()?, c.next()?, c.next()?);
    if c.next().is_some()
        || algorithm != puzzle_chunker::ALGORITHM
        || krate != puzzle_chunker::FASTCDC_VERSION
    {
        return None;
    }
    let mut s = sizes.split('/').map(|x| x.parse::<u32>().ok());
    let params = ChunkParams::new(s.next()??, s.next()??, s.next()??).ok()?;
    if s.next().is_some() {
        return None;
    }
    let rest = compression.strip_prefix("zstd-")?;
    let (level, rest) = rest.split_once(' ')?;
    let frame_target: u32 = rest.strip_prefix("frames ")?.parse().ok()?;
    let mut config = StoreConfig::new(params, level.parse().ok()?);
    config.compression.frame_target = frame_target;
    (config.chunker_label() == chunker && config.compression.label() == compression)
        .then_some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for (p, level) in [
            (ChunkParams::default(), 3),
            (ChunkParams::new(4096, 16384, 65536).unwrap(), 19),
        ] {
            let cfg = StoreConfig::new(p, level);
            let back = parse_labels(&cfg.chunker_label(), &cfg.compression.label()).unwrap();
            assert_eq!(back, cfg);
        }
        let cfg = StoreConfig::new(ChunkParams::default(), 3);
        let (c, z) = (cfg.chunker_label(), cfg.compression.label());
        assert!(parse_labels(&c.replace(puzzle_chunker::ALGORITHM, "rabin"), &z).is_none());
        assert!(parse_labels(&format!("{c} x"), &z).is_none());
        assert!(parse_labels(&c, "lz4-3 frames 1048576").is_none());
        assert!(parse_labels(&c, "zstd-3 frames").is_none());
        assert!(parse_labels(&c.replace("/", "/0"), &z).is_none());
    }

    #[test]
    fn classify_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        assert_eq!(classify(&p("none")).unwrap(), DirState::Missing);
        fs::write(p("file"), b"x").unwrap();
        assert_eq!(
            classify(&p("file")).unwrap(),
            DirState::Unusable(Unusable::NotADirectory)
        );
        fs::create_dir(p("empty")).unwrap();
        assert_eq!(classify(&p("empty")).unwrap(), DirState::Empty);
        // An interrupted creation of ours: lock and empty directories.
        for d in ["half/blobs/sha256", "half/tmp", "half/index"] {
            fs::create_dir_all(p(d)).unwrap();
        }
        fs::write(p("half/lock"), b"").unwrap();
        fs::write(p("half/reserve"), b"").unwrap();
        assert_eq!(classify(&p("half")).unwrap(), DirState::Empty);
        // Another tool's empty layout: no lock, so not ours.
        fs::create_dir_all(p("umoci/blobs/sha256")).unwrap();
        fs::write(p("umoci/oci-layout"), b"{}").unwrap();
        fs::write(
            p("umoci/index.json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        assert_eq!(
            classify(&p("umoci")).unwrap(),
            DirState::Unusable(Unusable::ForeignLayout)
        );
        // A fresh volume's root with its lost+found is empty.
        fs::create_dir_all(p("vol/lost+found")).unwrap();
        assert_eq!(classify(&p("vol")).unwrap(), DirState::Empty);
        // A file named lock among other files is not a sign of a store.
        fs::create_dir_all(p("locky")).unwrap();
        fs::write(p("locky/lock"), b"").unwrap();
        fs::write(p("locky/notes"), b"").unwrap();
        assert_eq!(
            classify(&p("locky")).unwrap(),
            DirState::Unusable(Unusable::NotEmpty)
        );
        assert_eq!(
            classify(&p("file/sub")).unwrap(),
            DirState::Unusable(Unusable::NotADirectory)
        );
        fs::create_dir_all(p("other")).unwrap();
        fs::write(p("other/notes.txt"), b"x").unwrap();
        assert_eq!(
            classify(&p("other")).unwrap(),
            DirState::Unusable(Unusable::NotEmpty)
        );
        // Ours, with a blob: a store that lost its puzzle.json.
        fs::write(p("half/blobs/sha256/00"), b"x").unwrap();
        assert_eq!(
            classify(&p("half")).unwrap(),
            DirState::Unusable(Unusable::ConfigLost)
        );
        fs::write(p("half/puzzle.json"), b"{}").unwrap();
        assert_eq!(classify(&p("half")).unwrap(), DirState::Store);
    }
}
