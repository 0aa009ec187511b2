#!/bin/bash
# benches/fresh.sh [RUNS]: each whole image of the full corpus built alone into
# a fresh store (every layer new), then its -asbuilt twin into the same store
# (every chunk already stored). Prints a markdown table of medians over RUNS
# (default 5) of the seconds `puzzle build --json` reports.
# Needs: cargo build --release --locked -p puzzle (or PUZZLE_BIN=PATH);
# corpora/build.sh --full; jq.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${PUZZLE_BIN:-$PWD/target/release/puzzle}; C=$PWD/corpora/out/full; R=${1:-5}
S=$(mktemp -d /tmp/puzzle-fresh.XXXXXX)
trap 'rm -rf "$S"' EXIT
for t in base python3 nodejs build-essential django-5.0.8 numpy-2.0.2; do
  for _ in $(seq "$R"); do
    rm -rf "$S"
    a=$("$B" --store "$S" build "oci:$C:$t" --tag "$t" --json 2>/dev/null | jq -r '.data|"\(.bytes_uncompressed) \(.seconds) \(.peak_rss_bytes)"')
    b=$("$B" --store "$S" build "oci:$C:$t-asbuilt" --tag "$t-asbuilt" --json 2>/dev/null | jq -r '.data|"\(.bytes_uncompressed) \(.seconds) \(.peak_rss_bytes) \(.new_chunk_bytes)"')
    echo "$t $a $b"
  done
done | python3 -c '
import sys,statistics,collections
d=collections.defaultdict(list)
for l in sys.stdin:
    t,u,s,r,u2,s2,r2,n2=l.split(); d[t].append((int(u),float(s),int(r),int(u2),float(s2),int(r2),int(n2)))
print("| image | layer MB | fresh s (median) | fresh MB/s | as-built MB | as-built s | as-built MB/s | as-built new bytes | peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
T=[0,0,0,0]
for t,v in d.items():
    s=statistics.median(x[1] for x in v); s2=statistics.median(x[4] for x in v)
    T[0]+=v[0][0]; T[1]+=s; T[2]+=v[0][3]; T[3]+=s2
    print(f"| {t} | {v[0][0]/1e6:.1f} | {s:.3f} | {v[0][0]/1e6/s:.0f} | {v[0][3]/1e6:.1f} | {s2:.3f} | {v[0][3]/1e6/s2:.0f} | {max(x[6] for x in v)} | {max(max(x[2],x[5]) for x in v)/2**20:.0f} |")
print(f"| total | {T[0]/1e6:.1f} | {T[1]:.3f} | {T[0]/1e6/T[1]:.0f} | {T[2]/1e6:.1f} | {T[3]:.3f} | {T[2]/1e6/T[3]:.0f} | | |")
'
