#!/usr/bin/env bash
# Temporary disk of a build whose layer is big but mostly stored already
# (issue 17): a 2 GiB layer (v1) is built, then v2, the same tree with
# NEW_MB of its files rewritten, as one layer in sorted order (chunked while
# it is read) and in directory order (chunked after it is read). For each
# binary and order: the peak of the disk the build takes (the scratch file
# system's used bytes, sampled every 0.1 s, above what they were before the
# build: spools, which are unnamed temp files, new packs and index growth),
# the build's own tmp_peak_bytes where it reports one (spools only), wall
# time and peak RSS from `build --json`. Each v2 build goes into a fresh
# store holding v1 alone.
#
#   benches/tmpdisk.sh BIN [BIN...]     # e.g. an old and a new target/debug/puzzle
#
# Env: WORK (default /tmp/puzzle-tmpdisk; a 12 GB sparse ext4 image is
# loop-mounted at WORK/fs, as benches/run.sh does, and unmounted on exit),
# SIZE_MB (2048), NEW_MB (256), RUNS (1: builds of v2 per binary and order),
# ORDERS ("sorted dirorder").
# Prints a Markdown table; keeps the JSON lines in WORK/results.jsonl.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: benches/tmpdisk.sh BIN [BIN...]" >&2; exit 2; }
for b in "$@"; do [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }; done
WORK=${WORK:-/tmp/puzzle-tmpdisk}
SIZE_MB=${SIZE_MB:-2048}
NEW_MB=${NEW_MB:-256}
RUNS=${RUNS:-1}
ORDERS=${ORDERS:-sorted dirorder}
for t in python3 tar pigz mkfs.ext4 mount du jq; do
  command -v "$t" >/dev/null || { echo "needs $t (scripts/setup.sh installs it)" >&2; exit 2; }
done

mkdir -p "$WORK"
fs=$WORK/fs
cleanup() {
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
  mountpoint -q "$fs" && umount "$fs"
  true
}
trap cleanup EXIT INT TERM
mkdir -p "$fs"
mountpoint -q "$fs" && umount "$fs"
rm -f "$WORK/fs.img"
truncate -s 12G "$WORK/fs.img"
mkfs.ext4 -q -F -m 0 "$WORK/fs.img"
mount -o loop "$WORK/fs.img" "$fs"

# Two trees and three layouts, made once per WORK.
img=$WORK/images
if [ ! -f "$img/done" ]; then
  rm -rf "$img"
  mkdir -p "$img"
  python3 - "$img" "$SIZE_MB" "$NEW_MB" <<'PY'
import os, random, sys
out, size_mb, new_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(17)
# Text-like bytes: 16 symbols, about half as compressible as code.
table = bytes(b"etaoinshrdlu _\n."[i % 16] for i in range(256))
def text(n):
    return rng.randbytes(n).translate(table)
def contents(n):
    # Half the bytes compress like code and text, half like media.
    return text(n) if rng.random() < 0.5 else rng.randbytes(n)
# File sizes: many small, a few big (up to 96 MiB), SIZE_MB in all.
files, total, i = [], 0, 0
while total < size_mb << 20:
    r = rng.random()
    n = rng.randint(1, 16 << 10) if r < 0.7 else rng.randint(16 << 10, 1 << 20) if r < 0.97 else rng.randint(8 << 20, 96 << 20)
    files.append((f"d{i % 50:02}/s{i % 7}/f{i:06}.bin", n)); total += n; i += 1
v1 = os.path.join(out, "v1"); v2 = os.path.join(out, "v2")
changed, cbytes = set(), 0
order = list(range(len(files))); rng.shuffle(order)
for j in order:
    if cbytes >= new_mb << 20: break
    if files[j][1] <= 32 << 20:
        changed.add(j); cbytes += files[j][1]
for j, (p, n) in enumerate(files):
    data = contents(n)
    for root in (v1, v2):
        d = os.path.join(root, os.path.dirname(p)); os.makedirs(d, exist_ok=True)
    with open(os.path.join(v1, p), "wb") as f: f.write(data)
    if j in changed:
        data = contents(n)
    with open(os.path.join(v2, p), "wb") as f: f.write(data)
