//! The store root: an OCI image layout plus puzzle's own files.
//!
//! ```text
//! STORE/oci-layout          {"imageLayoutVersion":"1.0.0"}
//! STORE/index.json          one manifest per image, tag in org.opencontainers.image.ref.name
//! STORE/blobs/sha256/<hex>  packs, metadata blobs, configs, manifests
//! STORE/puzzle.json         format version, chunker and compression parameters
//! STORE/index/              the sled database (a cache, rebuildable)
//! STORE/tmp/                in-progress writes
//! STORE/lock                advisory lock taken by writers; holds the holder's PID
//! STORE/reserve             RESERVE_BYTES held back for writers on a full disk
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use puzzle_chunker::ChunkParams;
use serde::{Deserialize, Serialize};

use crate::create::{self, DirState};
use crate::digest::BlobDigest;
use crate::error::{Error, IoContext, Result, Unusable};
use crate::manifest::{Descriptor, Index, ANNOTATION_REF_NAME};

use crate::lock::lock_file;
pub use crate::lock::{
    is_out_of_space_io, LockOptions, Pin, StoreLock, TmpFiles, LOCK_REPORT_AFTER, RESERVE_BYTES,
};

/// Version of the on-disk format (packs, metadata blobs, manifests). See docs/FORMAT.md.
pub const FORMAT_VERSION: u32 = 2;
/// Default zstd level for chunk frames.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Largest JSON document (index.json, manifest, config) read from the store.
pub const MAX_JSON: u64 = 16 << 20;

/// `puzzle.json`: what a store's bytes mean. A store refuses other parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub format_version: u32,
    pub chunker: ChunkerConfig,
    pub compression: CompressionConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    pub algorithm: String,
    pub fastcdc_crate: String,
    pub params: ChunkParams,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    pub algorithm: String,
    pub level: i32,
    /// Raw bytes of consecutive chunks a frame collects (docs/FORMAT.md, "Pack").
    pub frame_target: u32,
}

impl CompressionConfig {
    /// One-line description used in messages and manifest annotations,
    /// e.g. `zstd-3 frames 1048576`.
    pub fn label(&self) -> String {
        format!(
            "{}-{} frames {}",
            self.algorithm, self.level, self.frame_target
        )
    }
}

impl StoreConfig {
    pub fn new(params: ChunkParams, zstd_level: i32) -> Self {
        StoreConfig {
            format_version: FORMAT_VERSION,
            chunker: ChunkerConfig {
                algorithm: puzzle_chunker::ALGORITHM.to_string(),
                fastcdc_crate: puzzle_chunker::FASTCDC_VERSION.to_string(),
                params,
            },
            compression: CompressionConfig {
                algorithm: "zstd".to_string(),
                level: zstd_level,
                frame_target: crate::frame::DEFAULT_FRAME_TARGET,
            },
        }
    }

    pub fn params(&self) -> ChunkParams {
        self.chunker.params
    }

    /// One-line description used in messages and manifest annotations.
    pub fn chunker_label(&self) -> String {
        let p = self.chunker.params;
        format!(
            "{} {} {}/{}/{}",
            self.chunker.algorithm,
            self.chunker.fastcdc_crate,
            p.min(),
            p.avg(),
            p.max()
        )
    }
}

/// One tagged image in `index.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub manifest: Descriptor,
}

/// An opened store root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    config: StoreConfig,
}

