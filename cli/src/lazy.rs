//! `puzzle mount docker://REF DIR`: the lazy mount's flags, opening the
//! remote image, and the stats file `puzzle mounts` reads
//! (`STORE/mounts/PID.json`, rewritten every second while mounted).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use puzzle_oci::lazy::{self, FrameKey, LazyBlobs, LazyOpened, LazyOptions, LazyStats};
use puzzle_oci::pull::{self, RegistryBlobs};
use puzzle_store::image::MappedImage;
use puzzle_store::Store;
use serde::{Deserialize, Serialize};

use crate::output;
use crate::registry_args::RegistryArgs;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Lazy mounts (docker://REF)")]
pub struct LazyArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How long a read of data not yet local waits for the registry before
    /// it fails with EIO; the mount keeps serving what is local, and reads
    /// work again once the registry answers.
    #[arg(long, value_name = "SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Most bytes the frames kept from lazy mounts (STORE/lazy) may take,
    /// e.g. 500M or 2G; the least recently used go first. Default: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_max: Option<u64>,
    /// Fetch the rest of the image in the background, at low priority
    /// (reads go first); once all of it is here, it is committed as an
    /// ordinary local image (named by --tag) that works offline.
    #[arg(long)]
    pub fill: bool,
    /// With --fill: the local image's name [default: the repository's last
    /// component and the tag, e.g. django:5.0.8].
    #[arg(long, value_name = "NAME", requires = "fill", value_parser = crate::build::parse_tag)]
    pub tag: Option<String>,
}

impl LazyArgs {
    /// The flags that give the mount daemon these settings, and the
    /// credentials apart (see [`RegistryArgs::to_args`]).
    pub fn to_args(&self) -> (Vec<std::ffi::OsString>, Option<String>) {
        let (mut a, creds) = self.registry.to_args();
        a.extend(["--timeout".into(), self.timeout.to_string().into()]);
        if let Some(c) = self.cache_max {
            a.extend(["--cache-max".into(), c.to_string().into()]);
        }
        if self.fill {
            a.push("--fill".into());
        }
        if let Some(t) = &self.tag {
            a.extend(["--tag".into(), t.into()]);
        }
        (a, creds)
    }
}

/// A size: bytes, or a number with K, M, G or T (powers of 1024; `KiB`,
/// `MB` and the like read the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 500M or 2G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("{s:?}: unknown unit; use K, M, G or T")),
    };
    let v = n * (1u64 << shift) as f64;
    if !v.is_finite() || v < 0.0 || v >= u64::MAX as f64 {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(v as u64)
}

/// Batches of the prefetch list in flight at once (the fetches of on-demand
/// reads share the same limit of 8, so reads are never shut out).
const PREFETCH_AHEAD: usize = 4;

/// A lazily opened image, ready to mount.
pub struct Lazy {
    pub image: MappedImage,
    pub blobs: LazyBlobs,
    state: Arc<State>,
}

/// What the stats file is made from.
pub struct State {
    blobs: LazyBlobs,
    remote: Arc<RegistryBlobs>,
    manifest: Vec<u8>,
    needed: Vec<FrameKey>,
    /// The prefetch list's frames, and how many of them are local now.
    prefetch: Vec<FrameKey>,
    prefetched: AtomicU64,
    opened: LazyOpened,
    stats_path: Option<PathBuf>,
    started: Instant,
}

/// The stats file's content (`puzzle mounts --json` shows it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountStats {
    pub pid: u32,
    pub dir: PathBuf,
    pub reference: String,
    pub remote_manifest: String,
    /// Bytes received from the registry: manifest, metadata, config, frames.
    pub bytes_received: u64,
    /// HTTP Range requests for blobs.
    pub requests: u64,
    pub frames_fetched: u64,
    pub kept_hits: u64,
    pub local_hits: u64,
    pub misses: u64,
    pub failures: u64,
    pub bad_frames: u64,
    /// Remote frames the image needs (holding chunks the store lacks), and
    /// how many of them are local now.
    pub frames_needed: u64,
    pub frames_local: u64,
    /// Share of the image's chunks local now (0 to 1), by frame bytes.
    pub local_share: f64,
    /// Frames the image's prefetch list names (not local at mount time),
    /// and how many of them the prefetch has made local so far.
    pub prefetch_frames: u64,
    pub prefetched: u64,
    pub seconds: f64,
}

impl Lazy {
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }
}

