#!/usr/bin/env bash
# Memory soak of the mount daemon: random-offset reads over every file of a
# mounted image for a fixed time, sampling the daemon's memory.
#
#   benches/soak.sh [WORKDIR]            # default /tmp/puzzle-soak
#
# Env: PUZZLE_BIN (default target/release/puzzle, else target/debug/puzzle),
# IMAGE (corpus tag, default django-5.0.8), CACHE_MB (16), SECS (600),
# READERS (4 reader processes), INTERVAL (10 s between samples).
# Writes WORKDIR/rss.csv: secs,vmrss_kb,rssanon_kb,rssfile_kb,reads and
# prints it. Each read is followed by POSIX_FADV_DONTNEED on its range so
# the next read of those pages reaches the daemon instead of the page cache.
# Stops by itself after SECS; unmounts on exit, also on failure or ^C.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${PUZZLE_BIN:-$here/target/release/puzzle}
[ -x "$bin" ] || bin=$here/target/debug/puzzle
corpus=${PUZZLE_CORPUS:-$here/corpora/out/small}
work=${1:-/tmp/puzzle-soak}
IMAGE=${IMAGE:-django-5.0.8}
CACHE_MB=${CACHE_MB:-16}
SECS=${SECS:-600}
READERS=${READERS:-4}
INTERVAL=${INTERVAL:-10}
export PUZZLE_STORE=$work/store

[ -x "$bin" ] || { echo "build puzzle first (cargo build --release)" >&2; exit 1; }
mkdir -p "$work" "$work/mnt"
mnt=$work/mnt
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  mountpoint -q "$mnt" && { "$bin" umount "$mnt" >/dev/null 2>&1 || umount -l "$mnt"; }
  true
}
trap cleanup EXIT INT TERM

if ! "$bin" images 2>/dev/null | grep -q "^$IMAGE\b"; then
  "$bin" build "oci:$corpus:$IMAGE" --tag "$IMAGE" --no-progress >/dev/null
fi
"$bin" mount "$IMAGE" "$mnt" --daemon --cache-mb "$CACHE_MB" >/dev/null 2>&1
pid=$(findmnt -n -o SOURCE "$mnt" | awk -F: '{print $NF}')
[ -d "/proc/$pid" ] || { echo "no daemon for $mnt" >&2; exit 1; }

# Reader: random file (weighted by size), random offset, 4 KiB..1 MiB.
reader() {
  python3 - "$mnt" "$SECS" "$1" "$work/reads.$1" <<'PY'
import os, random, sys, time
root, secs, seed, out = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
files = []
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if os.path.isfile(p) and not os.path.islink(p) and st.st_size > 0:
            files.append((p, st.st_size))
sizes = [s for _, s in files]
rng = random.Random(seed)
end = time.monotonic() + secs
n = 0
while time.monotonic() < end:
    for (p, size) in rng.choices(files, weights=sizes, k=64):
        fd = os.open(p, os.O_RDONLY)
        try:
            ln = rng.choice((4096, 65536, 131072, 1 << 20))
            off = rng.randrange(0, max(1, size - ln + 1))
            os.pread(fd, ln, off)
            os.posix_fadvise(fd, off, ln, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        n += 1
    tmp = os.path.join(os.path.dirname(out), "." + os.path.basename(out))
    with open(tmp, "w") as f:
        f.write(f"{n}\n")
    os.replace(tmp, out)
PY
}
for i in $(seq 1 "$READERS"); do reader "$i" & pids+=($!); done

rm -f "$work"/reads.*
csv=$work/rss.csv
echo "secs,vmrss_kb,rssanon_kb,rssfile_kb,reads" > "$csv"
field() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
start=$(date +%s)
while :; do
  t=$(( $(date +%s) - start ))
  reads=$(cat "$work"/reads.* 2>/dev/null | awk '{s += $1} END {print s + 0}' || true)
  echo "$t,$(field VmRSS),$(field RssAnon),$(field RssFile),$reads" | tee -a "$csv"
  [ "$t" -ge "$SECS" ] && break
  sleep "$INTERVAL"
done
wait "${pids[@]}" 2>/dev/null || true
pids=()
echo "load: $(uptime)" >&2
