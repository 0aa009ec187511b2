#!/usr/bin/env bash
# End-to-end benchmark of `puzzle mount` against native reads of the same
# files, side by side in one run. Needs root (drop_caches, FUSE), umoci, the
# release binary (cargo build --release) and the corpora
# (corpora/build.sh --small and --full).
#
#   benches/mount.sh [WORKDIR]        # default /tmp/puzzle-bench
#
# Prints a markdown table (medians of $RUNS runs) and writes raw timings as
# CSV to WORKDIR/raw.csv. Cold = caches dropped (echo 3 > drop_caches) and,
# for the mount, a fresh mount. Warm = the same command run once before.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PUZZLE_BIN:-$here/target/release/puzzle}
small=$here/corpora/out/small
full=$here/corpora/out/full
work=${1:-/tmp/puzzle-bench}
RUNS=${RUNS:-3}
export PUZZLE_STORE=$work/store

[ -x "$bin" ] || { echo "build the release binary first" >&2; exit 1; }
mkdir -p "$work"
raw=$work/raw.csv
: > "$raw"

mnt=$work/mnt
cleanup() { mountpoint -q "$mnt" && "$bin" umount "$mnt" >/dev/null 2>&1 || true; }
trap cleanup EXIT
mkdir -p "$mnt"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
# secs CMD...: wall seconds of CMD
secs() { local a b; a=$(now); "$@" >/dev/null 2>&1; b=$(now); echo "$b - $a" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
record() { echo "$1,$2,$3" >> "$raw"; }   # name,run,seconds

mount_img() { "$bin" mount "$1" "$mnt" --daemon >/dev/null 2>&1; }
umount_img() { "$bin" umount "$mnt" >/dev/null 2>&1; }

# --- inputs ------------------------------------------------------------------
if [ ! -f "$work/.built" ]; then
  rm -rf "$work/store" "$work/native" "$work/layout"
  mkdir -p "$work/native"
  "$bin" build "oci:$small:django-5.0.8" --tag django --no-progress
  "$bin" build "oci:$full:build-essential" --tag build-essential --no-progress
  # A 96 MiB file of real, unique data (a tar of the python3 tree), and an
  # image of 100,000 small files, both made with umoci.
  "$bin" extract django "$work/native/django"
  "$bin" extract build-essential "$work/native/build-essential"
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:big"
  { tar -C "$work/native/build-essential" -cf - . || true; } | head -c $((96 << 20)) > "$work/big.bin"
  umoci insert --image "$work/layout:big" "$work/big.bin" /big.bin
  rm -rf "$work/many" && mkdir -p "$work/many"
  for d in $(seq 0 99); do
    mkdir "$work/many/d$d"
    for f in $(seq 0 999); do echo "file $d/$f" > "$work/many/d$d/f$f"; done
  done
  # (umoci insert of the directory gives a layer puzzle's tar reader rejects
  # at its end; a GNU tar layer added with `umoci raw add-layer` is fine.)
  tar -C "$work/many" -cf "$work/many.tar" --transform 's,^\./,many/,' .
  umoci new --image "$work/layout:many"
  umoci raw add-layer --image "$work/layout:many" "$work/many.tar"
  "$bin" build "oci:$work/layout:big" --tag big --no-progress
  "$bin" build "oci:$work/layout:many" --tag many --no-progress
  "$bin" extract big "$work/native/big"
  touch "$work/.built"
fi
[ -n "${PREP_ONLY:-}" ] && exit 0

declare -A R
row() { # name: median of recorded runs
  R[$1]=$(grep "^$1," "$raw" | cut -d, -f3 | median)
}

# --- sequential read of one large file -------------------------------------
size=$(stat -c %s "$work/native/big/big.bin")
rd() { dd if="$1" of=/dev/null bs=1M 2>/dev/null; }
for i in $(seq "$RUNS"); do
  drop
  record native_cold_seq "$i" "$(secs rd "$work/native/big/big.bin")"
  record native_warm_seq "$i" "$(secs rd "$work/native/big/big.bin")"
  record native_hot_seq "$i" "$(secs rd "$work/native/big/big.bin")"
  mount_img big
  drop
  record mount_cold_seq "$i" "$(secs rd "$mnt/big.bin")"
  record mount_warm_seq "$i" "$(secs rd "$mnt/big.bin")"
  record mount_hot_seq "$i" "$(secs rd "$mnt/big.bin")"
  umount_img
done

# --- metadata: find and ls -lR over django, warm --------------------------
mount_img django
find "$mnt" >/dev/null; ls -lR "$mnt" >/dev/null
find "$work/native/django" >/dev/null; ls -lR "$work/native/django" >/dev/null
for i in $(seq "$RUNS"); do
  record native_find "$i" "$(secs sh -c "find '$work/native/django' | wc -l")"
  record mount_find "$i" "$(secs sh -c "find '$mnt' | wc -l")"
  record native_lslr "$i" "$(secs ls -lR "$work/native/django")"
  record mount_lslr "$i" "$(secs ls -lR "$mnt")"
done
umount_img

# --- every file of django: tar to a pipe (tar skips reads into /dev/null) ---
tarall() { tar -C "$1" -cf - . | cat > /dev/null; }
for i in $(seq "$RUNS"); do
  drop
  record native_tar_cold "$i" "$(secs tarall "$work/native/django")"
  record native_tar_warm "$i" "$(secs tarall "$work/native/django")"
  mount_img django
  drop
  record mount_tar_cold "$i" "$(secs tarall "$mnt")"
  record mount_tar_warm "$i" "$(secs tarall "$mnt")"
  umount_img
done

# --- mount ready time and daemon RSS -----------------------------------------
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
pid_of_mount() { findmnt -n -o SOURCE "$mnt" | awk -F: '{print $NF}'; }
for img in build-essential many; do
  for i in $(seq "$RUNS"); do
    record "ready_$img" "$i" "$(secs mount_img "$img")"
    pid=$(pid_of_mount)
    r0=$(rss "$pid")
    find "$mnt" >/dev/null
    r1=$(rss "$pid")
    echo "rss_$img,$i,$r0,$r1" >> "$work/rss.csv"
    umount_img
  done
done

for k in native_cold_seq native_warm_seq mount_cold_seq mount_warm_seq native_hot_seq mount_hot_seq native_find \
  mount_find native_lslr mount_lslr native_tar_cold native_tar_warm mount_tar_cold \
  mount_tar_warm ready_build-essential ready_many; do row "$k"; done
mbs() { echo "scale=0; $size / $1 / 1000000" | bc -l; }
ms() { echo "scale=1; $1 * 1000 / 1" | bc -l; }
files=$(find "$work/native/django" | wc -l)
echo "| measurement | native | puzzle mount | ratio |"
echo "|---|---|---|---|"
echo "| sequential read $((size >> 20)) MiB, cold | $(mbs "${R[native_cold_seq]}") MB/s | $(mbs "${R[mount_cold_seq]}") MB/s | |"
echo "| sequential read $((size >> 20)) MiB, warm | $(mbs "${R[native_warm_seq]}") MB/s | $(mbs "${R[mount_warm_seq]}") MB/s | |"
echo "| sequential read $((size >> 20)) MiB, third read | $(mbs "${R[native_hot_seq]}") MB/s | $(mbs "${R[mount_hot_seq]}") MB/s | |"
echo "| \`find \| wc -l\` django ($files entries), warm | $(ms "${R[native_find]}") ms | $(ms "${R[mount_find]}") ms | $(echo "scale=2; ${R[mount_find]} / ${R[native_find]}" | bc -l)x |"
echo "| \`ls -lR\` django, warm | $(ms "${R[native_lslr]}") ms | $(ms "${R[mount_lslr]}") ms | $(echo "scale=2; ${R[mount_lslr]} / ${R[native_lslr]}" | bc -l)x |"
echo "| tar of every django file, cold | $(ms "${R[native_tar_cold]}") ms | $(ms "${R[mount_tar_cold]}") ms | $(echo "scale=2; ${R[mount_tar_cold]} / ${R[native_tar_cold]}" | bc -l)x |"
echo "| tar of every django file, warm | $(ms "${R[native_tar_warm]}") ms | $(ms "${R[mount_tar_warm]}") ms | $(echo "scale=2; ${R[mount_tar_warm]} / ${R[native_tar_warm]}" | bc -l)x |"
echo "| mount ready (\`mount --daemon\` returns), build-essential | | $(ms "${R[ready_build-essential]}") ms | |"
echo "| mount ready, 100,000-file image | | $(ms "${R[ready_many]}") ms | |"
echo
echo "daemon RSS KiB (image,run,after mount,after find):"
cat "$work/rss.csv"
rm -f "$work/rss.csv"
