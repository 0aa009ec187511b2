//! `puzzle`: convert OCI images into content-defined chunks, store each chunk
//! once, extract or mount any stored image, and report what images share.

mod build;
mod docs;
mod html;
mod lifecycle;
mod mount;
mod output;
mod stats;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
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
    /// Convert an OCI image into the store and tag it.
    Build(build::BuildArgs),
    /// Write a stored image's filesystem into a directory (created if missing, else must be empty).
    Extract(ExtractArgs),
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
    /// Print a JSON summary line on stdout.
    #[arg(long)]
    json: bool,
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

/// Where the store is, by the documented precedence.
fn store_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(s) = &cli.store {
        return Ok(s.clone());
    }
    if let Some(s) = std::env::var_os("PUZZLE_STORE").filter(|s| !s.is_empty()) {
        return Ok(s.into());
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(x).join("puzzle"));
    }
    let home = std::env::var_os("HOME")
        .filter(|s| !s.is_empty())
        .context("cannot find the store: set --store, PUZZLE_STORE, XDG_DATA_HOME or HOME")?;
    Ok(PathBuf::from(home).join(".local/share/puzzle"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::from(exit::OK);
            }
            eprintln!("puzzle: error: {e:#}");
            let code = exit_code(&e);
            if code == exit::NO_STORE {
                eprintln!(
                    "puzzle: hint: pass --store DIR or set PUZZLE_STORE to use another store"
                );
            }
            ExitCode::from(code)
        }
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
        match c.downcast_ref::<puzzle_store::Error>() {
            Some(puzzle_store::Error::ImageNotFound(_)) => return exit::NOT_FOUND,
            Some(puzzle_store::Error::NotAStore(_)) => return exit::NO_STORE,
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
        Command::Build(args) => build::run(&root, args, &progress),
        Command::Extract(args) => extract(&root, args, &progress),
        Command::Images(args) => images(&root, args),
        Command::Rm(args) => rm(&root, args),
        Command::Stats(args) => stats::run(&root, args),
        Command::Mount(args) => mount::mount(&root, args),
        Command::Umount(args) => mount::umount(args),
        Command::Verify(args) => lifecycle::verify(&root, args, &progress),
        Command::Gc(args) => lifecycle::gc(&root, args, &progress),
        Command::Completion(_) | Command::Man(_) => unreachable!("handled above"),
    }
}

fn extract(root: &std::path::Path, args: &ExtractArgs, progress: &Progress) -> Result<u8> {
    let store = Store::open(root)?;
    // Pinned for the whole extract: a concurrent gc keeps every blob it reads.
    let (img, _pin) = image::open_pinned(&store, &args.name)
        .with_context(|| format!("opening image {}", args.name))?;
    let started = std::time::Instant::now();
    // The bar's total is the image's logical size: what extract writes.
    let (_, total) = puzzle_store::stats::logical_size(&img.meta)?;
    let bar = progress.bar(&format!("extracting {}", args.name), total);
    let stats =
        puzzle_store::extract::extract_with_progress(&store, &img.meta, &args.dir, &mut |n| {
            bar.set_position(n)
        })
        .with_context(|| format!("extracting {} into {}", args.name, args.dir.display()))?;
    bar.finish_and_clear();
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
    if !args.json {
        writeln!(
            out,
            "{:<width$}  {:<19}  {:>10}  {:>10}  {:>10}  {:>5}",
            "NAME", "MANIFEST", "SIZE", "UNIQUE", "METADATA", "PACKS"
        )?;
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
            writeln!(
                out,
                "{:<width$}  sha256:{short}  {:>10}  {:>10}  {:>10}  {:>5}",
                r.name,
                size(|s| s.logical_bytes),
                size(|s| s.unique_stored_bytes),
                output::bytes(meta.size),
                packs
            )?;
        }
    }
    out.flush()?;
    Ok(exit::OK)
}

fn rm(root: &std::path::Path, args: &RmArgs) -> Result<u8> {
    let store = Store::open(root)?;
    let _lock = store.lock()?;
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
