#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after another
# under nice, from seeds cut from a real image corpus. See fuzz/README.md.
#
#   fuzz/run.sh [SECONDS]
#
# Environment:
#   TARGETS="a b ..."  run these targets only (default: every one in
#                      fuzz/Cargo.toml, in that order)
#   PUZZLE_CORPUS=DIR  the OCI layout to cut seeds from (default
#                      corpora/out/small; corpora/build.sh --small makes it)
#   PUZZLE_BIN=PATH    the binary that builds the seed store (default:
#                      cargo build -p puzzle --locked, target/debug/puzzle)
#   SEEDS=1            cut the seeds again (else fuzz/seeds is reused; cut
#                      for layer_tar and oci_json only, it has no store seeds)
#   NICE=15            niceness of the build and the fuzzing
#   MAX_CRASHES=3      a target that crashes is restarted for the rest of its
#                      time, up to this many crashes
#
# Writes fuzz/seeds/<target> (seeds), fuzz/corpus/<target> (what libFuzzer
# found; kept between runs), fuzz/artifacts/<target> (crashes, timeouts,
# out-of-memory inputs, slow units) and fuzz/logs/<target>.log, then prints
# one line per target: executions, final coverage (cov/ft), slow units (over
# 10 s, not failures) and crash inputs. Exits 1 if
# any target crashed. Needs nightly rustc (or stable with RUSTC_BOOTSTRAP=1),
# cargo-fuzz (installed if missing), python3 and zstd.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
fuzz=$here/fuzz
secs=${1:-600}
nice=${NICE:-15}
max_crashes=${MAX_CRASHES:-3}
corpus=${PUZZLE_CORPUS:-$here/corpora/out/small}
targets=${TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' "$fuzz/Cargo.toml" | grep -v '^puzzle-fuzz$')}

if [[ ! $secs =~ ^[0-9]+$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    nice -n "$nice" cargo install --locked cargo-fuzz
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    cargo_fuzz=(cargo +nightly fuzz)
    toolchain=$(rustc +nightly --version)
else
    export RUSTC_BOOTSTRAP=1
    cargo_fuzz=(cargo fuzz)
    toolchain="$(rustc --version) with RUSTC_BOOTSTRAP=1"
fi

if [[ ${SEEDS:-} == 1 || ! -d $fuzz/seeds ]]; then
    if [[ ! -f $corpus/index.json ]]; then
        echo "no OCI corpus at $corpus: run corpora/build.sh --small or set PUZZLE_CORPUS" >&2
        exit 2
    fi
    # Packs and metadata blobs come from a store the real binary builds.
    bin=${PUZZLE_BIN:-}
    if [[ -z $bin && $targets =~ pack_header|meta_ ]]; then
        (cd "$here" && nice -n "$nice" cargo build -p puzzle --locked)
        bin=$here/target/debug/puzzle
    fi
    nice -n "$nice" python3 "$fuzz/seeds.py" "$corpus" "$bin" "$fuzz/seeds.tmp"
    rm -rf "$fuzz/seeds"
    mv "$fuzz/seeds.tmp" "$fuzz/seeds"
fi

cd "$fuzz"
# Release build with debug assertions, so overflow and debug_assert! trip too.
nice -n "$nice" "${cargo_fuzz[@]}" build -O -a
mkdir -p logs

dict_for() {
    case $1 in
    layer_tar) echo "-dict=dict/tar.dict" ;;
    oci_json) echo "-dict=dict/json.dict" ;;
    esac
}

# Inputs that crashed, timed out, ran out of memory or leaked. libFuzzer also
# writes slow-unit-* there (the slowest input so far, when over 10 s), which
# is counted apart: on a loaded machine a stall makes one.
failures() {
    find "artifacts/$1" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort
}

summary=()
crashed=0
for t in $targets; do
    mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
    log=logs/$t.log
    : >"$log"
    start=$(date +%s)
    runs=0 crashes=()
    while :; do
        left=$((secs - ($(date +%s) - start)))
        ((left > 0)) || break
        before=$(failures "$t")
        set +e
        # shellcheck disable=SC2046
        nice -n "$nice" "${cargo_fuzz[@]}" run -O -a "$t" "corpus/$t" "seeds/$t" -- \
            -max_total_time="$left" -timeout=30 -print_final_stats=1 $(dict_for "$t") \
            >"$log.part" 2>&1
        rc=$?
        set -e
        cat "$log.part" >>"$log"
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log.part" | tail -n 1)
        rm "$log.part"
        runs=$((runs + ${n:-0}))
        new=$(comm -13 <(echo "$before") <(failures "$t"))
        if [[ -n $new ]]; then
            crashes+=($new)
            crashed=1
            ((${#crashes[@]} < max_crashes)) || break
        elif ((rc != 0)); then
            echo "$t: cargo fuzz exited $rc without an artifact; see fuzz/$log" >&2
            crashed=1
            break
        fi
    done
    # The last coverage line libFuzzer printed (pulse, NEW, REDUCE or DONE).
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 | sed 's/cov: //; s/ ft: /\//')
    slow=$(grep -c '^Slowest unit' "$log" || true)
    line="$t: $runs runs in $(($(date +%s) - start)) s, cov/ft ${cov:-?}, slow units: $slow, crashes: ${#crashes[@]}"
    for c in "${crashes[@]}"; do line+=" fuzz/$c"; done
    echo "$line"
    summary+=("$line")
done

echo
echo "$toolchain, $(cargo fuzz --version 2>/dev/null || true), ${secs} s per target"
printf '%s\n' "${summary[@]}"
exit "$crashed"
