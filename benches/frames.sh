#!/usr/bin/env bash
# What the frame target (puzzle.json's compression.frame_target: raw bytes
# of consecutive chunks one zstd frame collects) trades, side by side in
# one run, for each target:
#   pull   django-5.0.8 built in its own store, pushed to a docker-registry
#          on 127.0.0.1, pulled into a store holding django-5.0.7 (built
#          in another store): bytes transferred, frame and metadata bytes
#   store  every image of the corpus built into one store (run.sh's order:
#          the deterministic images, then their -asbuilt twins): blob
#          bytes, wall time and MB/s of layer tar
#   speed  by turns, RUNS times: django-5.0.8 and numpy-2.0.2 built into a
#          fresh store (MB/s of layer tar, `build --json`), and
#          build-essential extracted with the page cache dropped first
#          (cold read: every frame read from disk and decompressed)
#
#   benches/frames.sh
#
# A store with another target is made by `puzzle init DIR --frame-target
# BYTES` (a store setting; builds record it in each manifest's compression
# annotation).
#
# Env: PUZZLE_BIN (default target/release/puzzle), PUZZLE_CORPUS (default
# corpora/out/full), TARGETS (bytes, default "1048576 524288 262144
# 131072"), RUNS (3), WORK (/tmp/puzzle-frames-bench; wiped), SPEED_TAGS
# ("django-5.0.8 numpy-2.0.2"), EXTRACT_TAG (build-essential).
# Needs root (to drop the page cache), docker-registry, jq, bc.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PUZZLE_BIN:-$here/target/release/puzzle}
corpus=${PUZZLE_CORPUS:-$here/corpora/out/full}
TARGETS=${TARGETS:-1048576 524288 262144 131072}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/puzzle-frames-bench}
read -r -a speed_tags <<<"${SPEED_TAGS:-django-5.0.8 numpy-2.0.2}"
xtag=${EXTRACT_TAG:-build-essential}
for t in docker-registry jq bc; do
  command -v "$t" >/dev/null || { echo "needs $t (scripts/setup.sh installs it)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (drops the page cache)" >&2; exit 2; }
[ -x "$bin" ] || { echo "build puzzle first (cargo build --release)" >&2; exit 2; }
[ -f "$corpus/index.json" ] || { echo "no corpus at $corpus (corpora/build.sh --full)" >&2; exit 2; }

rm -rf "$WORK"
mkdir -p "$WORK"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$WORK/registry.yml" >/dev/null 2>&1 &
reg_pid=$!
trap 'kill $reg_pid 2>/dev/null; wait $reg_pid 2>/dev/null' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

p() { "$bin" --no-progress "$@"; }
now() { date +%s.%N; }
mkstore() { # DIR TARGET: a new store with that frame target
  p init "$1" --frame-target "$2" 2>/dev/null
}
field() { jq -r ".data.$1"; }

mapfile -t all < <(jq -r '.manifests[].annotations["org.opencontainers.image.ref.name"]' "$corpus/index.json")
det=() asb=()
for t in "${all[@]}"; do
  case $t in *-asbuilt) asb+=("$t") ;; *) det+=("$t") ;; esac
done
tags=("${det[@]}" "${asb[@]}")

echo "binary $bin; corpus $corpus (${#tags[@]} images); registry 127.0.0.1:$port; $(date -u '+%F %H:%M') UTC; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| frame target | pull bytes | frames | frame bytes | metadata bytes | chunks fetched (raw bytes) | corpus blobs MB | corpus build s | corpus MB/s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for T in $TARGETS; do
  d=$WORK/$T
  mkdir -p "$d"
  mkstore "$d/a" "$T"
  mkstore "$d/b" "$T"
  p --store "$d/a" build "oci:$corpus:django-5.0.7" --tag d7 >/dev/null 2>&1
  p --store "$d/b" build "oci:$corpus:django-5.0.8" --tag d8 >/dev/null 2>&1
  p --store "$d/b" push d8 "docker://127.0.0.1:$port/t$T/django:8" --tls-verify=false >/dev/null 2>&1
  md=$(p --store "$d/b" images --json | jq -r 'select(.data.name == "d8") | .data.metadata_bytes')
  p --store "$d/a" pull "docker://127.0.0.1:$port/t$T/django:8" --tag d8 --tls-verify=false --json >"$d/pull.json"
  rm -rf "$d/a" "$d/b"

  mkstore "$d/all" "$T"
  raw=0
  t0=$(now)
  for t in "${tags[@]}"; do
    n=$(p --store "$d/all" build "oci:$corpus:$t" --tag "$t" --json | field bytes_uncompressed)
    raw=$((raw + n))
  done
  secs=$(echo "$(now) - $t0" | bc -l)
  blobs=$(du -sb --apparent-size "$d/all/blobs" | cut -f1)
  echo "$blobs" >"$d/blobs"
  printf '| %s | %s | %s | %s | %s | %s (%s) | %.1f | %.1f | %.0f |\n' "$T" \
    "$(field bytes_transferred <"$d/pull.json")" "$(field frames_fetched <"$d/pull.json")" \
    "$(field frame_bytes_fetched <"$d/pull.json")" "$md" \
    "$(field chunks_fetched <"$d/pull.json")" "$(field chunk_bytes_fetched <"$d/pull.json")" \
    "$(echo "$blobs / 1000000" | bc -l)" "$secs" "$(echo "$raw / $secs / 1000000" | bc -l)"
done

# By turns: build speed into fresh stores, and cold extract from the corpus stores.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for _ in $(seq "$RUNS"); do
  for T in $TARGETS; do
    d=$WORK/$T
    for t in "${speed_tags[@]}"; do
      rm -rf "$d/fresh"
      mkstore "$d/fresh" "$T"
      p --store "$d/fresh" build "oci:$corpus:$t" --tag "$t" --json |
        jq -r '.data | .bytes_uncompressed / .seconds / 1e6' >>"$d/build-$t.rates"
    done
    rm -rf "$d/x"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    t0=$(now)
    p --store "$d/all" extract "$xtag" "$d/x" >/dev/null 2>&1
    echo "$(now) - $t0" | bc -l >>"$d/extract.secs"
  done
done
rm -rf "$WORK"/*/fresh "$WORK"/*/x
echo
printf '| frame target |'; printf ' build %s MB/s |' "${speed_tags[@]}"; echo " cold extract $xtag s |"
printf '|---:|'; printf -- '---:|%.0s' "${speed_tags[@]}"; echo '---:|' 
runs() { xargs printf '%.'"$2"'f, ' <"$1" | sed 's/, $//'; }
for T in $TARGETS; do
  d=$WORK/$T
  printf '| %s |' "$T"
  for t in "${speed_tags[@]}"; do
    printf ' %.0f (%s) |' "$(median <"$d/build-$t.rates")" "$(runs "$d/build-$t.rates" 0)"
  done
  printf ' %.2f (%s) |\n' "$(median <"$d/extract.secs")" "$(runs "$d/extract.secs" 2)"
done