/// Fetches the manifest and metadata of `reference` (what follows
/// `docker://`) and opens the image against the store at `root` (created
/// with the image's settings if missing).
pub fn open(root: &Path, reference: &str, args: &LazyArgs) -> Result<Lazy> {
    let started = Instant::now();
    let mut o = args.registry.options();
    // A read that waits longer than --timeout is failed anyway.
    o.read_timeout = Some(Duration::from_secs(
        args.timeout.min(args.registry.read_timeout()),
    ));
    // Tries at most a second apart until the deadline, so a registry that
    // comes back serves the reads waiting for it, and none go on after.
    o.retry.max_attempts = u32::MAX;
    o.retry.max_delay = o.retry.max_delay.min(Duration::from_secs(1));
    o.retry.max_total = o.retry.max_total.min(Duration::from_secs(args.timeout));
    let remote = pull::open_remote(reference, &o)?;
    let store = match Store::open(root) {
        Err(puzzle_store::Error::NotAStore(_)) => {
            let config = pull::config_of(&remote.manifest, &remote.reference)?;
            Store::open_or_create(root, &config)?
        }
        r => r?,
    };
    let pull::RemoteImage {
        reference,
        manifest,
        blobs,
        ..
    } = remote;
    let remote = Arc::new(blobs);
    let opts = LazyOptions {
        deadline: Duration::from_secs(args.timeout),
        cache_max: args.cache_max,
    };
    let l = lazy::open(&store, remote.clone(), &manifest, &reference, &opts)?;
    if args.fill && !l.opened.keeping {
        anyhow::bail!(
            "store {} is read-only here: --fill stores the image; mount without it, or use a store you can write",
            store.root().display()
        );
    }
    if !l.opened.keeping {
        eprintln!(
            "puzzle: warning: store {} is read-only here: fetched frames are not kept, \
             a remount fetches them again",
            store.root().display()
        );
    }
    let stats_path = store
        .is_writable()
        .then(|| store.root().join("mounts"))
        .and_then(|d| std::fs::create_dir_all(&d).ok().map(|()| d))
        .map(|d| d.join(format!("{}.json", std::process::id())));
    let state = Arc::new(State {
        blobs: l.blobs.clone(),
        remote,
        manifest,
        needed: l.needed,
        prefetch: l.prefetch,
        prefetched: AtomicU64::new(0),
        opened: l.opened,
        stats_path,
        started,
    });
    Ok(Lazy {
        image: l.image,
        blobs: l.blobs,
        state,
    })
}

impl State {
    /// One line on what opening found and fetched.
    pub fn opened_line(&self) -> String {
        let o = &self.opened;
        format!(
            "{}: {} of {} chunks already in the store; {} frames ({}) to fetch on demand, {} kept from before; \
             opened in {:.2} s after fetching {}",
            o.reference,
            o.chunks_local,
            o.chunks,
            o.frames_needed - o.frames_kept,
            output::bytes(o.frame_bytes_needed - o.frame_bytes_kept),
            o.frames_kept,
            self.started.elapsed().as_secs_f64(),
            output::bytes(o.bytes_fetched + self.manifest.len() as u64),
        )
    }

