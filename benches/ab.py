#!/usr/bin/env python3
"""Side-by-side build throughput of two (or more) puzzle binaries.

    benches/ab.py [--runs N] [--dir DIR] [--only fresh|sequence] BIN [BIN ...]

The binaries take turns run by run, so they see the same machine load (these
machines are shared; a before/after quoted from two separate runs can differ
by 10 % from load alone). Two measurements, each build timed as the wall time
of the `puzzle build` process:

- fresh: each whole image of the full corpus (base, python3, nodejs,
  build-essential, django-5.0.8, numpy-2.0.2) into an empty store (every layer
  new), then its -asbuilt twin into that store (every chunk already stored).
- sequence: the 36 tags in benches/run.sh's order into one store; group (a)
  = the deterministic builds that convert a layer (new chunks stored), group
  (b) = the -asbuilt builds (every chunk already stored).

MB/s = layer tar bytes converted (`bytes_uncompressed`) / wall seconds,
summed over the builds of a group; medians over runs. Stores go under DIR
(default: a temp dir in /tmp); put DIR on a journaled filesystem to match
benches/run.sh, which builds on a fresh ext4 loop mount. Needs the full corpus
(corpora/build.sh --full).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpora", "out", "full")
IMAGES = ["base", "python3", "nodejs", "build-essential", "django-5.0.8", "numpy-2.0.2"]
DETERMINISTIC = (
    ["base", "python3", "nodejs", "build-essential"]
    + [f"django-5.0.{i}" for i in range(4, 9)]
    + ["django-5.0.8-rebuild"]
    + [f"numpy-1.26.{i}" for i in range(5)]
    + [f"numpy-2.0.{i}" for i in range(3)]
)
SEQUENCE = DETERMINISTIC + [t + "-asbuilt" for t in DETERMINISTIC]


def build(binary, store, tag):
    """(bytes_uncompressed, wall seconds) of one build."""
    t0 = time.perf_counter()
    p = subprocess.run(
        [binary, "--store", store, "build", f"oci:{CORPUS}:{tag}", "--tag", tag, "--json"],
        capture_output=True,
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{binary} build {tag} failed:\n{p.stderr.decode(errors='replace')}")
    return json.loads(p.stdout)["data"]["bytes_uncompressed"], wall


def fresh(binary, store):
    """{image: ((bytes, wall) fresh, (bytes, wall) as-built)}."""
    out = {}
    for image in IMAGES:
        shutil.rmtree(store, ignore_errors=True)
        out[image] = (build(binary, store, image), build(binary, store, image + "-asbuilt"))
    return out


def sequence(binary, store):
    """Group totals [(bytes, wall) of (a), (bytes, wall) of (b)]."""
    shutil.rmtree(store, ignore_errors=True)
    groups = [[0, 0.0], [0, 0.0]]
    for tag in SEQUENCE:
        n, wall = build(binary, store, tag)
        if n:
            g = groups[1 if tag.endswith("-asbuilt") else 0]
            g[0] += n
            g[1] += wall
    return groups


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+", metavar="BIN")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--only", choices=["fresh", "sequence"])
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="puzzle-ab.", dir=args.dir)
    store = os.path.join(work, "store")
    fr = {b: [] for b in args.binaries}
    sq = {b: [] for b in args.binaries}
    try:
        for run in range(args.runs):
            for b in args.binaries:
                if args.only != "sequence":
                    fr[b].append(fresh(b, store))
                if args.only != "fresh":
                    sq[b].append(sequence(b, store))
                print(f"run {run + 1}/{args.runs} {b} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mbs = lambda n, s: n / 1e6 / s
    for b in args.binaries:
        print(f"## {b}")
        if fr[b]:
            print("| image | fresh MB | fresh MB/s | as-built MB | as-built MB/s |")
            print("|---|---:|---:|---:|---:|")
            tot = [0, 0.0, 0, 0.0]
            for image in IMAGES:
                (nf, _), (na, _) = fr[b][0][image]
                wf = statistics.median(r[image][0][1] for r in fr[b])
                wa = statistics.median(r[image][1][1] for r in fr[b])
                tot = [tot[0] + nf, tot[1] + wf, tot[2] + na, tot[3] + wa]
                print(f"| {image} | {nf / 1e6:.1f} | {mbs(nf, wf):.0f} | {na / 1e6:.1f} | {mbs(na, wa):.0f} |")
            print(f"| total | {tot[0] / 1e6:.1f} | **{mbs(tot[0], tot[1]):.0f}** | {tot[2] / 1e6:.1f} | **{mbs(tot[2], tot[3]):.0f}** |")
        if sq[b]:
            a = [mbs(*r[0]) for r in sq[b]]
            z = [mbs(*r[1]) for r in sq[b]]
            print(
                f"sequence: (a) new content {statistics.median(a):.0f} MB/s "
                f"({min(a):.0f}-{max(a):.0f}), (b) every chunk stored "
                f"{statistics.median(z):.0f} MB/s ({min(z):.0f}-{max(z):.0f}), {len(a)} run(s)"
            )
        print()


if __name__ == "__main__":
    main()
