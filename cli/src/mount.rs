//! `puzzle mount` and `puzzle umount`.
//!
//! A foreground mount serves until SIGINT/SIGTERM or an external unmount.
//! `--daemon` re-executes this binary detached (own process group, stdin and
//! stdout closed, stderr a pipe) and returns once the child says it is ready;
//! the child then logs to `--log FILE` or nowhere. The mount's source name
//! (`findmnt -o SOURCE`) is `puzzle:NAME:PID`, which is how `puzzle umount`
//! finds the daemon to wait for.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use puzzle_fuse::{ChunkCache, ImageFs, MountOptions};
use puzzle_store::{image, Store};

use crate::exit;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Image name, as given to `build --tag`; or a puzzle image in a
    /// registry, docker://[HOST[:PORT]/]REPO[:TAG|@DIGEST] (as `puzzle push`
    /// wrote it), mounted lazily: only the frames reads need are fetched,
    /// and kept in the store.
    name: String,
    /// Mount point: an existing empty directory (see --nonempty).
    dir: PathBuf,
    /// Mount even if DIR is not empty (its contents are hidden while mounted).
    #[arg(long)]
    nonempty: bool,
    /// Return once mounted, leaving a daemon serving the mount.
    #[arg(long)]
    daemon: bool,
    /// With --daemon: where the daemon writes its log (read errors, corrupt chunks).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Record which files and byte ranges are read, in first-access order,
    /// into FILE (written when the mount ends: unmount, `puzzle umount`,
    /// SIGINT or SIGTERM; format in docs/FORMAT.md, "Traces and prefetch lists"); for
    /// `build|push --prefetch`.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Size of the decompressed-chunk cache, in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    cache_mb: usize,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4, value_name = "N")]
    threads: usize,
    /// Let users other than the one mounting read the mount (FUSE allow_other).
    #[arg(long)]
    allow_other: bool,
    /// Honour the image's setuid and setgid bits (mounts are nosuid by default); for a container root, as root.
    #[arg(long)]
    suid: bool,
    /// Let the image's device nodes act as devices (mounts are nodev by default); for a container root, as root.
    #[arg(long)]
    dev: bool,
    #[command(flatten)]
    lazy: crate::lazy::LazyArgs,
}

/// Set in the environment of the daemon that `--daemon` starts (not a flag,
/// so that completion scripts and the man page do not offer it).
const DAEMON_CHILD: &str = "PUZZLE_MOUNT_DAEMON_CHILD";

#[derive(Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    dir: PathBuf,
    /// Detach now even if the mount is busy and return at once; the mount
    /// goes away, and its daemon exits, once nothing uses it.
    #[arg(long)]
    lazy: bool,
}

/// Log lines go to stderr until the daemon is ready, then to `--log` or nowhere.
struct Sink(Mutex<Box<dyn Write + Send>>);

impl Sink {
    fn line(&self, s: &str) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A closed stderr must not take the mount down.
        let _ = writeln!(w, "{s}");
        let _ = w.flush();
    }
    fn set(&self, w: Box<dyn Write + Send>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = w;
    }
}

/// One line of /proc/self/mountinfo that matters here.
struct MountEntry {
    point: PathBuf,
    fstype: String,
    source: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|&x| x == "-") else {
            continue;
        };
        if f.len() < sep + 3 || f.len() < 5 {
            continue;
        }
        out.push(MountEntry {
            point: PathBuf::from(unescape(f[4])),
            fstype: f[sep + 1].to_string(),
            source: unescape(f[sep + 2]),
        });
    }
    Ok(out)
}

/// The mount at exactly `dir` (the last one, if stacked).
fn mount_at(dir: &Path) -> Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.point == dir))
}