    pub fn stats(&self, dir: &Path) -> MountStats {
        let s: LazyStats = self.blobs.stats();
        let t = self.remote.transfer();
        let (n, bytes, kn, kbytes) = self.blobs.local_share(&self.needed);
        let o = &self.opened;
        MountStats {
            pid: std::process::id(),
            dir: dir.to_path_buf(),
            reference: o.reference.clone(),
            remote_manifest: o.remote_manifest.clone(),
            // The metadata and config came through `remote` too: counted in
            // `t`, not again from `o.bytes_fetched`.
            bytes_received: self.manifest.len() as u64 + t.bytes,
            requests: t.requests,
            frames_fetched: s.frames_fetched,
            kept_hits: s.kept_hits,
            local_hits: s.local_hits,
            misses: s.misses,
            failures: s.failures,
            bad_frames: s.bad_frames,
            frames_needed: n,
            frames_local: kn,
            local_share: if bytes == 0 {
                1.0
            } else {
                // Chunks local from the start count as local bytes too.
                let local_from_start = o.chunks_local as f64 / o.chunks.max(1) as f64;
                local_from_start + (1.0 - local_from_start) * kbytes as f64 / bytes as f64
            },
            prefetch_frames: self.prefetch.len() as u64,
            prefetched: self.prefetched.load(Ordering::Relaxed),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }

    /// Whether the image has a prefetch list with frames to fetch.
    pub fn has_prefetch(&self) -> bool {
        !self.prefetch.is_empty()
    }

    /// Fetches the frames of the prefetch list in its order, alongside
    /// on-demand reads: a batch is the list's next frames of one pack (at
    /// most `request_cap()` bytes, one request when they are neighbours), and
    /// at most [`PREFETCH_AHEAD`] batches are in flight. Returns the line
    /// to log.
    pub fn prefetch(&self, stop: &AtomicBool) -> String {
        let started = Instant::now();
        let list = &self.prefetch;
        let batches = self.blobs.batches(list);
        let mut failed = 0u64;
        let mut wait = |batch: &[FrameKey]| {
            for k in batch {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if self.blobs.wait_for(k) {
                    self.prefetched.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed += 1;
                }
            }
        };
        for (n, batch) in batches.iter().enumerate() {
            if stop.load(Ordering::Relaxed) {
                return "prefetch stopped: unmounted".into();
            }
            let offsets: Vec<u64> = batch.iter().map(|k| k.1).collect();
            self.blobs.fetch_ahead(&batch[0].0, &offsets);
            if n >= PREFETCH_AHEAD {
                wait(batches[n - PREFETCH_AHEAD]);
            }
        }
        for batch in &batches[batches.len().saturating_sub(PREFETCH_AHEAD)..] {
            wait(batch);
        }
        let mut line = format!(
            "prefetched {} of {} frames of the prefetch list in {:.2} s",
            self.prefetched.load(Ordering::Relaxed),
            list.len(),
            started.elapsed().as_secs_f64()
        );
        if failed > 0 {
            line += &format!(" ({failed} failed: they are fetched when read)");
        }
        line
    }

    /// Rewrites the stats file (best effort: a full disk must not stop the
    /// mount).
    pub fn write_stats(&self, dir: &Path) {
        let Some(p) = &self.stats_path else { return };
        let Ok(text) = serde_json::to_vec_pretty(&self.stats(dir)) else {
            return;
        };
        let tmp = p.with_extension("json.tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, p);
        }
    }

    /// The mount ends: waits for the registry stop (see [`LazyBlobs::close`]).
    pub fn close(&self) {
        self.blobs.close();
    }

    /// Removes the stats file (at unmount).
    pub fn remove_stats(&self) {
        if let Some(p) = &self.stats_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The name `--fill` gives the image without `--tag`: the repository's
/// last component and the tag (or the digest's first 12 digits).
pub fn default_tag(reference: &str) -> Option<String> {
    let last = reference.rsplit('/').next()?;
    let name = match last.split_once('@') {
        Some((repo, digest)) => {
            let hex = digest.split_once(':').map_or(digest, |d| d.1);
            format!("{repo}:{}", hex.get(..12)?)
        }
        None if last.contains(':') => last.to_string(),
        None => format!("{last}:latest"),
    };
    crate::build::parse_tag(&name).ok()
}

impl State {
    /// Fetches every frame the image still needs, a batch at a time and
    /// only while no read waits for the registry, then commits the image
    /// as an ordinary local one named `tag` (a pull that finds every frame
    /// kept). Returns the line to log.
    pub fn fill(&self, root: &Path, tag: &str, stop: &Arc<AtomicBool>) -> Result<String> {
        let started = Instant::now();
        let todo: Vec<FrameKey> = self
            .needed
            .iter()
            .filter(|k| !self.blobs.is_local(k))
            .copied()
            .collect();
        for batch in self.blobs.batches(&todo) {
            let pack = batch[0].0;
            let offsets: Vec<u64> = batch.iter().map(|k| k.1).collect();
            let mut attempt = 0;
            loop {
                while self.blobs.waiting() > 0 && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if stop.load(Ordering::Relaxed) {
                    anyhow::bail!("stopped: unmounted before the image was complete");
                }
                self.blobs.fetch_ahead(&pack, &offsets);
                if offsets.iter().all(|&o| self.blobs.wait_for(&(pack, o))) {
                    break;
                }
                attempt += 1;
                if attempt == 5 {
                    anyhow::bail!(
                        "frames of pack {pack} could not be fetched 5 times (see the lines above); \
                         remount with --fill to try again"
                    );
                }
                std::thread::sleep(Duration::from_secs(1 << attempt));
            }
        }
        let store = Store::open(root)?;
        let _lock = crate::lock_store(&store, Some(stop), false, false)?;
        let index = crate::lifecycle::open_index(&store, &crate::output::Progress::new(true))?;
        let from = pull::Remote {
            blobs: self.remote.as_ref(),
            manifest: &self.manifest,
            origin: &self.opened.reference,
        };
        let opts = pull::PullOptions {
            threads: 1,
            cancel: stop.clone(),
        };
        let s = pull::pull(&store, &index, &from, tag, &opts, &pull::Quiet)?;
        drop(index);
        let _ = lazy::prune(&store, false);
        Ok(format!(
            "filled: {tag} is a local image now (manifest {}), {} frames fetched in the background in {:.1} s",
            s.manifest,
            todo.len(),
            started.elapsed().as_secs_f64()
        ))
    }
}

/// The stats of the lazy mount served by `pid` from the store at `root`.
pub fn read_stats(root: &Path, pid: u32) -> Option<MountStats> {
    let p = root.join("mounts").join(format!("{pid}.json"));
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("3T"), Ok(3 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("1e30T").is_err());
    }

    #[test]
    fn fill_names_the_image_after_the_repository_and_tag() {
        assert_eq!(
            default_tag("127.0.0.1:5000/lib/django:5.0.8").as_deref(),
            Some("django:5.0.8")
        );
        assert_eq!(
            default_tag("docker.io/library/python").as_deref(),
            Some("python:latest")
        );
        let d = format!("h:1/app@sha256:{}", "ab".repeat(32));
        assert_eq!(default_tag(&d).as_deref(), Some("app:abababababab"));
    }
}
