#!/usr/bin/env bash
# Time from nothing to a finished command in a chroot of an image that lives
# in a registry behind a shaped link (issue 14). The registry runs inside a
# network namespace this script creates, reached over a veth pair whose
# registry-to-client direction is shaped with tc (tbf rate; with DELAY, a
# netem delay in front where the kernel has sch_netem); nothing else is
# contacted.
#
#   benches/lazy.sh [TAG]          # default: django-5.0.8
#
# Cases (CASES, default every case this binary supports), numbered as in
# issue 14:
#   oci      (1) skopeo copy docker://... oci: + umoci unpack + run
#   pull     (2) puzzle pull + puzzle mount + run
#   extract  (2) puzzle pull + puzzle extract + run on the extracted tree
#   lazy     (3) puzzle mount docker://... --daemon into a new store + run
#   prefetch (4) as lazy, of the image pushed with a prefetch list recorded
#            (mount --trace) from one untimed lazy run of the same workload;
#            skipped unless `puzzle mount --help` shows --trace and
#            `puzzle push --help` shows --prefetch
#   warm     (5) the image already local (pulled before timing): puzzle
#            mount + run
# Timing stops when the workload ends (umount is not counted). Bytes are
# counted for every case the same way: received on the host end of the
# veth from the registry's namespace (Ethernet frames, so TCP/IP headers
# included), from before the case starts until after its umount. For the
# lazy cases the table also gives puzzle's own count (`puzzle mounts
# --json`: bytes_received, HTTP requests; for case 4 also the prefetch
# list's frames made local of those it names), and for the cases that mount
# (lazy, prefetch, warm) the time of the mount command alone: for a lazy
# mount, the manifest and metadata fetch and opening the image.
# Workloads (WORKLOADS, default "import tar"):
#   import python3 -c 'import django; print(django.VERSION)' (numpy for numpy-*)
#   tar    read every file: tar -cf - . | wc -c (GNU tar skips file reads
#          when writing to /dev/null)
#
# Env: PUZZLE_BIN (default target/release/puzzle, else target/debug/puzzle),
# PUZZLE_CORPUS (default corpora/out/small), RATE (100mbit), DELAY (none;
# e.g. 10ms one way, needs sch_netem), RUNS (3; medians), WORK
# (/tmp/puzzle-lazy), FRAME_TARGET (raw bytes per frame of the pushed puzzle
# image; default the store's default, 1 MiB).
# Each run starts cold: page cache dropped, a new store (for warm, pulled
# into before timing) and destination.
# Needs root, ip/tc (iproute2), docker-registry, skopeo, umoci, jq.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PUZZLE_BIN:-$here/target/release/puzzle}
[ -x "$bin" ] || bin=$here/target/debug/puzzle
corpus=${PUZZLE_CORPUS:-$here/corpora/out/small}
tag=${1:-django-5.0.8}
RATE=${RATE:-100mbit}
DELAY=${DELAY:-}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/puzzle-lazy}
WORKLOADS=${WORKLOADS:-import tar}
FRAME_TARGET=${FRAME_TARGET:-}
for t in ip tc docker-registry skopeo umoci jq mkfs.ext4; do
  command -v "$t" >/dev/null || { echo "needs $t (scripts/setup.sh installs it)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (network namespace, chroot, FUSE)" >&2; exit 2; }
[ -x "$bin" ] || { echo "build puzzle first (cargo build --release)" >&2; exit 2; }
# `puzzle umount` up to 2a33372 waits for the daemon (which writes --trace
# files last) only if the process is named puzzle.
[ "$(basename "$bin")" = puzzle ] ||
  { echo "PUZZLE_BIN must be a file named puzzle (copy it into a directory of its own)" >&2; exit 2; }
