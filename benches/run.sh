#!/usr/bin/env bash
# End-to-end benchmark of puzzle on a real image corpus: build throughput, CPU
# and memory; store size after each image against the gzip layers, whole-file
# dedup and casync; extract time against umoci. See benches/README.md.
#
#   benches/run.sh [small|full]          # default: $CORPUS, else full
#
# Environment:
#   RUNS=3            build and extract runs (medians are reported)
#   OUT=/tmp/puzzle-bench-run   results directory (replaced if it holds an
#                     earlier run's results; refused if it holds anything else)
#   TAGS="a b ..."    build these tags in this order instead of the default
#   EXTRACT_TAGS="a b ..."  images timed for extract (default: four of full,
#                     every image of small)
#   PUZZLE_BIN=PATH   binary to measure (default: cargo build --release
#                     --locked -p puzzle, then target/release/puzzle)
#   SKIP_CASYNC=1, SKIP_EXTRACT=1   leave a part out
#   MOUNT=1           also run benches/mount.sh and include its table
#   KEEP_WORK=1       keep OUT/work (the last store; the scratch fs stays mounted)
#   SCRATCH=loop      write stores and trees to a fresh ext4 on a loop-mounted
#                     sparse file of SCRATCH_SIZE (default 24G; it holds only
#                     live data); SCRATCH=dir writes to OUT/work as it is
#
# Needs root (umoci unpack and puzzle extract recreate owners and device
# nodes), the corpus (corpora/build.sh --small / --full) and the tools of
# scripts/setup.sh: umoci, casync, gnuplot, jq, python3.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

# The exact command, with the settings given in the environment.
command_line=""
for v in CORPUS RUNS OUT TAGS EXTRACT_TAGS PUZZLE_BIN SKIP_CASYNC SKIP_EXTRACT MOUNT KEEP_WORK SCRATCH SCRATCH_SIZE; do
    if [ -n "${!v:-}" ]; then command_line+="$v=$(printf '%q' "${!v}") "; fi
done
command_line+="benches/run.sh"
for a in "$@"; do command_line+=" $(printf '%q' "$a")"; done

corpus=${1:-${CORPUS:-full}}
RUNS=${RUNS:-3}
OUT=${OUT:-/tmp/puzzle-bench-run}
report=$here/benches/report.py

die() { echo "run.sh: $*" >&2; exit 1; }
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case $corpus in small | full) ;; *) die "corpus must be small or full, not '$corpus'" ;; esac
case $RUNS in '' | *[!0-9]* | 0) die "RUNS must be a positive integer, not '$RUNS'" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root (umoci unpack and puzzle extract recreate owners and device nodes)"
layout=$here/corpora/out/$corpus
[ -f "$layout/index.json" ] || die "no corpus at $layout: run corpora/build.sh --$corpus"

missing=()
for t in umoci casync gnuplot jq python3 find du sync mkfs.ext4 mount findmnt; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
[ "${#missing[@]}" -eq 0 ] || die "missing: ${missing[*]}; run scripts/setup.sh (as root) to install them"
py=$(command -v python3)

# --- the images, in build order ----------------------------------------------
# Deterministic images first, in the corpus's series order (its index.json:
# base, python3, nodejs, build-essential, django 5.0.4..5.0.8, the 5.0.8
# rebuild, numpy 1.26.0..2.0.2), then every -asbuilt variant in the same
# order. Each series member thus adds what a new release adds to a store that
# holds its predecessors, and each -asbuilt build finds every chunk of its
# deterministic twin already stored: the "all chunks reused" case.
mapfile -t corpus_tags < <(jq -r '.manifests[].annotations["org.opencontainers.image.ref.name"]' "$layout/index.json")
if [ -n "${TAGS:-}" ]; then
    read -r -a tags <<<"$TAGS"
else
    det=() asb=()
    for t in "${corpus_tags[@]}"; do
        case $t in *-asbuilt) asb+=("$t") ;; *) det+=("$t") ;; esac
    done
    tags=("${det[@]}" "${asb[@]}")
fi
member() { # member X LIST...: is X one of LIST?
    local x=$1 t
    shift
    for t in "$@"; do [ "$t" = "$x" ] && return 0; done
    return 1
}
for t in "${tags[@]}"; do member "$t" "${corpus_tags[@]}" || die "tag $t not in $layout"; done

if [ -n "${EXTRACT_TAGS:-}" ]; then
    read -r -a extract_tags <<<"$EXTRACT_TAGS"
elif [ "$corpus" = small ]; then
    extract_tags=("${tags[@]}")
else
    extract_tags=(python3 build-essential django-5.0.8 numpy-2.0.2)
