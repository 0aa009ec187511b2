//! `puzzle`: convert OCI images into content-defined chunks, store each chunk
//! once, extract or mount any stored image, and report what images share.

mod build;
mod docs;
mod export;
mod html;
mod lazy;
mod lifecycle;
mod mount;
mod output;
mod prefetch;
mod pull;
mod push;
mod registry_args;
mod stats;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use puzzle_store::{image, Store};

use crate::output::{Envelope, Progress};

/// Exit codes (documented in README.md, "Exit codes").
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const NO_STORE: u8 = 4;
    /// `verify` found problems in the store.
    pub const PROBLEMS: u8 = 5;
    /// Stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Parser, Debug)]
#[command(
    name = "puzzle",
    version = docs::short_version(),
    long_version = docs::long_version(),
    about,
    max_term_width = 100
)]
struct Cli {
    /// Store directory [default: $PUZZLE_STORE, else $XDG_DATA_HOME/puzzle, else ~/.local/share/puzzle]
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Never draw progress bars (they are drawn only when stderr is a terminal anyway).
    #[arg(long, global = true)]
    no_progress: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a store (in a new or empty directory), or restore a lost puzzle.json with --recover.
    Init(InitArgs),
    /// Convert an OCI image into the store and tag it.
    Build(build::BuildArgs),
    /// Fetch a puzzle image from a registry, only the frames holding chunks the store lacks.
    Pull(pull::PullArgs),
    /// Write a stored image's filesystem into a directory (created if missing, else must be empty).
    Extract(ExtractArgs),
    /// Write a stored image back as a plain OCI image (tar+gzip layers) to oci:DIR[:TAG] or an archive.
    Export(export::ExportArgs),
    /// Push a stored image to a registry as is (same manifest digest): docker://REF.
    ///
    /// The manifest goes byte for byte, so the registry names the image by the
    /// digest `puzzle images` shows (printed on stdout). Blobs the repository
    /// has are not sent; blobs pushed before to another repository of the same
    /// registry are mounted from there. The manifest goes last: Ctrl-C stops
    /// the push before it (exit 130), and pushing again sends only what had not
    /// arrived. The image is pinned against gc; the store gains only a note of
    /// which repositories hold which blobs (remotes/).
    Push(push::PushArgs),
    /// List stored images.
    Images(ImagesArgs),
    /// Remove an image's tag (its chunks stay until `puzzle gc`).
    Rm(RmArgs),
    /// Report what images share and cost: a table, --json, or an --html page; --diff A B lists changed files.
    Stats(stats::StatsArgs),
    /// Mount a stored image read-only with FUSE (foreground until Ctrl-C, or --daemon).
    Mount(mount::MountArgs),
    /// Unmount a `puzzle mount` and wait for its daemon to exit.
    Umount(mount::UmountArgs),
    /// List puzzle mounts; for lazy ones, bytes fetched, requests, cache hits and the share now local.
    Mounts(mount::MountsArgs),
    /// Check every image's manifest, metadata and packs, and the index; exit 5 on any problem.
    Verify(lifecycle::VerifyArgs),
    /// Delete what no image (tagged or in use) needs; rewrite sparse packs.
    Gc(lifecycle::GcArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completion(docs::CompletionArgs),
    /// Print the man page (roff) on stdout, or write one page per command with --dir.
    Man(docs::ManArgs),
}

#[derive(Args, Debug)]
struct ExtractArgs {
    /// Image name, as given to `build --tag`.
    name: String,
    /// Target directory.
    dir: PathBuf,
    /// If the extract fails, keep what it wrote (by default it is removed).
    #[arg(long)]
    keep_partial: bool,
    /// Print a JSON summary line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct InitArgs {
    /// The store directory [default: the store, see --store].
    dir: Option<PathBuf>,
    /// Restore the puzzle.json of a store that lost it, from the settings its manifests record.
    #[arg(long, conflicts_with_all = ["chunk_min", "chunk_avg", "chunk_max", "zstd_level", "frame_target"])]
    recover: bool,
    #[command(flatten)]
    settings: build::StoreSettings,
}

#[derive(Args, Debug)]
struct ImagesArgs {
    /// Print one JSON line per image on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RmArgs {
    /// Image names to remove.
    #[arg(required = true)]
    names: Vec<String>,
}

/// Where the store is, by the documented precedence. Made absolute here,
/// once, so every command (and a mount daemon, which runs from `/`) sees the
/// same store whatever its working directory.
fn store_dir(cli: &Cli) -> Result<PathBuf> {
    let dir = if let Some(s) = &cli.store {
        s.clone()
    } else if let Some(s) = std::env::var_os("PUZZLE_STORE").filter(|s| !s.is_empty()) {
        s.into()
    } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        PathBuf::from(x).join("puzzle")
    } else {
        let home = std::env::var_os("HOME")
            .filter(|s| !s.is_empty())
            .context("cannot find the store: set --store, PUZZLE_STORE, XDG_DATA_HOME or HOME")?;
        PathBuf::from(home).join(".local/share/puzzle")
    };
    if dir.as_os_str().is_empty() {
        return Err(UsageError("--store is empty: give the store directory".into()).into());
    }
    std::path::absolute(&dir).with_context(|| format!("finding the store {}", dir.display()))
}