has_prefetch() {
  "$bin" mount --help 2>/dev/null | grep -q -- --trace &&
    "$bin" push --help 2>/dev/null | grep -q -- --prefetch
}
if [ -z "${CASES:-}" ]; then
  CASES=oci
  "$bin" pull --help >/dev/null 2>&1 && CASES+=" pull extract"
  "$bin" mount --help 2>/dev/null | grep -q 'docker://' && CASES+=" lazy"
  has_prefetch && CASES+=" prefetch"
  "$bin" pull --help >/dev/null 2>&1 && CASES+=" warm"
fi

. "$here/benches/nsreg.sh"
nsreg_up plazy "$WORK" "$RATE" "$DELAY"

# Fill the registry: the plain image, and the same image as a puzzle image.
skopeo --insecure-policy copy -q --dest-tls-verify=false \
  "oci:$corpus:$tag" "docker://$reg/plain:$tag"
if [[ " $CASES " != " oci " ]]; then
  if [ -n "$FRAME_TARGET" ]; then
    if "$bin" build --help | grep -q -- --frame-target; then
      "$bin" --store "$fs/src" --no-progress init --frame-target "$FRAME_TARGET" >/dev/null 2>&1
    else # the setting predates the flag: compression.frame_target of puzzle.json
      "$bin" --store "$fs/src" --no-progress init >/dev/null 2>&1
      jq --argjson t "$FRAME_TARGET" '.compression.frame_target = $t' "$fs/src/puzzle.json" \
        >"$WORK/puzzle.json" && mv "$WORK/puzzle.json" "$fs/src/puzzle.json"
    fi
  fi
  "$bin" --store "$fs/src" --no-progress build "oci:$corpus:$tag" --tag "$tag" >/dev/null 2>&1
  "$bin" --store "$fs/src" --no-progress push "$tag" "docker://$reg/puzzle:$tag" \
    --tls-verify=false >/dev/null 2>&1
fi
man=$(jq -r --arg t "$tag" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$corpus/index.json")
gzip_bytes=$(jq '[.layers[].size] | add' "$corpus/blobs/sha256/${man#sha256:}")

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
workload() { # ROOT WORKLOAD
  case "$2" in
    import)
      case "$tag" in
        numpy*) chroot "$1" python3 -c 'import numpy; print(numpy.__version__)' ;;
        *) chroot "$1" python3 -c 'import django; print(django.VERSION)' ;;
      esac ;;
    tar) (cd "$1" && tar -cf - . | wc -c) ;;
  esac >/dev/null
}