fi
for t in "${extract_tags[@]}"; do
    member "$t" "${tags[@]}" || die "extract tag $t is not among the built tags"
done

# --- results directory -----------------------------------------------------
marker=.puzzle-bench-run
under_out() { findmnt -rn -o TARGET 2>/dev/null | awk -v p="$1/" 'index($0, p) == 1'; }
[ -z "$(under_out "$OUT")" ] || die "something is mounted under $OUT (a KEEP_WORK run?): umount it first"
if [ -e "$OUT" ]; then
    if [ -f "$OUT/$marker" ]; then
        rm -rf "${OUT:?}"
    elif [ -n "$(ls -A "$OUT")" ]; then
        die "$OUT exists and does not hold an earlier run's results; set OUT to another directory"
    fi
fi
if [ -n "${PUZZLE_BIN:-}" ]; then
    bin=$PUZZLE_BIN
else
    say "cargo build --release --locked -p puzzle"
    (cd "$here" && cargo build --release --locked -p puzzle --quiet)
    bin=$here/target/release/puzzle
fi
[ -x "$bin" ] || die "no puzzle binary at $bin"
mkdir -p "$OUT/raw"
touch "$OUT/$marker"
work=$OUT/work
mkdir -p "$work"

cleanup() {
    # Whatever is mounted under the work dir, deepest first (MOUNT=1's FUSE
    # mount, which mount.sh also unmounts itself; the scratch filesystem),
    # then the work dir itself.
    if [ -n "${KEEP_WORK:-}" ]; then
        echo "run.sh: KEEP_WORK: $work kept; when done: umount $work/fs; rm -rf $work" >&2
        return
    fi
    local m
    under_out "$work" | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'echo "run.sh: terminated" >&2; exit 143' TERM

exec > >(tee "$OUT/run.log") 2>&1

# --- scratch filesystem ------------------------------------------------------
# Stores, unpacked trees, the casync store and extract targets go to a fresh
# ext4 (mkfs.ext4 defaults, so with a journal) on a sparse file mounted with
# a loop device, unless SCRATCH=dir (then OUT/work itself). The reason: on an
# ext4 *without* a journal, as the root filesystem of the VMs this was
# written on, allocating an inode skips every inode freed in the last minute
# or more and reads its inode-table block to find out (ext4's
# recently_deleted()). Right after a 150 MB tree is removed, the next extract
# then spends seconds of system time there, whichever tool runs: `puzzle
# extract` of django-5.0.8 took 0.6 s on a fresh journaled ext4 and 3-10 s
# on that root filesystem after a delete, umoci likewise. A fresh
# filesystem also keeps other users' deletes out of the figures.
SCRATCH=${SCRATCH:-loop}
case $SCRATCH in
    loop)
        w=$work/fs
        mkdir -p "$w"
        truncate -s "${SCRATCH_SIZE:-24G}" "$work/scratch.img"
        # Inode tables and journal written now, not by a background thread
        # during the measurements.
        mkfs.ext4 -q -F -m 0 -i 32768 -E lazy_itable_init=0,lazy_journal_init=0 "$work/scratch.img"
        # discard: freed blocks are punched out of the sparse file, so it
        # holds only live data.
        mount -o loop,discard "$work/scratch.img" "$w"
        ;;
    dir) w=$work ;;
    *) die "SCRATCH must be loop or dir, not '$SCRATCH'" ;;
esac
scratch_fs() { # what the measurements write to
    local under
    under=$(df -T "$OUT" | awk 'NR == 2 {print $2 " (" $1 ")"}')
    if [ "$SCRATCH" = loop ]; then
        echo "a fresh ext4 on a loop-mounted ${SCRATCH_SIZE:-24G} sparse file on $under"
    else
        echo "$under, in $w"
    fi
}

