#!/usr/bin/env bash
# Cold and warm sequential reads of the 96 MiB file: native vs puzzle mount,
# alternating in one run. Inputs are those of benches/mount.sh: prepare them
# first with `PREP_ONLY=1 benches/mount.sh` (root; release binary; corpora).
#   RUNS=5 benches/mount-seq.sh [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PUZZLE_BIN:-$here/target/release/puzzle}
work=${1:-/tmp/puzzle-bench}
export PUZZLE_STORE=$work/store
mnt=$work/mnt; mkdir -p $mnt
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { local a b; a=$(date +%s.%N); "$@" >/dev/null 2>&1; b=$(date +%s.%N); echo "$b - $a" | bc -l; }
rd() { dd if="$1" of=/dev/null bs=1M 2>/dev/null; }
size=$(stat -c %s $work/native/big/big.bin)
for i in $(seq ${RUNS:-5}); do
  drop; nc=$(secs rd $work/native/big/big.bin); nw=$(secs rd $work/native/big/big.bin)
  $bin mount big $mnt --daemon >/dev/null 2>&1
  drop; mc=$(secs rd $mnt/big.bin); mw=$(secs rd $mnt/big.bin)
  $bin umount $mnt >/dev/null 2>&1
  printf "run %d: native cold %4.0f MB/s warm %5.0f MB/s | mount cold %4.0f MB/s warm %5.0f MB/s\n" $i \
    $(echo "$size/$nc/1000000" | bc -l) $(echo "$size/$nw/1000000" | bc -l) $(echo "$size/$mc/1000000" | bc -l) $(echo "$size/$mw/1000000" | bc -l)
done