p() { "$bin" --store "$fs/store" --no-progress "$@"; }
pull_image() { p pull "docker://$reg/puzzle:$tag" --tag "$tag" --tls-verify=false >/dev/null 2>&1; }
lazy_mount() { # REPO [FLAGS...]
  local repo=$1; shift
  p mount "docker://$reg/$repo:$tag" "$fs/dst/mnt" --daemon --tls-verify=false "$@" >/dev/null 2>&1
}
# puzzle's own count for the lazy mount at $fs/dst/mnt: "bytes/requests",
# and with a prefetch list "/prefetched:prefetch_frames".
lazy_counts() {
  sleep 1.2 # the stats file is rewritten once a second
  p mounts --json | jq -r --arg d "$fs/dst/mnt" \
    'select(.data.dir == $d) | .data.lazy |
     "\(.bytes_received)/\(.requests)" +
     (if (.prefetch_frames // 0) > 0 then "/\(.prefetched):\(.prefetch_frames)" else "" end)'
}

# Case 4's image: a cold lazy run of WORKLOAD recording a trace, then the
# image pushed again as prefetch:TAG with that list (not timed).
prefetch_setup() { # WORKLOAD
  rm -rf "$fs/dst" "$fs/store" && mkdir -p "$fs/dst/mnt"
  lazy_mount puzzle --trace "$WORK/trace"
  workload "$fs/dst/mnt" "$1"
  p umount "$fs/dst/mnt" >/dev/null 2>&1
  "$bin" --store "$fs/src" --no-progress push "$tag" "docker://$reg/prefetch:$tag" \
    --tls-verify=false --prefetch "$WORK/trace" >/dev/null 2>"$WORK/err" ||
    { cat "$WORK/err" >&2; exit 1; }
}

# One run of CASE with WORKLOAD: prints "seconds bytes-received puzzle-count
# mount-seconds" (- where the case has no mount command).
run_case() {
  local case=$1 wl=$2 t0 t1 tm=- b0 counts=-
  rm -rf "$fs/dst" "$fs/store" && mkdir -p "$fs/dst/mnt"
  [ "$case" = warm ] && pull_image
  cold
  b0=$(nsreg_rx)
  t0=$(date +%s.%N)
  case "$case" in
    oci)
      skopeo --insecure-policy copy -q --src-tls-verify=false \
        "docker://$reg/plain:$tag" "oci:$fs/dst/layout:$tag"
      umoci unpack --image "$fs/dst/layout:$tag" "$fs/dst/bundle" >/dev/null
      workload "$fs/dst/bundle/rootfs" "$wl" ;;
    pull)
      pull_image
      p mount "$tag" "$fs/dst/mnt" --daemon >/dev/null 2>&1
      workload "$fs/dst/mnt" "$wl" ;;
    extract)
      pull_image
      p extract "$tag" "$fs/dst/root" >/dev/null 2>&1
      workload "$fs/dst/root" "$wl" ;;
    lazy | prefetch)
      lazy_mount "$([ "$case" = lazy ] && echo puzzle || echo prefetch)"
      tm=$(date +%s.%N)
      workload "$fs/dst/mnt" "$wl" ;;
    warm)
      p mount "$tag" "$fs/dst/mnt" --daemon >/dev/null 2>&1
      tm=$(date +%s.%N)
      workload "$fs/dst/mnt" "$wl" ;;
  esac
  t1=$(date +%s.%N)
  case "$case" in lazy | prefetch) counts=$(lazy_counts) ;; esac
  mountpoint -q "$fs/dst/mnt" && p umount "$fs/dst/mnt" >/dev/null 2>&1
  [ "$tm" = - ] || tm=$(printf '%.3f' "$(echo "$tm - $t0" | bc -l)")
  echo "$(echo "$t1 - $t0" | bc -l) $(($(nsreg_rx) - b0)) $counts $tm"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "image $tag${FRAME_TARGET:+, frame target $FRAME_TARGET}; link: $RATE${DELAY:+, $DELAY one way} (tc in namespace $nsreg_ns); gzip layers $gzip_bytes bytes; binary $bin"
echo
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg); cases: $CASES"
has_prefetch || echo "case 4 (prefetch) skipped: this puzzle has no mount --trace / push --prefetch"
echo
echo "| workload | case | seconds (median of $RUNS) | each run | bytes received | of the gzip layers | mount command s (each run) | puzzle's count (bytes/requests[/prefetched:listed frames]) |"
echo "|---|---|---:|---|---:|---:|---|---|"
for wl in $WORKLOADS; do
  for c in $CASES; do
    if [ "$c" = prefetch ]; then
      has_prefetch || continue
      prefetch_setup "$wl"
    fi
    : >"$WORK/runs"
    for _ in $(seq "$RUNS"); do run_case "$c" "$wl" >>"$WORK/runs"; done
    secs=$(cut -d' ' -f1 "$WORK/runs" | median)
    each=$(cut -d' ' -f1 "$WORK/runs" | xargs printf '%.2f, ' | sed 's/, $//')
    bytes=$(cut -d' ' -f2 "$WORK/runs" | median)
    counts=$(cut -d' ' -f3 "$WORK/runs" | xargs | sed 's/ /, /g')
    mounts=$(cut -d' ' -f4 "$WORK/runs" | xargs | sed 's/ /, /g')
    printf '| %s | %s | %.2f | %s | %s | %.3f | %s | %s |\n' "$wl" "$c" "$secs" "$each" "$bytes" \
      "$(echo "$bytes / $gzip_bytes" | bc -l)" "$mounts" "$counts"
  done
done
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
