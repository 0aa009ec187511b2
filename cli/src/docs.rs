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

/// Exit codes and environment variables, the sections clap does not know:
/// (title, paragraphs as `(tag, text)`).
const EXTRA_SECTIONS: [(&str, &[(&str, &str)]); 2] = [
    (
        "EXIT STATUS",
        &[
            ("0", "Success."),
            (
                "1",
                "Failure; the message on stderr says what failed and what to do.",
            ),
            ("2", "Wrong arguments (usage error)."),
            ("3", "An image named is not in the store."),
            ("4", "No puzzle store at the given path (see --store)."),
            ("5", "verify found problems in the store."),
            (
                "130",
                "Interrupted by SIGINT or SIGTERM; nothing partial was kept.",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "PUZZLE_STORE",
                "The store directory when --store is not given.",
            ),
            (
                "XDG_DATA_HOME, HOME",
                "The default store is $XDG_DATA_HOME/puzzle, else ~/.local/share/puzzle.",
            ),
            (
                "REGISTRY_AUTH_FILE, DOCKER_CONFIG",
                "Where registry credentials are read for docker:// references \
                 (see the README for the order of the credential sources).",
            ),
        ],
    ),
];

/// The top man page: clap's sections, then EXIT STATUS and ENVIRONMENT
/// before VERSION.
fn render_top(cmd: clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap_mangen::roff::{bold, roman, Roff};
    let man = clap_mangen::Man::new(cmd);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    let mut roff = Roff::default();
    for (title, items) in EXTRA_SECTIONS {
        roff.control("SH", [title]);
        for (tag, text) in items {
            roff.control("TP", []);
            roff.text([bold(*tag)]);
            roff.text([roman(*text)]);
        }
    }
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// Prints the top man page (roff) on stdout, or writes every page into a
/// directory (`puzzle.1` and one `puzzle-COMMAND.1` per command).
pub fn man(args: &ManArgs) -> Result<u8> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    match &args.dir {
        None => {
            let mut out = std::io::stdout().lock();
            render_top(cmd, &mut out)?;
            std::io::Write::flush(&mut out)?;
        }
        Some(dir) => {
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(dir)?;
                for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                    clap_mangen::generate_to(sub.clone(), dir)?;
                }
                let mut file = std::fs::File::create(dir.join("puzzle.1"))?;
                render_top(cmd.clone(), &mut file)?;
                file.sync_all()
            };
            write().with_context(|| format!("writing man pages into {}", dir.display()))?;
            eprintln!("wrote the man pages into {}", dir.display());
        }
    }
    Ok(exit::OK)
}
