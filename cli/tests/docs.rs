//! `--version`, `puzzle completion` and `puzzle man`.

use std::process::Command;

use crate::util::*;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_puzzle"));
    // No store is needed (nor looked for): point it nowhere.
    c.env_remove("PUZZLE_STORE")
        .env_remove("XDG_DATA_HOME")
        .env_remove("HOME");
    c
}

/// The subcommands every completion script and man page must name.
const COMMANDS: [&str; 16] = [
    "init",
    "build",
    "pull",
    "push",
    "export",
    "extract",
    "images",
    "rm",
    "stats",
    "mount",
    "umount",
    "mounts",
    "verify",
    "gc",
    "completion",
    "man",
];

#[test]
fn version_names_the_commit_and_the_format_versions() {
    let r = ok(bin().arg("--version"));
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], format!("puzzle {}", env!("CARGO_PKG_VERSION")));
    let git = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output();
    let commit = match git {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
        _ => "unknown".to_string(),
    };
    assert_eq!(
        lines[1..],
        [
            format!("commit: {commit}"),
            format!("store format: {}", puzzle_store::layout::FORMAT_VERSION),
            format!("metadata format: {}", puzzle_store::meta::META_VERSION),
            format!("pack format: {}", puzzle_store::pack::PACK_VERSION),
        ]
    );
    let short = ok(bin().arg("-V"));
    assert_eq!(
        short.stdout.trim(),
        format!("puzzle {} ({commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bash_completion_parses_and_names_every_command() {
    let r = ok(bin().args(["completion", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("puzzle.bash");
    std::fs::write(&script, &r.stdout).unwrap();
    let check = run(Command::new("bash").arg("-n").arg(&script));
    assert_eq!(check.code, 0, "bash -n: {}", check.stderr);
    // Sourced, it completes `puzzle <TAB>` with every command.
    let words = ok(Command::new("bash").arg("-c").arg(format!(
        "source {} && COMP_WORDS=(puzzle '') COMP_CWORD=1 COMP_LINE='puzzle ' COMP_POINT=7 \
         && _puzzle puzzle '' puzzle && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    )));
    let words: Vec<&str> = words.stdout.lines().collect();
    for c in COMMANDS {
        assert!(
            words.contains(&c),
            "`puzzle <TAB>` does not offer {c}: {words:?}"
        );
    }
    // Each shell names every command as a command (not just somewhere).
    let zsh = ok(bin().args(["completion", "zsh"])).stdout;
    let fish = ok(bin().args(["completion", "fish"])).stdout;
    for c in COMMANDS {
        assert!(zsh.contains(&format!("\n'{c}:")), "zsh: no command {c}");
        assert!(
            fish.contains(&format!("__fish_puzzle_needs_command\" -f -a \"{c}\"")),
            "fish: no command {c}"
        );
    }
    // Internal plumbing is not offered.
    for script in [&r.stdout, &zsh, &fish] {
        assert!(!script.contains("daemon-child"), "{script}");
    }
    let r = run(bin().args(["completion", "tcsh"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn man_pages_are_roff_for_every_command() {
    let r = ok(bin().arg("man"));
    assert!(r.stdout.contains(".TH puzzle 1"), "{}", r.stdout);
    for section in [".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", "PUZZLE_STORE"] {
        assert!(r.stdout.contains(section), "no {section}: {}", r.stdout);
    }
    for c in COMMANDS {
        assert!(
            r.stdout.contains(&format!("puzzle\\-{c}(1)")),
            "the top page does not name puzzle-{c}(1)"
        );
    }
    if have_quietly("man") {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("puzzle.1");
        std::fs::write(&page, &r.stdout).unwrap();
        let shown = ok(Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80"));
        assert!(shown.stdout.contains("SYNOPSIS"), "{}", shown.stdout);
        assert!(shown.stdout.contains("--no-progress"), "{}", shown.stdout);
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    ok(bin().arg("man").arg("--dir").arg(&out));
    for c in COMMANDS {
        let page = std::fs::read_to_string(out.join(format!("puzzle-{c}.1")))
            .unwrap_or_else(|e| panic!("no page for {c}: {e}"));
        assert!(page.contains(&format!(".TH puzzle-{c} 1")), "{page}");
    }
    let build = std::fs::read_to_string(out.join("puzzle-build.1")).unwrap();
    assert!(build.contains("chunk\\-avg"), "{build}");
    let top = std::fs::read_to_string(out.join("puzzle.1")).unwrap();
    assert_eq!(top, r.stdout, "puzzle.1 differs from `puzzle man`");
}

/// Whether `tool` is on PATH (man is optional even when tools are required).
fn have_quietly(tool: &str) -> bool {
    puzzle_testkit::tool_available(tool)
}
