#!/usr/bin/env python3
"""Helpers of benches/run.sh (Python 3 standard library only).

    report.py time RUSAGE_JSON -- CMD ARGS...
        Run CMD (its stdin/stdout/stderr are ours), then write one JSON object
        to RUSAGE_JSON: wall seconds (fork to reap), user and sys CPU seconds
        and peak RSS of CMD and the children it waited for (getrusage through
        wait4). Exits with CMD's exit code.

    report.py layers LAYOUT_DIR TAG... > layers.csv
        For each TAG in the order given: its layers' total size as stored
        (gzip), and the cumulative size of the distinct layer blobs of the
        tags so far.

    report.py summary OUT_DIR
        Read OUT_DIR/machine.json and OUT_DIR/raw/*, write the flattened CSVs
        (OUT_DIR/raw/*.csv), OUT_DIR/sizes.dat (input of benches/plot.gp) and
        OUT_DIR/summary.md.

Units: 1 MB = 1e6 bytes, 1 MiB = 2**20 bytes (RSS only).
"""

import csv
import glob
import json
import os
import statistics
import subprocess
import sys
import time

MB = 1e6
MIB = 1 << 20


# ---------------------------------------------------------------- time ----

def cmd_time(args):
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: report.py time RUSAGE_JSON -- CMD ARGS...")
    out, cmd = args[0], args[2:]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc  # reaped above; keep Popen from waiting again
    with open(out, "w") as f:
        json.dump({
            "wall": wall,
            "user": ru.ru_utime,
            "sys": ru.ru_stime,
            "maxrss_bytes": ru.ru_maxrss * 1024,  # Linux reports KiB
            "rc": rc,
        }, f)
        f.write("\n")
    sys.exit(rc if rc >= 0 else 128 - rc)


# -------------------------------------------------------------- layers ----

def read_blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    with open(os.path.join(layout, "blobs", algo, hexd), "rb") as f:
        return json.load(f)