/// `dir` made absolute without touching a possibly dead mount under it.
/// `path` made absolute without resolving its last component (a stale
/// mount point cannot be looked at); `.` and `..` are resolved whole.
/// `what` names it in errors ("mount point", "log file").
fn absolute(path: &Path, what: &str) -> Result<PathBuf> {
    let Some(name) = path.file_name() else {
        return path
            .canonicalize()
            .with_context(|| format!("{what} {}", path.display()));
    };
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p
            .canonicalize()
            .with_context(|| format!("{what} {}: its directory {}", path.display(), p.display()))?,
        None => std::env::current_dir()?,
    };
    Ok(parent.join(name))
}

fn stale_hint(dir: &Path) -> String {
    format!(
        "{} is a mount left behind by a puzzle daemon that was killed; clear it with `puzzle umount {}`",
        dir.display(),
        dir.display()
    )
}

/// Refuses a mount point that is missing, not a directory, mounted or dead,
/// or (unless `nonempty`) holds anything.
fn check_mount_point(dir: &Path, nonempty: bool) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse module (`modprobe fuse`) or give the container the device (--device /dev/fuse)");
    }
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(stale_hint(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "mount point {} does not exist; create it first",
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("mount point {}", dir.display())),
        Ok(m) if !m.is_dir() => bail!("mount point {} is not a directory", dir.display()),
        Ok(_) => {}
    }
    if let Some(m) = mount_at(dir)? {
        // Cached attributes can hide a dead connection from stat: ask the pid.
        if m.source.starts_with("puzzle:") && daemon_pid(&m).is_some_and(|p| !alive(p)) {
            bail!(stale_hint(dir));
        }
        bail!(
            "mount point {} is busy: {} ({}) is mounted there; `puzzle umount {}` first",
            dir.display(),
            m.source,
            m.fstype,
            dir.display()
        );
    }
    let has_entries = std::fs::read_dir(dir)
        .with_context(|| format!("mount point {}", dir.display()))?
        .next()
        .is_some();
    if has_entries && !nonempty {
        bail!(
            "mount point {} is not empty (the mount would hide its contents); pass --nonempty to mount over them",
            dir.display()
        );
    }
    Ok(())
}

