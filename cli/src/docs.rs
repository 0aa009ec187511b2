//! The shell around the commands: `--version`, `puzzle completion` and
//! `puzzle man`, all generated from the clap definitions.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::{exit, Cli};

/// The `--version` text: the package version, the git commit it was built
/// from (`unknown` outside a git checkout) and the on-disk format versions
/// this binary reads and writes.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\ncommit: {}\nstore format: {}\nmetadata format: {}\npack format: {}",
            env!("CARGO_PKG_VERSION"),
            env!("PUZZLE_GIT_COMMIT"),
            puzzle_store::layout::FORMAT_VERSION,
            puzzle_store::meta::META_VERSION,
            puzzle_store::pack::PACK_VERSION,
        )
    })
}

/// The `-V` text: the package version and the commit.
pub fn short_version() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("PUZZLE_GIT_COMMIT"),
        ")"
    )
}

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for.
    shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page per command (puzzle.1, puzzle-build.1, ...) into DIR
    /// (created if missing) instead of printing the top page on stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completion(args: &CompletionArgs) -> Result<u8> {
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "puzzle", &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(exit::OK)
}

/// Prints the top man page (roff) on stdout, or writes every page into a
/// directory.
pub fn man(args: &ManArgs) -> Result<u8> {
    let cmd = Cli::command();
    match &args.dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::flush(&mut out)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            eprintln!("wrote the man pages into {}", dir.display());
        }
    }
    Ok(exit::OK)
}