print(f"{len(files)} files, {total >> 20} MiB; {len(changed)} rewritten in v2, {cbytes >> 20} MiB")
PY
  tarit() { # DIR SORT OUT.tar.gz
    tar --sort="$2" --owner=0 --group=0 --numeric-owner --mtime=@1700000000 -C "$1" -cf - . | pigz -6 >"$3"
  }
  tarit "$img/v1" name "$img/v1.tgz"
  tarit "$img/v2" name "$img/v2-sorted.tgz"
  tarit "$img/v2" none "$img/v2-dirorder.tgz"
  python3 - "$img" <<'PY'
import gzip, hashlib, json, os, shutil, sys
img = sys.argv[1]
def blob(root, data):
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(root, "blobs/sha256"), exist_ok=True)
    with open(os.path.join(root, "blobs/sha256", d), "wb") as f: f.write(data)
    return "sha256:" + d, len(data)
for name in ("v1", "v2-sorted", "v2-dirorder"):
    root = os.path.join(img, "oci-" + name)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "oci-layout"), "w") as f: f.write('{"imageLayoutVersion":"1.0.0"}')
    src = os.path.join(img, name + ".tgz")
    h, z = hashlib.sha256(), hashlib.sha256()
    with open(src, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""): z.update(b)
    with gzip.open(src, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
    os.makedirs(os.path.join(root, "blobs/sha256"), exist_ok=True)
    shutil.copyfile(src, os.path.join(root, "blobs/sha256", z.hexdigest()))
    layer = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": "sha256:" + z.hexdigest(), "size": os.path.getsize(src)}
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h.hexdigest()]}}).encode()
    cd, cs = blob(root, cfg)
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                      "layers": [layer]}).encode()
    md, ms = blob(root, man)
    idx = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "t"}}]}
    with open(os.path.join(root, "index.json"), "w") as f: json.dump(idx, f)
PY
  rm -rf "$img/v1" "$img/v2"
  touch "$img/done"
fi

used() { df --output=used -B1 "$fs" | tail -1 | tr -d ' '; }
peak_used() { # BASE -> writes the peak of used bytes above BASE until killed
  local base=$1 peak=0 now
  while :; do
    now=$(( $(used) - base ))
    [ "$now" -gt "$peak" ] && { peak=$now; echo "$peak" >"$WORK/peak"; }
    sleep 0.1
  done
}

: >"$WORK/results.jsonl"
echo "| binary | v2 order | disk peak above before | of it spools (tmp_peak_bytes) | stored | wall s | peak RSS |"
echo "|---|---|---:|---:|---:|---:|---:|"
n=0
for run in $(seq "$RUNS"); do
  for order in $ORDERS; do
    for bin in "$@"; do
      n=$((n + 1))
      store=$fs/s$n
      "$bin" --store "$store" --no-progress build "oci:$img/oci-v1:t" --tag v1 >/dev/null 2>&1
      sync
      echo 0 >"$WORK/peak"
      peak_used "$(used)" & sampler=$!
      json=$("$bin" --store "$store" --no-progress build "oci:$img/oci-v2-$order:t" --tag v2 --json)
      kill "$sampler"; wait "$sampler" 2>/dev/null || true; sampler=
      echo "$json" | jq -c --arg bin "$bin" --arg order "$order" --argjson du "$(cat "$WORK/peak")" \
        '{bin: $bin, order: $order, tmp_du_peak: $du} + .data' >>"$WORK/results.jsonl"
      echo "$json" | jq -r --arg bin "$bin" --arg order "$order" --argjson du "$(cat "$WORK/peak")" \
        '.data | "| \($bin) | \($order) | \($du / 1048576 | floor) MiB | \(if .tmp_peak_bytes then "\(.tmp_peak_bytes / 1048576 | floor) MiB" else "-" end) | \(.stored_bytes / 1048576 | floor) MiB | \(.seconds * 100 | round / 100) | \(.peak_rss_bytes / 1048576 | floor) MiB |"'
      rm -rf "$store"
    done
  done
done