# timed RUSAGE_JSON CMD...: run CMD; wall/user/sys/peak RSS go to RUSAGE_JSON
timed() { "$py" "$report" time "$1" -- "${@:2}"; }
# quiet CMD...: run CMD with its stderr kept aside; show it only if CMD fails
quiet() { if ! "$@" 2>"$w/stderr"; then cat "$w/stderr" >&2; return 1; fi; }
# fbytes DIR...: sum of the sizes of the regular files under DIR
fbytes() { find "$@" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'; }
# dub DIR: disk usage in bytes (allocated blocks, directories included)
dub() { du -sB1 "$1" | cut -f1; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
t_start=$(date +%s.%N)
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f\n", b - a}'; }

machine=$OUT/machine.json
jq -n \
    --arg corpus "$corpus" --argjson runs "$RUNS" --arg command "$command_line" \
    --arg start "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg commit "$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$here" diff --quiet HEAD 2>/dev/null || echo ' (uncommitted changes)')" \
    --arg puzzle_version "$("$bin" --version)" \
    --arg casync_version "$(casync --version 2>&1 | head -1)" \
    --arg umoci_version "$(umoci --version 2>&1 | head -1)" \
    --arg cpu "$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)" \
    --argjson nproc "$(nproc)" \
    --argjson mem_bytes "$(awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo)" \
    --arg kernel "$(uname -r)" \
    --arg fs "$(scratch_fs)" \
    --arg load_start "$(loadavg)" \
    --argjson tags "$(printf '%s\n' "${tags[@]}" | jq -R . | jq -s .)" \
    --argjson extract_tags "$(printf '%s\n' "${extract_tags[@]}" | jq -R . | jq -s .)" \
    '{corpus: $corpus, runs: $runs, command: $command, start: $start, commit: $commit,
      puzzle_version: $puzzle_version, casync_version: $casync_version,
      umoci_version: $umoci_version, cpu: $cpu, nproc: $nproc, mem_bytes: $mem_bytes,
      kernel: $kernel, fs: $fs, load_start: $load_start, tags: $tags,
      extract_tags: $extract_tags, phases: {}}' >"$machine"
set_machine() { # set_machine JQ_FILTER ARGS...: update machine.json in place
    local f=$1
    shift
    jq "$@" "$f" "$machine" >"$machine.new" && mv "$machine.new" "$machine"
}
# shellcheck disable=SC2016 # $p, $s are jq variables
phase_done() { set_machine '.phases[$p] = ($s | tonumber)' --arg p "$1" --arg s "$(secs_since "$2")"; }

say "corpus $corpus: ${#tags[@]} images, RUNS=$RUNS, results in $OUT"
say "command: $command_line"
say "load average at start: $(loadavg)"

# Read the corpus once so every run finds its blobs in the page cache.
find "$layout/blobs" -type f -exec cat {} + >/dev/null
"$py" "$report" layers "$layout" "${tags[@]}" >"$OUT/raw/layers.csv"

# --- 1. builds, RUNS times into a fresh store each --------------------------
store=$w/store
t0=$(date +%s.%N)
for run in $(seq "$RUNS"); do
    rm -rf "$store"
    jl=$OUT/raw/build-run$run.jsonl
    : >"$jl"
    i=0
    for tag in "${tags[@]}"; do
        i=$((i + 1))
        timed "$w/ru.json" "$bin" --store "$store" build "oci:$layout:$tag" --tag "$tag" \
            --json --no-progress >"$w/build.json"
        "$bin" --store "$store" stats --json >"$w/stats.json"
        jq -nc --argjson run "$run" --argjson seq "$i" --arg image "$tag" \
            --slurpfile ru "$w/ru.json" --slurpfile b "$w/build.json" \
            --slurpfile st "$w/stats.json" \
            --argjson blobs "$(fbytes "$store/blobs")" --argjson index "$(fbytes "$store/index")" \
            --argjson all "$(fbytes "$store")" --argjson blobs_du "$(dub "$store/blobs")" \
            --argjson store_du "$(dub "$store")" \
            '{run: $run, seq: $seq, image: $image, rusage: $ru[0],
              build: ([$b[] | select(.type == "build")][0].data),
              store: {blobs_bytes: $blobs, index_bytes: $index, store_bytes: $all,
                      blobs_du: $blobs_du, store_du: $store_du},
              stats: ([$st[] | select(.type == "stats")][0].data.totals)}' >>"$jl"
        tail -n1 "$jl" | jq -r --arg n "$RUNS" --arg of "${#tags[@]}" \
            '"build run \(.run)/\($n) [\(.seq)/\($of)] \(.image): \(.build.bytes_uncompressed / 1e6 | floor) MB converted in \(.rusage.wall * 100 | round / 100) s, \(.build.new_chunk_bytes / 1e6 * 10 | round / 10) MB new, store \(.store.store_bytes / 1e6 | round) MB"' >&2
    done
done
phase_done build "$t0"
say "builds done in $(secs_since "$t0") s"

