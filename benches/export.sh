#!/usr/bin/env bash
# `puzzle export` throughput and size (issue 16): each image is built into a
# store, then exported RUNS times per layer compression to an OCI layout on a
# loop-mounted ext4 (as benches/run.sh does). Reports the median throughput
# (MB/s of tar produced) and the exported layers' size against the image's
# original (gzip) layers.
#
#   benches/export.sh [TAG...]     # default: django-5.0.8, and numpy-2.0.2 if the corpus has it
#
# Env: PUZZLE_BIN (default target/release/puzzle, else target/debug/puzzle),
# PUZZLE_CORPUS (default corpora/out/small), WORK (/tmp/puzzle-export), RUNS (3).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PUZZLE_BIN:-$here/target/release/puzzle}
[ -x "$bin" ] || bin=$here/target/debug/puzzle
corpus=${PUZZLE_CORPUS:-$here/corpora/out/small}
WORK=${WORK:-/tmp/puzzle-export}
RUNS=${RUNS:-3}
for t in jq mkfs.ext4 mount; do
  command -v "$t" >/dev/null || { echo "needs $t (scripts/setup.sh installs it)" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "build puzzle first (cargo build)" >&2; exit 2; }
tags=("$@")
if [ ${#tags[@]} -eq 0 ]; then
  tags=(django-5.0.8)
  jq -e '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "numpy-2.0.2")' \
    "$corpus/index.json" >/dev/null && tags+=(numpy-2.0.2)
fi

mkdir -p "$WORK/fs"
fs=$WORK/fs
cleanup() { mountpoint -q "$fs" && umount "$fs"; rm -f "$WORK/fs.img"; true; }
trap cleanup EXIT INT TERM
mountpoint -q "$fs" && umount "$fs"
truncate -s 8G "$WORK/fs.img"
mkfs.ext4 -q -F -m 0 "$WORK/fs.img"
mount -o loop "$WORK/fs.img" "$fs"

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| image | layers | compression | median MB/s of tar | tar bytes | exported layer bytes | original gzip layer bytes | exported / original |"
echo "|---|---:|---|---:|---:|---:|---:|---:|"
for tag in "${tags[@]}"; do
  store=$fs/store
  "$bin" --store "$store" --no-progress build "oci:$corpus:$tag" --tag "$tag" >/dev/null 2>&1
  man=$(jq -r --arg t "$tag" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$corpus/index.json")
  orig=$(jq '[.layers[].size] | add' "$corpus/blobs/sha256/${man#sha256:}")
  for comp in gzip zstd; do
    : >"$WORK/rates"
    for run in $(seq "$RUNS"); do
      rm -rf "$fs/out"
      json=$("$bin" --store "$store" --no-progress export "$tag" "oci:$fs/out:t" --compress "$comp" --json)
      echo "$json" | jq -r '.data | .tar_bytes / .seconds / 1e6' >>"$WORK/rates"
    done
    echo "$json" | jq -r --arg tag "$tag" --arg comp "$comp" --arg rate "$(median <"$WORK/rates")" --argjson orig "$orig" \
      '.data | "| \($tag) | \(.layers) | \($comp) | \($rate | tonumber | floor) | \(.tar_bytes) | \(.layer_bytes) | \($orig) | \(.layer_bytes / $orig * 1000 | round / 1000) |"'
  done
  rm -rf "$store" "$fs/out"
done
