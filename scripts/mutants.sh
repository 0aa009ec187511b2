#!/usr/bin/env bash
# Mutation testing of the pure-logic modules of chunker and store against
# each crate's own fast tests (the cli integration tests are not run).
# Prints caught/missed per file, then every missed mutant that
# scripts/mutants-explained.txt does not explain. Not part of CI: on 2
# cores a module takes 10 to 60 minutes.
#
#   scripts/mutants.sh                        # every module below, in turn
#   scripts/mutants.sh store/src/pack.rs      # one module
#   scripts/mutants.sh --report [FILE...]     # the table of the last results
#
# MUTANTS_TIMEOUT (default 240) caps each mutant's tests, in seconds, and
# its build unless MUTANTS_BUILD_TIMEOUT is set: a mutant that makes the
# chunker loop forever costs the whole cap, so a module whose tests take
# seconds runs faster with a small MUTANTS_TIMEOUT (the chunker's: 30).
# MUTANTS_ARGS adds cargo-mutants options (e.g. `-F Raw::drop` to rerun only
# the mutants whose names match). Results stay in
# target/mutants-out/<crate>-<module>/mutants.out.
# cargo-mutants is installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

files=(
    store/src/frame.rs store/src/pack.rs store/src/meta.rs store/src/digest.rs
    chunker/src/cut.rs chunker/src/stream.rs chunker/src/id.rs chunker/src/params.rs
)
run=1
if [ "${1:-}" = --report ]; then
    run=0
    shift
fi
[ $# -gt 0 ] && files=("$@")
out=$root/target/mutants-out
explained=$root/scripts/mutants-explained.txt

if [ $run = 1 ]; then
    if ! cargo mutants --version >/dev/null 2>&1; then
        cargo install --locked cargo-mutants
    fi
    # Mutants are tested one at a time, in place, in a copy of the tree
    # under target/ that persists between runs, building into the
    # workspace's own target/ with the `mutants` profile (no debuginfo):
    # dependencies are built once, and each mutant rebuilds only the crate
    # it is in. The working tree is never touched, so editing it during a
    # run is safe. MUTANTS_WORK (another copy) with CARGO_TARGET_DIR (another
    # target directory) lets two runs go at once.
    src=${MUTANTS_WORK:-$root/target/mutants-work}/src
    rm -rf "$src"
    mkdir -p "$src" "$out"
    # -m: the files are newer than any earlier build of a mutant in the copy.
    git ls-files -co --exclude-standard | grep -v '^target/' | tar -cf - -T - | tar -xmf - -C "$src"
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
fi

# A mutant's name without its line and column, which move as code is edited.
strip() { sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /'; }
count() { if [ -s "$1" ]; then grep -c . "$1"; else echo 0; fi; }

for f in "${files[@]}"; do
    [ $run = 1 ] || break
    # Each crate's own tests, built and run alone: the store's unit tests;
    # the chunker's unit tests and its golden and property tests (tests/).
    # Never the cli's integration tests.
    case $f in
        chunker/*) pkg=puzzle-chunker; tests=(--cargo-arg=--lib --cargo-arg=--test=tests) ;;
        store/*) pkg=puzzle-store; tests=(--cargo-arg=--lib) ;;
        *) echo "mutants.sh: $f is not in chunker/ or store/" >&2; exit 2 ;;
    esac
    dir=$out/$pkg-$(basename "$f" .rs)
    rm -rf "$dir"
    # Exit status 2 (missed) and 3 (timeouts): reported below.
    nice -n 10 cargo mutants --in-place -d "$src" -p "$pkg" -f "$f" \
        --profile mutants --test-tool cargo \
        --timeout "${MUTANTS_TIMEOUT:-240}" --build-timeout "${MUTANTS_BUILD_TIMEOUT:-${MUTANTS_TIMEOUT:-240}}" \
        --no-shuffle -o "$dir" "${tests[@]}" ${MUTANTS_ARGS:-} || { rc=$?; [ $rc -eq 2 ] || [ $rc -eq 3 ]; }
done

printf '\n%-24s %6s %6s %6s %8s %8s %10s\n' file viable caught missed unviable timeout explained
for f in "${files[@]}"; do
    pkg=puzzle-store; case $f in chunker/*) pkg=puzzle-chunker ;; esac
    m=$out/$pkg-$(basename "$f" .rs)/mutants.out
    if [ ! -d "$m" ]; then
        printf '%-24s %6s\n' "$f" "not measured"
        continue
    fi
    c=$(count "$m/caught.txt"); s=$(count "$m/missed.txt")
    u=$(count "$m/unviable.txt"); t=$(count "$m/timeout.txt")
    e=0
    if [ -f "$m/missed.txt" ]; then
        e=$(strip <"$m/missed.txt" | grep -cxF -f <(grep -v '^#' "$explained" | sed 's/ # .*//') || true)
    fi
    printf '%-24s %6s %6s %6s %8s %8s %10s\n' "$f" $((c + s + t)) "$c" "$s" "$u" "$t" "$e"
done

echo
unexplained=0
for f in "${files[@]}"; do
    pkg=puzzle-store; case $f in chunker/*) pkg=puzzle-chunker ;; esac
    m=$out/$pkg-$(basename "$f" .rs)/mutants.out
    [ -f "$m/missed.txt" ] || continue
    while IFS= read -r line; do
        if ! grep -v '^#' "$explained" | sed 's/ # .*//' | grep -qxF "$line"; then
            echo "missed, not explained: $line"
            unexplained=$((unexplained + 1))
        fi
    done < <(strip <"$m/missed.txt")
done
echo "$unexplained missed mutants not explained in scripts/mutants-explained.txt"