def manifest_of(layout, tag):
    index = read_blob_path(os.path.join(layout, "index.json"))
    for desc in index["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            m = read_blob(layout, desc["digest"])
            if "manifests" in m:  # an image index: take linux/amd64
                for d in m["manifests"]:
                    p = d.get("platform", {})
                    if p.get("os") == "linux" and p.get("architecture") == "amd64":
                        return read_blob(layout, d["digest"])
                sys.exit(f"report.py: {tag}: no linux/amd64 manifest")
            return m
    sys.exit(f"report.py: tag {tag} not in {layout}/index.json")


def read_blob_path(path):
    with open(path, "rb") as f:
        return json.load(f)


def cmd_layers(args):
    if len(args) < 2:
        sys.exit("usage: report.py layers LAYOUT_DIR TAG...")
    layout, tags = args[0], args[1:]
    seen = set()
    cum = 0
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(["seq", "image", "layers", "image_layer_bytes", "new_layers",
                "new_layer_bytes", "cum_unique_layer_bytes"])
    for i, tag in enumerate(tags, 1):
        m = manifest_of(layout, tag)
        total = new = new_bytes = 0
        for layer in m["layers"]:
            total += layer["size"]
            if layer["digest"] not in seen:
                seen.add(layer["digest"])
                new += 1
                new_bytes += layer["size"]
        cum += new_bytes
        w.writerow([i, tag, len(m["layers"]), total, new, new_bytes, cum])


# ------------------------------------------------------------- summary ----

def jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f_mb(b, nd=1):
    return "" if b is None else f"{b / MB:,.{nd}f}"


def f_s(s, nd=2):
    return "" if s is None else f"{s:.{nd}f}"


def f_rate(b, s):
    if not b or not s:
        return "–"
    return f"{b / MB / s:,.0f}"


def f_ratio(a, b, nd=2):
    if a is None or not b:
        return ""
    return f"{a / b:.{nd}f}"


def table(header, rows, left=2):
    """A markdown table; the first `left` columns are left-aligned, the rest
    (numbers) right-aligned."""
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def group_of(rec):
    """(a) new: converted layer bytes and stored new chunks; (b) reused: converted
    layer bytes, every chunk already stored; (c) none: every layer already
    converted, nothing read."""
    b = rec["build"]
    if b["bytes_uncompressed"] == 0:
        return "c"
    return "a" if b["new_chunks"] > 0 else "b"


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


BUILD_FIELDS = ["layers", "layers_reused", "bytes_read", "bytes_uncompressed",
                "bytes_chunked", "new_chunks", "new_chunk_bytes", "reused_chunks",
                "reused_chunk_bytes", "stored_bytes", "packs_written", "files",
                "seconds", "peak_rss_bytes"]
STORE_FIELDS = ["blobs_bytes", "index_bytes", "store_bytes", "blobs_du", "store_du"]
STATS_FIELDS = ["file_dedup_bytes", "chunk_bytes", "stored_bytes", "source_bytes",
                "logical_bytes", "pack_bytes", "metadata_bytes"]


def cmd_summary(args):
    out = args[0]
    raw = os.path.join(out, "raw")
    machine = read_blob_path(os.path.join(out, "machine.json"))
    runs = []
    for path in sorted(glob.glob(os.path.join(raw, "build-run*.jsonl")),
                       key=lambda p: int(p.rsplit("run", 1)[1].split(".")[0])):
        recs = jsonl(path)
        runs.append(recs)
        rows = []
        for r in recs:
            rows.append([r["run"], r["seq"], r["image"], group_of(r)]
                        + [r["rusage"][k] for k in ("wall", "user", "sys", "maxrss_bytes")]
                        + [r["build"][k] for k in BUILD_FIELDS]
                        + [r["store"][k] for k in STORE_FIELDS]
                        + [r["stats"].get(k) for k in STATS_FIELDS])
        write_csv(path[:-len(".jsonl")] + ".csv",
                  ["run", "seq", "image", "group", "wall_s", "user_s", "sys_s", "maxrss_bytes"]
                  + BUILD_FIELDS + STORE_FIELDS + ["stats_" + k for k in STATS_FIELDS],
                  rows)
    if not runs:
        sys.exit("report.py: no build runs in " + raw)
    images = [r["image"] for r in runs[0]]
    for recs in runs[1:]:
        if [r["image"] for r in recs] != images:
            sys.exit("report.py: runs built different image lists")
    nruns = len(runs)

    layers = {}
    with open(os.path.join(raw, "layers.csv")) as f:
        for row in csv.DictReader(f):
            layers[row["image"]] = {k: int(v) for k, v in row.items() if k != "image"}

    casync = {}
    cpath = os.path.join(raw, "casync.jsonl")
    if os.path.exists(cpath):
        recs = jsonl(cpath)
        for r in recs:
            casync[r["image"]] = r
        write_csv(os.path.join(raw, "casync.csv"),
                  ["seq", "image", "tree_bytes", "unpack_wall_s", "make_wall_s",
                   "make_user_s", "make_sys_s", "make_maxrss_bytes", "chunk_bytes",
                   "caidx_bytes", "chunks", "store_du"],
                  [[r["seq"], r["image"], r["tree_bytes"], r["unpack"]["wall"],
                    r["make"]["wall"], r["make"]["user"], r["make"]["sys"],
                    r["make"]["maxrss_bytes"], r["chunk_bytes"], r["caidx_bytes"],
                    r["chunks"], r["store_du"]] for r in recs])

    extract = []
    epath = os.path.join(raw, "extract.jsonl")
    if os.path.exists(epath):
        extract = jsonl(epath)
        write_csv(os.path.join(raw, "extract.csv"),
                  ["tool", "image", "run", "wall_s", "user_s", "sys_s", "maxrss_bytes",
                   "sync_wall_s", "tree_bytes"],
                  [[r["tool"], r["image"], r["run"], r["rusage"]["wall"], r["rusage"]["user"],
                    r["rusage"]["sys"], r["rusage"]["maxrss_bytes"], r["sync"]["wall"],
                    r.get("tree_bytes")] for r in extract])

    # ---- per image, medians over runs
    per = []
    for i, name in enumerate(images):
        rs = [recs[i] for recs in runs]
        groups = {group_of(r) for r in rs}
        b = lambda k: med([r["build"][k] for r in rs])  # noqa: E731
        per.append({
            "seq": i + 1, "image": name,
            "group": groups.pop() if len(groups) == 1 else "?",
            "wall": med([r["rusage"]["wall"] for r in rs]),
            "cpu": med([r["rusage"]["user"] + r["rusage"]["sys"] for r in rs]),
            "rss": med([r["rusage"]["maxrss_bytes"] for r in rs]),
            "rss_self": b("peak_rss_bytes"),
            "layers": b("layers"), "layers_reused": b("layers_reused"),
            "conv": b("bytes_uncompressed"), "chunked": b("bytes_chunked"),
            "new": b("new_chunk_bytes"), "reused": b("reused_chunk_bytes"),
            "stored": b("stored_bytes"),
            "blobs": med([r["store"]["blobs_bytes"] for r in rs]),
            "blobs_set": {r["store"]["blobs_bytes"] for r in rs},
            "store": med([r["store"]["store_bytes"] for r in rs]),
            "store_du": med([r["store"]["store_du"] for r in rs]),
            "file_dedup": med([r["stats"].get("file_dedup_bytes") for r in rs]),
            "chunk_dedup": med([r["stats"].get("chunk_bytes") for r in rs]),
            "source": med([r["stats"].get("source_bytes") for r in rs]),
        })

    # ---- totals per run, then medians
    def group_totals(pred):
        walls, cpus, convs, rss, counts, new, reused = [], [], [], [], [], [], []
        for recs in runs:
            sel = [r for r in recs if pred(r)]
            walls.append(sum(r["rusage"]["wall"] for r in sel))
            cpus.append(sum(r["rusage"]["user"] + r["rusage"]["sys"] for r in sel))
            convs.append(sum(r["build"]["bytes_uncompressed"] for r in sel))
            rss.append(max((r["rusage"]["maxrss_bytes"] for r in sel), default=0))
            new.append(sum(r["build"]["new_chunk_bytes"] for r in sel))
            reused.append(sum(r["build"]["reused_chunk_bytes"] for r in sel))
            counts.append(len(sel))
        rates = [c / w / MB for c, w in zip(convs, walls) if w and c]
        return {"n": counts[0], "wall": med(walls), "wall_min": min(walls),
                "wall_max": max(walls), "cpu": med(cpus), "conv": med(convs),
                "rate": med(rates), "rate_min": min(rates, default=None),
                "rate_max": max(rates, default=None), "rss": med(rss),
                "new": med(new), "reused": med(reused)}

    asb = lambda r: r["image"].endswith("-asbuilt")  # noqa: E731
    totals = [
        ("all builds", group_totals(lambda r: True)),
        ("(a) new content: some new chunks stored", group_totals(lambda r: group_of(r) == "a")),
        ("(b) every chunk already stored", group_totals(lambda r: group_of(r) == "b")),
        ("(c) every layer already converted (nothing read)",
         group_totals(lambda r: group_of(r) == "c")),
        ("deterministic tags", group_totals(lambda r: not asb(r))),
        ("`-asbuilt` tags", group_totals(asb)),
    ]

    # ---- sizes.dat for gnuplot
    with open(os.path.join(out, "sizes.dat"), "w") as f:
        f.write("# seq image gzip_MB puzzle_blobs_MB puzzle_store_MB file_dedup_MB casync_MB\n")
        for p in per:
            c = casync.get(p["image"])
            cs = (c["chunk_bytes"] + c["caidx_bytes"]) / MB if c else float("nan")
            fd = p["file_dedup"] / MB if p["file_dedup"] is not None else float("nan")
            f.write(f'{p["seq"]} "{p["image"]}" {layers[p["image"]]["cum_unique_layer_bytes"] / MB:.3f} '
                    f'{p["blobs"] / MB:.3f} {p["store"] / MB:.3f} {fd:.3f} {cs:.3f}\n')

    # ---- summary.md
    m = machine
    L = []
    L.append(f'# puzzle end-to-end benchmark: `{m["corpus"]}` corpus\n')
    L.append(f'- command: `{m["command"]}`')
    L.append(f'- started {m["start"]}, finished {m.get("end", "?")}, '
             f'{m.get("elapsed_s", 0) / 60:.1f} min in all')
    L.append(f'- commit {m["commit"]}; {m["puzzle_version"]}; {m["casync_version"]}; '
             f'{m["umoci_version"]}')
    L.append(f'- machine: {m["cpu"]}, {m["nproc"]} CPUs, {m["mem_bytes"] / (1 << 30):.1f} GiB RAM, '
             f'kernel {m["kernel"]}')
    L.append(f'- stores, trees and extract targets on {m["fs"]}')
    L.append(f'- load average (1/5/15 min) at start: {m["load_start"]}; at end: {m.get("load_end", "?")}')
    ph = m.get("phases", {})
    if ph:
        L.append("- time per part: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in ph.items()))
    L.append(f'- {len(images)} images, built in this order into one fresh store, '
             f'{nruns} run(s) (a fresh store each run); figures are medians over runs '
             f'unless said otherwise. Corpus blobs read once before the runs '
             f'(warm page cache); caches not dropped.')
    L.append("")

    L.append("## Build, per image (medians over runs)\n")
    L.append("MB/s = layer tar bytes converted (`bytes_uncompressed`) / wall seconds of the "
             "`puzzle build` process; CPU = user + sys; RSS = peak resident set (getrusage). "
             "new / reused = raw chunk bytes; stored = compressed bytes of the new chunks. "
             "Group: (a) new chunks stored, (b) layers converted but every chunk already "
             "stored, (c) every layer already converted (nothing to read).\n")
    rows = []
    for p in per:
        rows.append([p["seq"], f'`{p["image"]}`', f'{p["layers"] - p["layers_reused"]}/{p["layers"]}',
                     f_mb(p["conv"]), f_s(p["wall"]), f_rate(p["conv"], p["wall"]),
                     f_s(p["cpu"]), f_ratio(p["cpu"], p["wall"]), f'{p["rss"] / MIB:.0f}',
                     f_mb(p["new"]), f_mb(p["reused"]), f_mb(p["stored"]), p["group"]])
    L.append(table(["#", "image", "layers converted", "converted MB", "wall s", "MB/s", "CPU s",
                    "CPU/wall", "peak RSS MiB", "new MB", "reused MB", "stored MB", "group"], rows))
    L.append("")

    L.append("## Build totals (per run: sum of bytes / sum of wall; then median over runs)\n")
    rows = []
    for label, t in totals:
        if t["n"] == 0:
            continue
        rng = ""
        if nruns > 1 and t["rate_min"] is not None:
            rng = f'{t["rate_min"]:,.0f}–{t["rate_max"]:,.0f}'
        rows.append([label, t["n"], f_mb(t["conv"]), f_s(t["wall"]),
                     f'{t["rate"]:,.0f}' if t["rate"] else "–", rng,
                     f_s(t["cpu"]), f_ratio(t["cpu"], t["wall"]), f'{t["rss"] / MIB:.0f}',
                     f_mb(t["new"]), f_mb(t["reused"])])
    L.append(table(["builds", "n", "converted MB", "wall s", "MB/s", "MB/s range over runs",
                    "CPU s", "CPU/wall", "max peak RSS MiB", "new MB", "reused MB"], rows, left=1))
    L.append("")
    walls = [sum(r["rusage"]["wall"] for r in recs) for recs in runs]
    L.append(f'Total build wall time per run: {", ".join(f"{w:.1f} s" for w in walls)}.')
    varied = [p["image"] for p in per if len(p["blobs_set"]) > 1]
    if nruns > 1:
        L.append("Store blobs were byte-for-byte the same size in every run."
                 if not varied else
                 f'Store blob bytes differed between runs after: {", ".join(varied)} (medians shown).')
    L.append("")

    L.append("## Store size after each image is added\n")
    L.append("Sizes in MB (1e6 B). puzzle blobs = regular files under STORE/blobs (packs, "
             "metadata, configs, manifests); + index = every file of the store, sled index "
             "included. gzip layers = distinct layer blobs of the images so far, as in the "
             "OCI layout. file dedup = `totals.file_dedup_bytes` of `puzzle stats --json` "
             "(distinct file contents, uncompressed: what whole-file dedup keeps before any "
             "compression); chunk dedup = `totals.chunk_bytes` (distinct chunks, uncompressed). "
             "casync = chunk files of one shared `casync make` store (defaults: 64K average "
             "chunks, zstd) plus the .caidx files, one run (deterministic). "
             "×gzip = size / gzip layers (lower is better).\n")
    rows = []
    for p in per:
        g = layers[p["image"]]["cum_unique_layer_bytes"]
        c = casync.get(p["image"])
        cs = (c["chunk_bytes"] + c["caidx_bytes"]) if c else None
        rows.append([p["seq"], f'`{p["image"]}`', f_mb(g), f_mb(p["blobs"]), f_ratio(p["blobs"], g),
                     f_mb(p["store"]), f_ratio(p["store"], g), f_mb(p["file_dedup"]),
                     f_mb(p["chunk_dedup"]), f_mb(cs), f_ratio(cs, g),
                     f_s(c["make"]["wall"]) if c else ""])
    L.append(table(["#", "image added", "gzip layers", "puzzle blobs", "×gzip", "puzzle + index",
                    "×gzip", "file dedup (raw)", "chunk dedup (raw)", "casync", "×gzip",
                    "casync make s"], rows))
    L.append("")
    last = per[-1]
    lc = casync.get(last["image"])
    mism = [p["image"] for p in per
            if p["source"] is not None and p["source"] != layers[p["image"]]["cum_unique_layer_bytes"]]
    L.append(f'Final store on disk (du, allocated blocks incl. directories): puzzle '
             f'{f_mb(last["store_du"])} MB'
             + (f', casync {f_mb(lc["store_du"] + lc["caidx_bytes"])} MB in {lc["chunks"]:,} chunk files'
                if lc else "") + ".")
    if lc:
        L.append(f'casync make, all images: {sum(c["make"]["wall"] for c in casync.values()):.1f} s wall, '
                 f'{sum(c["make"]["user"] + c["make"]["sys"] for c in casync.values()):.1f} s CPU '
                 f'(one run; trees unpacked with umoci before each make, not counted).')
    else:
        L.append("casync was not run (SKIP_CASYNC).")
    L.append("`puzzle stats` totals.source_bytes equals the gzip column after every image."
             if not mism else
             f'`puzzle stats` totals.source_bytes differs from the gzip column after: {", ".join(mism)}.')
    L.append("\nPlot: `sizes.svg` (and `sizes.png`) in the results directory.\n")

    L.append("## Extract (warm)\n")
    if extract:
        L.append("`puzzle extract TAG DIR` from the last run's store against `umoci unpack --image "
                 "LAYOUT:TAG BUNDLE` from the corpus layout, same filesystem. Warm: one untimed "
                 "run of each first, so the store, the layout and the binaries are in the page "
                 "cache (caches are not dropped: this compares the tools, not the disk). Target "
                 "removed and the filesystem synced (`sync -f`) before every timed run; tools "
                 "alternate. +sync = the wall time of a `sync -f` right after (writeback of what "
                 "was written). "
                 "tree MB = sum of the regular files' sizes in the extracted tree (a hard-linked "
                 "file counted once per name). "
                 f"Medians of {m['runs']} run(s).\n")
        names = []
        for r in extract:
            if r["image"] not in names:
                names.append(r["image"])
        rows = []
        for n in names:
            def mw(tool, key="wall", part="rusage"):
                return med([r[part][key] for r in extract if r["image"] == n and r["tool"] == tool])
            pw, uw = mw("puzzle"), mw("umoci")
            ps, us = mw("puzzle", part="sync"), mw("umoci", part="sync")
            pc = med([r["rusage"]["user"] + r["rusage"]["sys"] for r in extract
                      if r["image"] == n and r["tool"] == "puzzle"])
            uc = med([r["rusage"]["user"] + r["rusage"]["sys"] for r in extract
                      if r["image"] == n and r["tool"] == "umoci"])
            tb = med([r.get("tree_bytes") for r in extract if r["image"] == n and r["tool"] == "puzzle"])
            rows.append([f"`{n}`", f_mb(tb), f_s(pw), f_s(pc), f_s(ps), f_s(uw), f_s(uc), f_s(us),
                         f_ratio(pw, uw), f_ratio(pw + ps, uw + us)])
        L.append(table(["image", "tree MB", "puzzle s", "puzzle CPU s", "+sync s", "umoci s",
                        "umoci CPU s", "+sync s", "puzzle/umoci", "incl. sync"], rows, left=1))
    else:
        L.append("Not run (SKIP_EXTRACT).")
    L.append("")

    L.append("## Mount\n")
    if m.get("mount_results"):
        L.append(f'`benches/mount.sh` was run (MOUNT=1); its output is in `{m["mount_results"]}`:\n')
        with open(os.path.join(out, m["mount_results"])) as f:
            L.append(f.read().rstrip())
    else:
        L.append("Not measured here: see `benches/mount.sh` and its figures in "
                 "`benches/RESULTS.md` (MOUNT=1 runs it as part of this script).")
    L.append("")

    L.append("## Files\n")
    L.append("`raw/build-runN.jsonl` and `.csv` (one line per build: rusage, the `build` JSON, "
             "store sizes, `stats` totals), `raw/layers.csv`, `raw/casync.jsonl`/`.csv`, "
             "`raw/extract.jsonl`/`.csv`, `machine.json`, `sizes.dat`, `sizes.svg`, "
             "`sizes.png`, `run.log`.")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(L) + "\n")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "time":
        cmd_time(args)
    elif cmd == "layers":
        cmd_layers(args)
    elif cmd == "summary" and len(args) == 1:
        cmd_summary(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