pub fn mount(root: &Path, args: &MountArgs) -> Result<u8> {
    let dir = absolute(&args.dir, "mount point")?;
    check_mount_point(&dir, args.nonempty)?;
    let daemon_child = std::env::var_os(DAEMON_CHILD).is_some();
    if args.daemon && !daemon_child {
        return spawn_daemon(root, args, &dir);
    }
    let sink = Arc::new(Sink(Mutex::new(Box::new(std::io::stderr()))));
    let log_sink = sink.clone();
    let log: puzzle_fuse::Log = Arc::new(move |line: &str| log_sink.line(line));

    let cache = Arc::new(ChunkCache::new(args.cache_mb.max(1) << 20));
    let mut lazy_state = None;
    let mut fs = if let Some(reference) = args.name.strip_prefix("docker://") {
        let mut largs = args.lazy.clone();
        if daemon_child {
            // The parent sends --creds on stdin, never in the command line.
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_ok() && !line.trim().is_empty() {
                largs
                    .registry
                    .set_creds(line.trim_end_matches('\n'))
                    .map_err(anyhow::Error::msg)?;
            }
        }
        let what = || format!("mounting {}", args.name);
        let l = crate::lazy::open(root, reference, &largs).with_context(what)?;
        let state = l.state();
        sink.line(&state.opened_line());
        lazy_state = Some(state);
        ImageFs::new(l.image, Arc::new(l.blobs), cache, log).with_context(what)?
    } else {
        let store = Store::open(root)?;
        let img = image::open_mapped(&store, &args.name, true)
            .with_context(|| format!("opening image {}", args.name))?;
        crate::warn_unpinned(&store, &args.name, &img.pin);
        ImageFs::new(img, Arc::new(store.blob_reader()), cache, log)
            .with_context(|| format!("opening image {}", args.name))?
    };
    let trace = match &args.trace {
        Some(path) => {
            // Created now so that a path that cannot be written fails before mounting.
            std::fs::File::create(path).with_context(|| {
                format!(
                    "creating trace file {} (check the directory exists and is writable)",
                    path.display()
                )
            })?;
            Some((path.clone(), fs.trace()))
        }
        None => None,
    };
    let opts = MountOptions {
        threads: args.threads.max(1),
        fsname: format!("puzzle:{}:{}", args.name, std::process::id()),
        allow_other: args.allow_other,
        suid: args.suid,
        dev: args.dev,
        ..MountOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let mounted = puzzle_fuse::mount(fs, &dir, &opts)
        .with_context(|| format!("mounting {} on {}", args.name, dir.display()))?;
    sink.line(&format!("mounted {} at {}", args.name, dir.display()));
    if daemon_child {
        let file = match &args.log {
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log {}", p.display()))?,
            None => std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .context("opening /dev/null")?,
        };
        // The parent stops reading our stderr now: anything written there
        // later (a warning from deep inside) goes to the log instead of
        // failing on a closed pipe.
        let _ = rustix::stdio::dup2_stderr(&file);
        let out: Box<dyn Write + Send> = match &args.log {
            Some(_) => Box::new(file),
            None => Box::new(std::io::sink()),
        };
        sink.set(out);
    }
    let prefetching = match &lazy_state {
        Some(st) if st.has_prefetch() => {
            let (st, stop, sink) = (st.clone(), stop.clone(), sink.clone());
            Some(std::thread::spawn(move || sink.line(&st.prefetch(&stop))))
        }
        _ => None,
    };
    let filling = match (&lazy_state, args.lazy.fill) {
        (Some(st), true) => {
            let reference = args.name.trim_start_matches("docker://");
            let tag = match &args.lazy.tag {
                Some(t) => t.clone(),
                None => crate::lazy::default_tag(reference).with_context(|| {
                    format!("{reference}: no image name to fill into; give --tag NAME")
                })?,
            };
            let (st, stop, root, sink) =
                (st.clone(), stop.clone(), root.to_path_buf(), sink.clone());
            Some(std::thread::spawn(move || {
                match st.fill(&root, &tag, &stop) {
                    Ok(line) => sink.line(&line),
                    Err(e) => sink.line(&format!("puzzle: --fill of {tag} failed: {e:#}")),
                }
            }))
        }
        _ => None,
    };
    let mut last_stats = Instant::now() - Duration::from_secs(2);
    let source = opts.fsname.clone();
    while !stop.load(Ordering::Relaxed) && mounted.is_alive() {
        if let Some(st) = &lazy_state {
            if last_stats.elapsed() >= Duration::from_secs(1) {
                st.write_stats(&dir);
                last_stats = Instant::now();
                // Unmounted from outside while a read waits for the
                // registry: the session lives on until that read gives up,
                // so look at the mount table too.
                if !mount_at(&dir).is_ok_and(|m| m.is_some_and(|m| m.source == source)) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(st) = &lazy_state {
        st.close();
        st.remove_stats();
        // Unmounted from outside: the reads that waited now fail, and the
        // session ends within moments.
        if !mount_at(&dir).is_ok_and(|m| m.is_some_and(|m| m.source == source)) {
            let until = Instant::now() + Duration::from_secs(2);
            while mounted.is_alive() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Background work stops: the prefetch is dropped; an unfinished fill
    // commits nothing (a commit under way gets a few seconds to finish:
    // what it leaves in tmp/ is cleared by the next writer).
    stop.store(true, Ordering::Relaxed);
    drop(prefetching);
    if let Some(f) = filling {
        let until = Instant::now() + Duration::from_secs(10);
        while !f.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let external = !mounted.is_alive();
    let unmounted = mounted
        .unmount()
        .with_context(|| format!("unmounting {}", dir.display()));
    // Written whether or not unmounting went well: the reads happened.
    if let Some((path, trace)) = trace {
        let written = write_trace(&path, &trace);
        if let Err(e) = &written {
            sink.line(&format!("puzzle: {e:#}"));
        }
        unmounted?;
        written?;
    } else {
        unmounted?;
    }
    if !external {
        sink.line(&format!("unmounted {}", dir.display()));
    }
    Ok(exit::OK)
}

/// Writes the recorded reads to `path` (see [`puzzle_store::prefetch::encode`]).
fn write_trace(path: &Path, trace: &puzzle_fuse::Trace) -> Result<()> {
    let entries = trace
        .entries()
        .with_context(|| format!("writing trace file {}", path.display()))?;
    let bytes = puzzle_store::prefetch::encode(&entries);
    std::fs::write(path, bytes).with_context(|| format!("writing trace file {}", path.display()))
}

fn spawn_daemon(root: &Path, args: &MountArgs, dir: &Path) -> Result<u8> {
    let exe = std::env::current_exe().context("finding the puzzle executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(root)
        .arg("mount")
        .arg(&args.name)
        .arg(dir)
        .arg("--daemon")
        .arg("--cache-mb")
        .arg(args.cache_mb.to_string())
        .arg("--threads")
        .arg(args.threads.to_string());
    if let Some(l) = &args.log {
        cmd.arg("--log").arg(absolute(l, "log file")?);
    }
    if let Some(t) = &args.trace {
        cmd.arg("--trace").arg(absolute(t, "trace file")?);
    }
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if args.suid {
        cmd.arg("--suid");
    }
    if args.dev {
        cmd.arg("--dev");
    }
    if args.nonempty {
        cmd.arg("--nonempty");
    }
    let (lazy_args, creds) = args.lazy.to_args();
    if args.name.starts_with("docker://") {
        cmd.args(lazy_args);
    }
    cmd.env(DAEMON_CHILD, "1")
        .stdin(if creds.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir("/")
        .process_group(0);
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    if let (Some(c), Some(mut stdin)) = (creds, child.stdin.take()) {
        // Dropped at once: the daemon reads one line, then end of file.
        writeln!(stdin, "{c}").context("passing credentials to the mount daemon")?;
    }
    let err = child.stderr.take().context("daemon stderr")?;
    let mut lines = Vec::new();
    for line in BufReader::new(err).lines() {
        let line = line.unwrap_or_default();
        if line.starts_with("mounted ") {
            // Warnings the daemon gave on the way (a read-only store).
            for l in &lines {
                eprintln!("{l}");
            }
            eprintln!("{line}");
            return Ok(exit::OK);
        }
        lines.push(line);
    }
    // The child ended before it was ready: pass on what it said.
    let status = child.wait().context("waiting for the mount daemon")?;
    for l in &lines {
        eprintln!("{l}");
    }
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .filter(|&c| c != 0)
        .unwrap_or(exit::FAILURE))
}

pub fn umount(args: &UmountArgs) -> Result<u8> {
    let dir = absolute(&args.dir, "mount point")?;
    let Some(m) = mount_at(&dir)? else {
        bail!("{} is not a mount point", dir.display());
    };
    if !(m.fstype.starts_with("fuse") && m.source.starts_with("puzzle:")) {
        bail!(
            "{} is not a puzzle mount ({} from {})",
            dir.display(),
            m.fstype,
            m.source
        );
    }
    let pid = daemon_pid(&m);
    let flags = if args.lazy {
        rustix::mount::UnmountFlags::DETACH
    } else {
        rustix::mount::UnmountFlags::empty()
    };
    match rustix::mount::unmount(&dir, flags) {
        Ok(()) => {}
        Err(rustix::io::Errno::BUSY) => bail!(
            "{} is busy (a process has a file open or its working directory there); \
             close it, or `puzzle umount --lazy {}`",
            dir.display(),
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("unmounting {}", dir.display())),
    }
    if args.lazy {
        // A busy mount's daemon serves until the last user lets go: do not
        // wait for it.
        let daemon = pid.map_or_else(
            || "its daemon".to_string(),
            |p| format!("its daemon (PID {p})"),
        );
        eprintln!(
            "detached {}; {daemon} exits once the mount is no longer in use",
            dir.display()
        );
        return Ok(exit::OK);
    }
    if let Some(pid) = pid {
        // Wait for the daemon to finish (a zombie counts as finished).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            eprintln!("puzzle: warning: mount daemon {pid} is still running after unmount");
        }
    }
    eprintln!("unmounted {}", dir.display());
    Ok(exit::OK)
}

/// The daemon's pid, from the mount source `puzzle:NAME:PID`.
fn daemon_pid(m: &MountEntry) -> Option<u32> {
    m.source.rsplit(':').next().and_then(|p| p.parse().ok())
}

fn alive(pid: u32) -> bool {
    let stat = |p: &str| std::fs::read_to_string(format!("/proc/{p}/stat")).ok();
    // The command name, between the first '(' and the last ')'.
    let comm = |s: &str| Some(s.get(s.find('(')? + 1..s.rfind(')')?)?.to_owned());
    match (stat(&pid.to_string()), stat("self")) {
        (Some(s), Some(own)) => {
            // Only a process named as this one (the daemon runs this same
            // executable, whatever its file name) counts: the pid may have
            // been reused.
            let state = s
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            comm(&s).is_some() && comm(&s) == comm(&own) && state != Some("Z")
        }
        _ => false,
    }
}

#[derive(Args, Debug)]
pub struct MountsArgs {
    /// One JSON record per mount (type "mount"), with the lazy mount's
    /// counters in full.
    #[arg(long)]
    json: bool,
}

/// `puzzle mounts`: the puzzle mounts of this machine, and for lazy mounts
/// of this store what they fetched (from `STORE/mounts/PID.json`).
pub fn list(root: &Path, args: &MountsArgs) -> Result<u8> {
    use crate::output::{bytes, Envelope};
    let ours: Vec<MountEntry> = mounts()?
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && m.source.starts_with("puzzle:"))
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.json {
        writeln!(
            out,
            "{:<24}  {:>7}  {:>6}  {:>10}  {:>8}  {:>7}  {:>7}  {:>8}  IMAGE",
            "MOUNT POINT", "PID", "LOCAL", "FETCHED", "REQUESTS", "HITS", "MISSES", "FAILURES"
        )?;
    }
    for m in &ours {
        let pid = daemon_pid(m);
        let image = m
            .source
            .strip_prefix("puzzle:")
            .and_then(|s| s.rsplit_once(':'))
            .map_or(m.source.as_str(), |(name, _)| name);
        let lazy = image
            .starts_with("docker://")
            .then(|| pid.and_then(|p| crate::lazy::read_stats(root, p)))
            .flatten();
        if args.json {
            let line = Envelope::new(
                "mount",
                serde_json::json!({
                    "dir": m.point,
                    "image": image,
                    "pid": pid,
                    "alive": pid.is_some_and(alive),
                    "lazy": lazy,
                }),
            );
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
            continue;
        }
        let dash = || "-".to_string();
        let (local, fetched, requests, hits, misses, failures) = match &lazy {
            Some(s) => (
                format!("{:.0}%", s.local_share * 100.0),
                bytes(s.bytes_received),
                s.requests.to_string(),
                (s.kept_hits + s.local_hits).to_string(),
                s.misses.to_string(),
                s.failures.to_string(),
            ),
            None if image.starts_with("docker://") => {
                (dash(), dash(), dash(), dash(), dash(), dash())
            }
            None => ("100%".into(), dash(), dash(), dash(), dash(), dash()),
        };
        writeln!(
            out,
            "{:<24}  {:>7}  {:>6}  {:>10}  {:>8}  {:>7}  {:>7}  {:>8}  {image}",
            m.point.display(),
            pid.map_or_else(dash, |p| p.to_string()),
            local,
            fetched,
            requests,
            hits,
            misses,
            failures
        )?;
    }
    Ok(exit::OK)
}