impl Store {
    /// Opens an existing store.
    pub fn open(root: &Path) -> Result<Store> {
        let cfg_path = root.join("puzzle.json");
        let bytes = match fs::read(&cfg_path) {
            Ok(b) => b,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                let state = create::classify(root)?;
                return Err(create::refusal(root, state)
                    .unwrap_or_else(|| Error::NotAStore(root.to_path_buf())));
            }
            Err(e) => {
                return Err(Error::Io {
                    path: cfg_path,
                    source: e,
                })
            }
        };
        let json = |_| Error::Unusable {
            path: root.to_path_buf(),
            why: Unusable::ConfigDamaged,
        };
        // The version first: another version's config may have other fields.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(&bytes).map_err(json)?;
        if version.format_version != FORMAT_VERSION {
            return Err(Error::BadStore {
                path: root.to_path_buf(),
                msg: format!(
                    "format version {} is not supported (this puzzle reads version {FORMAT_VERSION})",
                    version.format_version
                ),
            });
        }
        let config: StoreConfig = serde_json::from_slice(&bytes).map_err(json)?;
        if config.chunker.algorithm != puzzle_chunker::ALGORITHM
            || config.chunker.fastcdc_crate != puzzle_chunker::FASTCDC_VERSION
        {
            return Err(Error::BadStore {
                path: root.to_path_buf(),
                msg: format!(
                    "chunker {} {} differs from this build's {} {}",
                    config.chunker.algorithm,
                    config.chunker.fastcdc_crate,
                    puzzle_chunker::ALGORITHM,
                    puzzle_chunker::FASTCDC_VERSION
                ),
            });
        }
        Ok(Store {
            root: root.to_path_buf(),
            config,
        })
    }

    /// Opens a store, creating it with `config` if the directory does not
    /// exist or is empty (see [`create`]; any other directory is refused). An
    /// existing store must have been created with the same chunk parameters.
    pub fn open_or_create(root: &Path, config: &StoreConfig) -> Result<Store> {
        let mut state = create::classify(root)?;
        if state == DirState::Missing {
            fs::create_dir_all(root).map_err(|e| Error::BadStore {
                path: root.to_path_buf(),
                msg: format!("cannot create it: {e}"),
            })?;
            state = DirState::Empty;
        }
        if state == DirState::Empty {
            // Creation races are settled by the lock; the loser sees puzzle.json.
            let lock = lock_file(root, true)?;
            match create::classify(root)? {
                DirState::Empty => init_layout(root, config)?,
                s => state = s,
            }
            drop(lock);
        }
        if let Some(e) = create::refusal(root, state) {
            return Err(e);
        }
        let store = Store::open(root)?;
        if store.config.chunker.params != config.chunker.params
            || store.config.compression != config.compression
        {
            return Err(Error::ParamsMismatch {
                stored: format!(
                    "{} {}",
                    store.config.chunker_label(),
                    store.config.compression.label()
                ),
                requested: format!("{} {}", config.chunker_label(), config.compression.label()),
            });
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// False when this process cannot write to the store (a read-only
    /// mount, or another user's store): reading commands then work without
    /// a pin or the writer lock.
    pub fn is_writable(&self) -> bool {
        rustix::fs::access(&self.root, rustix::fs::Access::WRITE_OK).is_ok()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    pub fn blob_path(&self, d: &BlobDigest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Opens blob `d` to read it whole: [`Error::BlobMissing`] if it is not
    /// there. Byte ranges of packs are read through [`Store::blob_reader`].
    pub fn open_blob(&self, d: &BlobDigest) -> Result<File> {
        crate::blobs::open_blob_file(&self.blob_path(d), d)
    }

    /// This store's blobs as a [`crate::blobs::BlobRead`] source.
    pub fn blob_reader(&self) -> crate::blobs::LocalBlobs {
        crate::blobs::LocalBlobs::new(self.root.join("blobs/sha256"))
    }

    pub fn has_blob(&self, d: &BlobDigest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Every blob in `blobs/sha256/` with its size, sorted by digest. Files
    /// whose names are not digests are skipped.
    pub fn blobs(&self) -> Result<Vec<(BlobDigest, u64)>> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let Some(d) = e.file_name().to_str().and_then(BlobDigest::from_hex) else {
                continue;
            };
            let md = e.metadata().at(e.path())?;
            if md.is_file() {
                out.push((d, md.len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a blob (gc only, under the writer lock). A missing blob is fine.
    pub fn remove_blob(&self, d: &BlobDigest) -> Result<()> {
        let path = self.blob_path(d);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// Makes deletions and renames in `blobs/sha256/` durable.
    pub fn sync_blobs(&self) -> Result<()> {
        sync_dir(&self.root.join("blobs/sha256"))
    }

    /// Reads a whole blob, refusing blobs over `max` bytes, and checks its digest.
    pub fn read_blob(&self, d: &BlobDigest, max: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(d);
        let mut f = self.open_blob(d)?;
        let len = f.metadata().at(&path)?.len();
        if len > max {
            return Err(Error::CorruptBlob {
                digest: d.to_string(),
                why: format!("{len} bytes is over the {max}-byte limit for this kind of blob"),
            });
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.read_to_end(&mut buf).at(&path)?;
        let actual = BlobDigest::of(&buf);
        if actual != *d {
            return Err(Error::CorruptBlob {
                digest: d.to_string(),
                why: format!("content hashes to {actual}"),
            });
        }
        Ok(buf)
    }

    /// Writes a blob durably (temp file, fsync, rename, fsync dir) and returns its digest.
    /// A blob that already exists is not written again.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<BlobDigest> {
        Ok(self.write_blobs(&[bytes])?[0])
    }

    /// Stores several blobs durably (those not stored yet, or stored
    /// damaged): each written, all fsynced at once, then renamed into
    /// `blobs/` (over a damaged copy) and the directory fsynced once.
    /// Their digests, in order.
    pub fn write_blobs(&self, blobs: &[&[u8]]) -> Result<Vec<BlobDigest>> {
        let digests: Vec<BlobDigest> = blobs.iter().map(|b| BlobDigest::of(b)).collect();
        let mut written = Vec::new();
        for (bytes, d) in blobs.iter().zip(&digests) {
            if written.iter().any(|(_, w)| w == d) || self.holds_intact(d, bytes.len() as u64)? {
                continue;
            }
            let mut tmp = self.temp_file()?;
            tmp.write_all(bytes).at(tmp.path())?;
            written.push((tmp, *d));
        }
        if written.is_empty() {
            return Ok(digests);
        }
        // Synced side by side, so a journaling filesystem can commit them in
        // one transaction.
        std::thread::scope(|s| {
            let syncs: Vec<_> = written
                .iter()
                .map(|(tmp, _)| s.spawn(move || tmp.as_file().sync_all().at(tmp.path())))
                .collect();
            syncs
                .into_iter()
                .try_for_each(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        })?;
        for (tmp, d) in written {
            self.rename_blob(tmp, &d)?;
        }
        self.sync_blobs()?;
        Ok(digests)
    }

    /// Whether blob `d` is stored with `len` bytes that hash to `d`. A blob
    /// that is there but damaged (a flipped byte, a truncation) is not, so
    /// the caller writes it again instead of pointing a tag at it.
    fn holds_intact(&self, d: &BlobDigest, len: u64) -> Result<bool> {
        let path = self.blob_path(d);
        let f = match self.open_blob(d) {
            Ok(f) => f,
            Err(Error::BlobMissing { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if f.metadata().at(&path)?.len() != len {
            return Ok(false);
        }
        let mut h = crate::digest::HashingWriter::new(std::io::sink());
        std::io::copy(&mut &f, &mut h).at(&path)?;
        Ok(h.finish().1 == *d)
    }

    /// A new temp file in `tmp/`, removed if dropped before [`Store::persist_blob`].
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        let dir = self.tmp_dir();
        tempfile::Builder::new()
            .prefix("blob-")
            .permissions(readable_by_all())
            .tempfile_in(&dir)
            .at(&dir)
    }

    /// Makes a finished temp file the blob `d`: fsync, rename into `blobs/`, fsync the directory.
    pub fn persist_blob(&self, tmp: tempfile::NamedTempFile, d: &BlobDigest) -> Result<()> {
        tmp.as_file().sync_all().at(tmp.path())?;
        self.rename_blob(tmp, d)?;
        self.sync_blobs()
    }

    /// Renames a synced temp file to the blob `d`.
    fn rename_blob(&self, tmp: tempfile::NamedTempFile, d: &BlobDigest) -> Result<()> {
        let dest = self.blob_path(d);
        tmp.persist(&dest).map_err(|e| Error::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    fn read_index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        let len = fs::metadata(&path).at(&path)?.len();
        if len > MAX_JSON {
            return Err(Error::BadStore {
                path: self.root.clone(),
                msg: format!("index.json is {len} bytes, over the {MAX_JSON}-byte limit"),
            });
        }
        let bytes = fs::read(&path).at(&path)?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(index).expect("index serializes");
        bytes.push(b'\n');
        write_file_atomic(&self.root, "index.json", &bytes, &self.tmp_dir())
    }

    /// Every tagged image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRef>> {
        let index = self.read_index()?;
        let mut out: Vec<ImageRef> = index
            .manifests
            .into_iter()
            .filter_map(|d| {
                let name = d.annotations.get(ANNOTATION_REF_NAME)?.clone();
                Some(ImageRef { name, manifest: d })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The manifest descriptor tagged `name`.
    pub fn resolve(&self, name: &str) -> Result<ImageRef> {
        self.images()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| Error::ImageNotFound(name.to_string()))
    }

    /// Points tag `name` at `manifest` (replacing any previous image of that name).
    /// The caller holds the writer lock and has made the manifest blob durable.
    pub fn set_tag(&self, name: &str, manifest: &Descriptor) -> Result<()> {
        check_name(name)?;
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        let mut d = manifest.clone();
        d.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
        index.manifests.push(d);
        index.manifests.sort_by(|a, b| {
            a.annotations
                .get(ANNOTATION_REF_NAME)
                .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
        });
        self.write_index(&index)
    }

    /// Points every tag naming a manifest in `moved` at its replacement, in
    /// one atomic write of `index.json` (gc, after rewriting images). The
    /// caller holds the writer lock.
    pub fn retarget(&self, moved: &BTreeMap<BlobDigest, Descriptor>) -> Result<()> {
        let mut index = self.read_index()?;
        for d in &mut index.manifests {
            if let Some(new) = moved.get(&d.digest) {
                let annotations = std::mem::take(&mut d.annotations);
                *d = new.clone();
                d.annotations = annotations;
            }
        }
        self.write_index(&index)
    }

    /// Removes tag `name`. Blobs stay until `gc`.
    pub fn remove_tag(&self, name: &str) -> Result<ImageRef> {
        let r = self.resolve(name)?;
        let mut index = self.read_index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        self.write_index(&index)?;
        Ok(r)
    }
}

/// Image names follow the OCI ref.name grammar loosely: printable, no spaces, at most 255 bytes.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(Error::InvalidName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:@/+".contains(&b))
    {
        return bad("only letters, digits and - . _ : @ / + are allowed");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    Ok(())
}

fn init_layout(root: &Path, config: &StoreConfig) -> Result<()> {
    for d in ["blobs/sha256", "tmp", "index"] {
        fs::create_dir_all(root.join(d)).at(root.join(d))?;
    }
    let tmp = root.join("tmp");
    write_file_atomic(
        root,
        "oci-layout",
        b"{\"imageLayoutVersion\":\"1.0.0\"}\n",
        &tmp,
    )?;
    let index = Index::default();
    let mut bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
    bytes.push(b'\n');
    write_file_atomic(root, "index.json", &bytes, &tmp)?;
    // puzzle.json last: its presence marks a complete store.
    let mut cfg = serde_json::to_vec_pretty(config).expect("config serializes");
    cfg.push(b'\n');
    write_file_atomic(root, "puzzle.json", &cfg, &tmp)
}

/// Writes `root/name` atomically: temp file in `tmp`, fsync, rename, fsync `root`.
pub(crate) fn write_file_atomic(root: &Path, name: &str, bytes: &[u8], tmp: &Path) -> Result<()> {
    let mut f = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(readable_by_all())
        .tempfile_in(tmp)
        .at(tmp)?;
    f.write_all(bytes).at(f.path())?;
    f.as_file().sync_all().at(f.path())?;
    let dest = root.join(name);
    f.persist(&dest).map_err(|e| Error::Io {
        path: dest.clone(),
        source: e.error,
    })?;
    sync_dir(root)
}

/// The mode of every file the store keeps (0644 less the umask): other
/// users may read a store they cannot write (a shared cache), as for the
/// directories; temp files would otherwise be 0600.
fn readable_by_all() -> fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    fs::Permissions::from_mode(0o644)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// Annotations sorted by key, so manifests serialize deterministically.
pub type Annotations = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MEDIA_TYPE_MANIFEST;

    #[test]
    fn names() {
        for ok in ["debian:bookworm", "app:1", "r/x@1.2+b", "a"] {
            check_name(ok).unwrap();
        }
        for bad in ["", " x", "a b", "-a", "x\n", &"a".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_open_tag_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        assert!(matches!(Store::open(&root), Err(Error::NotAStore(_))));
        let cfg = StoreConfig::new(ChunkParams::default(), 3);
        let s = Store::open_or_create(&root, &cfg).unwrap();
        let d = s.write_blob(b"{}").unwrap();
        assert_eq!(s.read_blob(&d, 10).unwrap(), b"{}");
        let desc = Descriptor::new(MEDIA_TYPE_MANIFEST, d, 2);
        s.set_tag("b:1", &desc).unwrap();
        s.set_tag("a:1", &desc).unwrap();
        s.set_tag("b:1", &desc).unwrap();
        let names: Vec<_> = s.images().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a:1", "b:1"]);
        s.remove_tag("a:1").unwrap();
        assert!(matches!(s.resolve("a:1"), Err(Error::ImageNotFound(_))));
        let other = StoreConfig::new(ChunkParams::new(4096, 16384, 65536).unwrap(), 3);
        assert!(matches!(
            Store::open_or_create(&root, &other),
            Err(Error::ParamsMismatch { .. })
        ));
        // Pins are visible while held, gone when dropped.
        let pin = s.pin(&d).unwrap();
        assert_eq!(s.pinned().unwrap(), vec![d]);
        drop(pin);
        assert!(s.pinned().unwrap().is_empty());
        // The lock holder records its PID; tmp/ debris is measured and removed.
        fs::write(s.tmp_dir().join("left"), b"12345").unwrap();
        let lock = s.lock().unwrap();
        assert_eq!(
            crate::lock::lock_holder(&root.join("lock")),
            Some(std::process::id())
        );
        assert_eq!(lock.tmp(), TmpFiles { files: 1, bytes: 5 });
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
        drop(lock);
        // A corrupted blob is caught on read.
        fs::write(s.blob_path(&d), b"{ }").unwrap();
        assert!(matches!(
            s.read_blob(&d, 10),
            Err(Error::CorruptBlob { .. })
        ));
    }
}