/// A command line that parsed but asks for something invalid (a bad
/// `--platform`, source or chunk size): exits with [`exit::USAGE`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            if code == exit::OK {
                // --help, --version
                let _ = e.print();
                return ExitCode::from(code);
            }
            let message = usage_line(&e.render().to_string());
            if std::env::args_os().any(|a| a == "--json") {
                let _ = output::print_json(&output::error_record(&message, code));
            }
            eprintln!("puzzle: error: {message}");
            return ExitCode::from(code);
        }
    };
    // Whether the command prints JSON Lines: a failure is a record there too.
    let json = matches
        .subcommand()
        .and_then(|(_, m)| m.try_get_one::<bool>("json").ok().flatten().copied())
        .unwrap_or(false);
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::from(exit::OK);
            }
            let code = exit_code(&e);
            if json {
                let _ = output::print_json(&output::error_record(&format!("{e:#}"), code));
            }
            eprintln!("puzzle: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

/// clap's multi-line usage error as one line: the message (with the
/// indented lines that complete it, such as missing arguments), then its
/// tips and the usage in parentheses.
fn usage_line(text: &str) -> String {
    let mut paragraphs = text.split("\n\n");
    let first = paragraphs.next().unwrap_or_default();
    let mut msg = first
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(rest) = msg.strip_prefix("error: ") {
        msg = rest.to_string();
    }
    let mut extras: Vec<String> = Vec::new();
    for p in paragraphs.map(str::trim) {
        if p.starts_with("tip: ") {
            extras.push(p.lines().map(str::trim).collect::<Vec<_>>().join(" "));
        } else if let Some(u) = p.strip_prefix("Usage: ") {
            extras.push(format!(
                "usage: {}",
                u.lines().next().unwrap_or_default().trim()
            ));
        }
    }
    if extras.is_empty() {
        msg
    } else {
        format!("{msg} ({})", extras.join("; "))
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn exit_code(e: &anyhow::Error) -> u8 {
    for c in e.chain() {
        if c.is::<UsageError>() {
            return exit::USAGE;
        }
        match c.downcast_ref::<puzzle_store::Error>() {
            Some(puzzle_store::Error::ImageNotFound(_)) => return exit::NOT_FOUND,
            Some(puzzle_store::Error::NotAStore(_) | puzzle_store::Error::Unusable { .. }) => {
                return exit::NO_STORE
            }
            _ => {}
        }
    }
    exit::FAILURE
}

fn run(cli: &Cli) -> Result<u8> {
    // Commands that need no store.
    match &cli.command {
        Command::Completion(args) => return docs::completion(args),
        Command::Man(args) => return docs::man(args),
        _ => {}
    }
    let root = store_dir(cli)?;
    let progress = Progress::new(cli.no_progress);
    match &cli.command {
        Command::Init(args) => init(args.dir.as_deref().unwrap_or(&root), args),
        Command::Build(args) => build::run(&root, args, &progress),
        Command::Pull(args) => pull::run(&root, args, &progress),
        Command::Extract(args) => extract(&root, args, &progress),
        Command::Export(args) => export::run(&root, args, &progress),
        Command::Push(args) => push::run(&root, args, &progress),
        Command::Images(args) => images(&root, args),
        Command::Rm(args) => rm(&root, args),
        Command::Stats(args) => stats::run(&root, args),
        Command::Mount(args) => mount::mount(&root, args),
        Command::Umount(args) => mount::umount(args),
        Command::Mounts(args) => mount::list(&root, args),
        Command::Verify(args) => lifecycle::verify(&root, args, &progress),
        Command::Gc(args) => lifecycle::gc(&root, args, &progress),
        Command::Completion(_) | Command::Man(_) => unreachable!("handled above"),
    }
}

/// A flag the first SIGINT or SIGTERM sets, for a command to stop at its
/// next check; a second signal ends the process at once (exit 130).
pub fn interrupt_flag() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(
            sig,
            i32::from(exit::INTERRUPTED),
            flag.clone(),
        )
        .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
        .context("installing signal handlers")?;
    }
    Ok(flag)
}

fn extract(root: &std::path::Path, args: &ExtractArgs, progress: &Progress) -> Result<u8> {
    use puzzle_store::extract::{ExtractError, ExtractOptions, Partial};
    let interrupted = interrupt_flag()?;
    let store = Store::open(root)?;
    // Pinned for the whole extract: a concurrent gc keeps every blob it reads.
    let (img, pin) = image::open_pinned(&store, &args.name)
        .with_context(|| format!("opening image {}", args.name))?;
    warn_unpinned(&store, &args.name, &pin);
    let started = std::time::Instant::now();
    // The bar's total is the image's logical size: what extract writes.
    let (_, total) = puzzle_store::stats::logical_size(&img.meta)?;
    let bar = progress.bar(&format!("extracting {}", args.name), total);
    let opts = ExtractOptions {
        keep_partial: args.keep_partial,
        cancel: Some(&interrupted),
    };
    let res = puzzle_store::extract::extract_with(&store, &img.meta, &args.dir, &opts, &mut |n| {
        bar.set_position(n)
    });
    bar.finish_and_clear();
    let stats = match res {
        Ok(stats) => stats,
        Err(failed) => {
            let ExtractError { error, partial } = *failed;
            let dir = args.dir.display();
            let what = match &partial {
                Partial::Nothing => String::new(),
                Partial::Removed => "partial tree removed; --keep-partial keeps it".to_string(),
                Partial::Kept => "partial tree kept, --keep-partial".to_string(),
                Partial::NotRemoved(e) => format!("removing the partial tree failed: {e}"),
            };
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                let msg = match partial {
                    Partial::Nothing => "interrupted, nothing written".to_string(),
                    _ => format!("interrupted, {what}"),
                };
                if args.json {
                    output::print_json(&output::error_record(&msg, exit::INTERRUPTED))?;
                }
                eprintln!("{msg}");
                return Ok(exit::INTERRUPTED);
            }
            let what = if what.is_empty() {
                what
            } else {
                format!(" ({what})")
            };
            return Err(anyhow::Error::new(error)
                .context(format!("extracting {} into {dir}{what}", args.name)));
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        output::print_json(&Envelope::new(
            "extract",
            serde_json::json!({
                "image": args.name,
                "target": args.dir.display().to_string(),
                "entries": stats.entries,
                "files": stats.files,
                "bytes": stats.bytes,
                "seconds": secs,
            }),
        ))?;
    } else {
        eprintln!(
            "extracted {}: {} entries, {} files, {} in {:.2}s",
            args.name,
            stats.entries,
            stats.files,
            output::bytes(stats.bytes),
            secs
        );
    }
    Ok(exit::OK)
}

/// Says so when the store could not be written to pin an image in use.
pub fn warn_unpinned(store: &Store, name: &str, pin: &puzzle_store::layout::Pin) {
    if !pin.is_held() {
        eprintln!(
            "puzzle: warning: store {} is read-only here, so {name} is not pinned: \
             a gc run by someone who can write could remove it while in use",
            store.root().display()
        );
    }
}

fn init(dir: &std::path::Path, args: &InitArgs) -> Result<u8> {
    if args.recover {
        let r = puzzle_store::create::recover_config(dir)?;
        eprintln!(
            "restored {} from {} manifest(s): chunker {}, {}; run `puzzle verify` to check the store",
            dir.join("puzzle.json").display(),
            r.manifests,
            r.config.chunker_label(),
            r.config.compression.label()
        );
        return Ok(exit::OK);
    }
    let store = args.settings.open_or_create(dir)?;
    let cfg = store.config();
    eprintln!(
        "store {}: chunker {}, {}",
        dir.display(),
        cfg.chunker_label(),
        cfg.compression.label()
    );
    Ok(exit::OK)
}

fn images(root: &std::path::Path, args: &ImagesArgs) -> Result<u8> {
    let store = match Store::open(root) {
        Ok(s) => s,
        Err(puzzle_store::Error::NotAStore(_)) if args.json => return Ok(exit::OK),
        Err(e) => return Err(e.into()),
    };
    let refs = store.images()?;
    let names: Vec<String> = refs.iter().map(|r| r.name.clone()).collect();
    // Sizes as `stats` computes them over every image of the store: UNIQUE
    // is what only this image holds. A damaged image leaves every UNIQUE
    // unknown (its chunks are), so the list comes without sizes then.
    let sized = if names.is_empty() {
        None
    } else {
        match stats::load(&store, &names) {
            Ok(loaded) => Some(loaded),
            Err(e) => {
                eprintln!("puzzle: warning: no sizes (run `puzzle verify`): {e:#}");
                None
            }
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(4);
    // Pulled images name the manifest they came from (docs/FORMAT.md, "Pull").
    let origin = |r: &puzzle_store::layout::ImageRef| {
        let a = &r.manifest.annotations;
        let m = a.get(puzzle_store::manifest::ANNOTATION_ORIGIN_MANIFEST)?;
        Some((
            m.clone(),
            a.get(puzzle_store::manifest::ANNOTATION_ORIGIN_REF)
                .cloned(),
        ))
    };
    let any_pulled = refs.iter().any(|r| origin(r).is_some());
    if !args.json {
        write!(
            out,
            "{:<width$}  {:<19}  {:>10}  {:>10}  {:>10}  {:>5}",
            "NAME", "MANIFEST", "SIZE", "UNIQUE", "METADATA", "PACKS"
        )?;
        if any_pulled {
            write!(out, "  PULLED")?;
        }
        writeln!(out)?;
    }
    for (i, r) in refs.iter().enumerate() {
        let (digest, m, s) = match &sized {
            Some((opened, report)) => (
                opened[i].manifest_digest,
                opened[i].manifest.clone(),
                Some(&report.images[i]),
            ),
            None => {
                let m = image::read_manifest(&store, &r.manifest.digest)
                    .with_context(|| format!("reading image {}", r.name))?;
                (r.manifest.digest, m, None)
            }
        };
        let meta = m.metadata().expect("checked by read_manifest");
        let packs = m.packs().count();
        let pack_bytes: u64 = m.packs().map(|p| p.size).sum();
        if args.json {
            let line = Envelope::new(
                "image",
                serde_json::json!({
                    "name": r.name,
                    "manifest": digest.to_string(),
                    "metadata": meta.digest.to_string(),
                    "metadata_bytes": meta.size,
                    "packs": packs,
                    "pack_bytes": pack_bytes,
                    "config": m.config.digest.to_string(),
                    "remote_manifest": origin(r).map(|o| o.0),
                    "origin": origin(r).and_then(|o| o.1),
                    "files": s.map(|s| s.files),
                    "logical_bytes": s.map(|s| s.logical_bytes),
                    "unique_bytes": s.map(|s| s.unique_bytes),
                    "unique_stored_bytes": s.map(|s| s.unique_stored_bytes),
                }),
            );
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        } else {
            let short = &digest.hex()[..12];
            let size = |f: fn(&puzzle_store::stats::ImageStats) -> u64| {
                s.map_or_else(|| "-".to_string(), |s| output::bytes(f(s)))
            };
            write!(
                out,
                "{:<width$}  sha256:{short}  {:>10}  {:>10}  {:>10}  {:>5}",
                r.name,
                size(|s| s.logical_bytes),
                size(|s| s.unique_stored_bytes),
                output::bytes(meta.size),
                packs
            )?;
            if any_pulled {
                let remote = origin(r)
                    .map_or_else(|| "-".to_string(), |(m, _)| m.chars().take(19).collect());
                write!(out, "  {remote}")?;
            }
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

/// Takes the store's writer lock; says on stderr whom it waits for when
/// another process holds it for a while. `cancel` stops the wait.
/// `use_reserve`: see [`puzzle_store::layout::LockOptions::use_reserve`].
pub fn lock_store(
    store: &Store,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    keep_tmp: bool,
    use_reserve: bool,
) -> Result<puzzle_store::layout::StoreLock> {
    if !store.is_writable() {
        bail!(
            "store {} is read-only here: this command writes to it; run it where the store is writable \
             (images, stats, extract, mount, verify and gc --dry-run work read-only)",
            store.root().display()
        );
    }
    let mut on_wait = |holder: Option<u32>| match holder {
        Some(pid) => eprintln!("waiting for the store lock held by PID {pid}"),
        None => eprintln!("waiting for the store lock held by another process"),
    };
    let lock = store.lock_with(puzzle_store::layout::LockOptions {
        keep_tmp,
        on_wait: Some(&mut on_wait),
        cancel,
        use_reserve,
    })?;
    if let Some(free) = lock.released_reserve() {
        eprintln!(
            "puzzle: warning: the disk holding the store is almost full ({} free): \
             this command uses the store's {} reserve",
            output::bytes(free),
            output::bytes(puzzle_store::layout::RESERVE_BYTES)
        );
    }
    Ok(lock)
}

fn rm(root: &std::path::Path, args: &RmArgs) -> Result<u8> {
    let store = Store::open(root)?;
    let _lock = lock_store(&store, None, false, true)?;
    let mut code = exit::OK;
    for name in &args.names {
        match store.remove_tag(name) {
            Ok(_) => eprintln!("removed {name} (run `puzzle gc` to reclaim space)"),
            Err(e @ puzzle_store::Error::ImageNotFound(_)) => {
                eprintln!("puzzle: error: {e}");
                code = exit::NOT_FOUND;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(code)
}