# --- 2. casync: one run (its store is deterministic) ------------------------
if [ -z "${SKIP_CASYNC:-}" ]; then
    t0=$(date +%s.%N)
    castr=$w/castr caidx=$w/caidx bundle=$w/bundle
    mkdir -p "$castr" "$caidx"
    : >"$OUT/raw/casync.jsonl"
    i=0
    for tag in "${tags[@]}"; do
        i=$((i + 1))
        rm -rf "$bundle"
        quiet timed "$w/ru-unpack.json" umoci unpack --image "$layout:$tag" "$bundle" >/dev/null
        timed "$w/ru-make.json" casync make --store="$castr" "$caidx/$tag.caidx" "$bundle/rootfs" >/dev/null
        jq -nc --argjson seq "$i" --arg image "$tag" \
            --slurpfile unpack "$w/ru-unpack.json" --slurpfile make "$w/ru-make.json" \
            --argjson tree "$(fbytes "$bundle/rootfs")" --argjson chunks "$(find "$castr" -type f | wc -l)" \
            --argjson chunk_bytes "$(fbytes "$castr")" --argjson caidx_bytes "$(fbytes "$caidx")" \
            --argjson store_du "$(dub "$castr")" \
            '{seq: $seq, image: $image, tree_bytes: $tree, unpack: $unpack[0], make: $make[0],
              chunks: $chunks, chunk_bytes: $chunk_bytes, caidx_bytes: $caidx_bytes,
              store_du: $store_du}' >>"$OUT/raw/casync.jsonl"
        rm -rf "$bundle"
        tail -n1 "$OUT/raw/casync.jsonl" | jq -r --arg of "${#tags[@]}" \
            '"casync [\(.seq)/\($of)] \(.image): make \(.make.wall * 100 | round / 100) s, store \((.chunk_bytes + .caidx_bytes) / 1e6 | round) MB"' >&2
    done
    rm -rf "$castr" "$caidx"
    phase_done casync "$t0"
    say "casync done in $(secs_since "$t0") s"
fi

# --- 3. extract, warm: puzzle extract (last run's store) vs umoci unpack ----
if [ -z "${SKIP_EXTRACT:-}" ]; then
    t0=$(date +%s.%N)
    x=$w/x
    : >"$OUT/raw/extract.jsonl"
    extract_once() { # extract_once TOOL TAG RUSAGE_JSON
        case $1 in
            puzzle) quiet timed "$3" "$bin" --store "$store" extract "$2" "$x" --no-progress >/dev/null ;;
            umoci) quiet timed "$3" umoci unpack --image "$layout:$2" "$x" >/dev/null ;;
        esac
    }
    for tag in "${extract_tags[@]}"; do
        for tool in puzzle umoci; do # warm-up, not recorded
            rm -rf "$x"
            extract_once "$tool" "$tag" "$w/ru.json"
        done
        for run in $(seq "$RUNS"); do
            for tool in puzzle umoci; do
                rm -rf "$x"
                sync -f "$w"
                extract_once "$tool" "$tag" "$w/ru.json"
                timed "$w/ru-sync.json" sync -f "$w"
                root=$x
                [ "$tool" = umoci ] && root=$x/rootfs
                jq -nc --arg tool "$tool" --arg image "$tag" --argjson run "$run" \
                    --slurpfile ru "$w/ru.json" --slurpfile sy "$w/ru-sync.json" \
                    --argjson tree "$(fbytes "$root")" \
                    '{tool: $tool, image: $image, run: $run, rusage: $ru[0], sync: $sy[0],
                      tree_bytes: $tree}' >>"$OUT/raw/extract.jsonl"
                tail -n1 "$OUT/raw/extract.jsonl" | jq -r --arg n "$RUNS" \
                    '"extract run \(.run)/\($n) \(.image) \(.tool): \(.rusage.wall * 100 | round / 100) s (+ sync \(.sync.wall * 100 | round / 100) s)"' >&2
            done
        done
        rm -rf "$x"
    done
    phase_done extract "$t0"
    say "extract done in $(secs_since "$t0") s"
fi
[ -n "${KEEP_WORK:-}" ] || rm -rf "$store"

# --- 4. mount: only when asked ------------------------------------------------
if [ -n "${MOUNT:-}" ]; then
    t0=$(date +%s.%N)
    say "running benches/mount.sh (MOUNT=1)"
    PUZZLE_BIN=$bin RUNS=$RUNS "$here/benches/mount.sh" "$w/mount" >"$OUT/mount.md"
    set_machine '.mount_results = "mount.md"'
    phase_done mount "$t0"
fi

# --- 5. summary and plot -------------------------------------------------------
# shellcheck disable=SC2016 # jq variables
set_machine '.end = $e | .load_end = $l | .elapsed_s = ($s | tonumber)' \
    --arg e "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg l "$(loadavg)" --arg s "$(secs_since "$t_start")"
"$py" "$report" summary "$OUT"
gnuplot -e "dat='$OUT/sizes.dat'; out='$OUT/sizes'; ttl='store size vs images added, $corpus corpus'" \
    "$here/benches/plot.gp"
say "load average at end: $(loadavg); total $(secs_since "$t_start") s"
cat "$OUT/summary.md"
say "results: $OUT/summary.md, $OUT/sizes.svg, $OUT/raw/"
