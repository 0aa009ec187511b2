#!/usr/bin/env python3
"""Layer diffs and OCI image layout assembly for the puzzle corpora.

Standard library only. Three subcommands:

  layer     diff a lower and an upper rootfs tree into one OCI layer, written
            twice: a deterministic variant (sorted entries, fixed mtime,
            numeric ids, pigz -n) and an as-built variant (readdir order, real
            nanosecond mtimes in PAX records, user/group names). Blobs go to
            <out>/blobs/sha256; a JSON record describes both.
  assemble  write configs, manifests, index.json (ref names) and oci-layout
            from layer records; remove blobs no manifest references.
  table     print tag, layers, gzip bytes and uncompressed bytes per image.

What goes into a layer (upper compared with lower, by path):
  * entries added or changed: type, mode, uid, gid, size, mtime, rdev,
    symlink target, xattrs, hard-link group; regular files whose lstat data
    is equal are compared by content hash;
  * the parent directories of every entry;
  * `.wh.NAME` for each deleted path whose parent still exists (one whiteout
    covers a deleted directory), and for a directory replaced by a non-directory;
  * hard links: every path of a link group that has a changed member is
    shipped; the first path in the layer's order carries the data and the
    others are LNKTYPE entries pointing to it. So a layer that adds a hard link
    to a lower-layer file ships that file again.
  * char/block devices (CHRTYPE/BLKTYPE), FIFOs; sockets are skipped.
  * xattrs as PAX SCHILY.xattr.* records.
Whiteouts come first in the tar (they only apply to lower layers), then the
entries.
"""

import argparse
import datetime
import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
import uuid

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


# ---------------------------------------------------------------- scanning

class Meta:
    __slots__ = ("st", "link", "xattrs", "_hash", "abspath")

    def __init__(self, abspath, st):
        self.abspath = abspath
        self.st = st
        self.link = os.readlink(abspath) if stat.S_ISLNK(st.st_mode) else None
        self.xattrs = read_xattrs(abspath)
        self._hash = None

    @property
    def fmt(self):
        return stat.S_IFMT(self.st.st_mode)

    def is_dir(self):
        return stat.S_ISDIR(self.st.st_mode)

    def is_reg(self):
        return stat.S_ISREG(self.st.st_mode)

    def key(self):
        """Everything compared except content and link group."""
        st = self.st
        size = st.st_size if not self.is_dir() else 0
        rdev = st.st_rdev if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else 0
        return (st.st_mode, st.st_uid, st.st_gid, size, st.st_mtime_ns, rdev,
                self.link, self.xattrs)

    def content_hash(self):
        if self._hash is None:
            with open(self.abspath, "rb") as f:
                self._hash = hashlib.file_digest(f, "sha256").hexdigest() \
                    if hasattr(hashlib, "file_digest") else _hash_file(f)
        return self._hash


def _hash_file(f):
    h = hashlib.sha256()
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
    return h.hexdigest()


def read_xattrs(path):
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        try:
            out.append((n, os.getxattr(path, n, follow_symlinks=False)))
        except OSError:
            pass
    return tuple(out)


def scan(root):
    """All entries under root (root itself excluded), keyed by relative path;
    plus the list of paths in readdir (os.scandir) pre-order."""
    entries, order = {}, []
    if root is None:
        return entries, order

    def walk(rel, absdir):
        with os.scandir(absdir) as it:
            for de in it:
                r = de.name if not rel else rel + "/" + de.name
                st = os.lstat(de.path)
                if stat.S_ISSOCK(st.st_mode):
                    print(f"layerdiff: skipping socket {r}", file=sys.stderr)
                    continue
                entries[r] = Meta(de.path, st)
                order.append(r)
                if stat.S_ISDIR(st.st_mode):
                    walk(r, de.path)

    walk("", root)
    return entries, order


def link_groups(entries, order):
    """path -> frozenset of the paths sharing its inode (non-directories with
    st_nlink > 1 only), and the groups as ordered lists."""
    by_ino = {}
    for p in order:
        m = entries[p]
        if not m.is_dir() and m.st.st_nlink > 1:
            by_ino.setdefault((m.st.st_dev, m.st.st_ino), []).append(p)
    member = {}
    groups = []
    for paths in by_ino.values():
        if len(paths) > 1:
            fs = frozenset(paths)
            groups.append(paths)
            for p in paths:
                member[p] = fs
    return member, groups


def parent(p):
    i = p.rfind("/")
    return p[:i] if i >= 0 else ""


def whiteout_name(p):
    par = parent(p)
    base = p[len(par) + 1:] if par else p
    return (par + "/" if par else "") + ".wh." + base


# ---------------------------------------------------------------- diffing

def diff(lower_root, upper_root):
    lower, lorder = scan(lower_root)
    upper, uorder = scan(upper_root)
    lmember, _ = link_groups(lower, lorder)
    umember, ugroups = link_groups(upper, uorder)

    changed = set()
    group_only = set()  # changed only because its hard-link group changed
    type_replaced_dirs = []  # lower dir -> upper non-dir: needs a whiteout
    for p in uorder:
        u = upper[p]
        lo = lower.get(p)
        if lo is None:
            changed.add(p)
            continue
        if lo.fmt != u.fmt:
            changed.add(p)
            if lo.is_dir():
                type_replaced_dirs.append(p)
            continue
        if lo.key() != u.key():
            changed.add(p)
            continue
        if u.is_reg() and lo.content_hash() != u.content_hash():
            changed.add(p)
            continue
        if umember.get(p, frozenset([p])) != lmember.get(p, frozenset([p])):
            changed.add(p)
            group_only.add(p)

    # A link group with one changed member is shipped whole.
    reshipped = []  # groups that pull unchanged lower files into the layer
    for paths in ugroups:
        if any(p in changed for p in paths):
            # members whose file is the lower layer's, unchanged
            unchanged_lower = [p for p in paths if p not in changed or p in group_only]
            if unchanged_lower:
                reshipped.append(paths)
            changed.update(paths)

    # Deletions: topmost deleted paths only.
    deleted = []
    for p in lorder:
        if p in upper:
            continue
        par = parent(p)
        if par == "" or (par in upper and upper[par].is_dir() and lower[par].is_dir()):
            deleted.append(p)
    whiteouts_l = deleted + type_replaced_dirs  # lower readdir order first
    whiteouts = [whiteout_name(p) for p in whiteouts_l]

    # Parent directories of every entry (and of every whiteout).
    emit = set(changed)
    for p in list(changed) + whiteouts_l:
        par = parent(p)
        while par and par not in emit:
            emit.add(par)
            par = parent(par)
    return upper, uorder, emit, whiteouts, reshipped


# ---------------------------------------------------------------- tar writing

class HashWriter:
    """File-like sink that hashes and counts what goes through it."""

    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        self.f.write(b)
        return len(b)

    def tell(self):
        return self.n

    def flush(self):
        self.f.flush()


def read_names(path):
    names = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    names.setdefault(int(parts[2]), parts[0])
    except OSError:
        pass
    return names


def write_tar(sink, upper, paths, whiteouts, deterministic, epoch, users, groups,
              build_time_ns):
    stats = {"entries": 0, "whiteouts": 0, "hardlinks": 0, "symlinks": 0,
             "chardevs": 0, "blockdevs": 0, "fifos": 0, "xattrs": 0,
             "regular": 0, "dirs": 0}
    first_of_inode = {}
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8") as tf:
        def set_time(ti, mtime_ns):
            if deterministic:
                ti.mtime = epoch
            else:
                s, ns = divmod(mtime_ns, 1_000_000_000)
                ti.mtime = s
                if ns:
                    ti.pax_headers["mtime"] = f"{s}.{ns:09d}"

        for w in whiteouts:
            ti = tarfile.TarInfo(w)
            ti.type = tarfile.REGTYPE
            ti.mode = 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "" if deterministic else "root"
            set_time(ti, build_time_ns)
            tf.addfile(ti)
            stats["whiteouts"] += 1
            stats["entries"] += 1

        for p in paths:
            m = upper[p]
            st = m.st
            ti = tarfile.TarInfo(p)
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.uid, ti.gid = st.st_uid, st.st_gid
            if deterministic:
                ti.uname = ti.gname = ""
            else:
                ti.uname = users.get(st.st_uid, "")
                ti.gname = groups.get(st.st_gid, "")
            set_time(ti, st.st_mtime_ns)
            for name, value in m.xattrs:
                ti.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
                stats["xattrs"] += 1
            fmt = stat.S_IFMT(st.st_mode)
            data = None
            if fmt == stat.S_IFDIR:
                ti.type = tarfile.DIRTYPE
                stats["dirs"] += 1
            elif fmt == stat.S_IFLNK:
                ti.type = tarfile.SYMTYPE
                ti.linkname = m.link
                stats["symlinks"] += 1
            elif fmt == stat.S_IFREG:
                ino = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and ino in first_of_inode:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = first_of_inode[ino]
                    stats["hardlinks"] += 1
                else:
                    if st.st_nlink > 1:
                        first_of_inode[ino] = p
                    ti.type = tarfile.REGTYPE
                    ti.size = st.st_size
                    data = m.abspath
                    stats["regular"] += 1
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                ti.type = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                stats["chardevs" if fmt == stat.S_IFCHR else "blockdevs"] += 1
            elif fmt == stat.S_IFIFO:
                ti.type = tarfile.FIFOTYPE
                stats["fifos"] += 1
            else:
                continue
            # Hard-linked symlinks/devices are rare; ship them as separate entries.
            if data is not None:
                with open(data, "rb") as f:
                    tf.addfile(ti, f)
            else:
                tf.addfile(ti)
            stats["entries"] += 1
    return stats


def sha256_file(path):
    with open(path, "rb") as f:
        return _hash_file(f)


def write_layer_blob(blobdir, upper, paths, whiteouts, deterministic, epoch, users,
                     groups, build_time_ns):
    os.makedirs(blobdir, exist_ok=True)
    tmp = os.path.join(blobdir, f".tmp-{uuid.uuid4().hex}")
    cmd = ["pigz", "-n", "-6", "-c"] if deterministic else ["pigz", "-6", "-c"]
    try:
        with open(tmp, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out)
            sink = HashWriter(proc.stdin)
            try:
                stats = write_tar(sink, upper, paths, whiteouts, deterministic, epoch,
                                  users, groups, build_time_ns)
            finally:
                proc.stdin.close()
                rc = proc.wait()
            if rc != 0:
                raise RuntimeError(f"{cmd[0]} exited {rc}")
            out.flush()
            os.fsync(out.fileno())
        digest = sha256_file(tmp)
        size = os.path.getsize(tmp)
        os.replace(tmp, os.path.join(blobdir, digest))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"digest": "sha256:" + digest, "size": size,
            "diff_id": "sha256:" + sink.h.hexdigest(), "uncompressed_size": sink.n,
            "stats": stats}


def cmd_layer(a):
    epoch = int(a.epoch)
    build_time_ns = int(os.path.getmtime(a.upper) * 1e9) if a.build_time is None \
        else int(a.build_time) * 1_000_000_000
    upper, uorder, emit, whiteouts, reshipped = diff(a.lower or None, a.upper)
    users = read_names(os.path.join(a.upper, "etc/passwd"))
    groups = read_names(os.path.join(a.upper, "etc/group"))
    blobdir = os.path.join(a.out, "blobs", "sha256")

    det_paths = sorted(emit)
    asb_paths = [p for p in uorder if p in emit]
    det = write_layer_blob(blobdir, upper, det_paths, sorted(whiteouts), True, epoch,
                           users, groups, build_time_ns)
    asb = write_layer_blob(blobdir, upper, asb_paths, whiteouts, False, epoch,
                           users, groups, build_time_ns)
    created = datetime.datetime.fromtimestamp(build_time_ns / 1e9, datetime.timezone.utc)
    rec = {
        "name": a.name,
        "created_by": a.created_by,
        "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "token": uuid.uuid4().hex,
        "parent": a.parent or None,
        "parent_token": a.parent_token or None,
        "det": det,
        "asbuilt": asb,
        "whiteouts": sorted(whiteouts),
        "reshipped_lower_hardlinks": [sorted(g) for g in reshipped],
    }
    tmp = a.record + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, a.record)
    s = det["stats"]
    print(f"  layer {a.name}: {s['entries']} entries ({s['regular']} files, {s['dirs']} dirs, "
          f"{s['symlinks']} symlinks, {s['hardlinks']} hard links, {s['chardevs']} char devs, "
          f"{s['whiteouts']} whiteouts, {s['xattrs']} xattrs); tar {det['uncompressed_size']} B, "
          f"gzip det {det['size']} B / as-built {asb['size']} B")
    for g in reshipped:
        print(f"    hard link to a lower file, shipped again: {' = '.join(sorted(g))}")
    for w in sorted(whiteouts):
        print(f"    whiteout: {w}")


# ---------------------------------------------------------------- assembling

def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def put_blob(blobdir, data):
    d = hashlib.sha256(data).hexdigest()
    path = os.path.join(blobdir, d)
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    return "sha256:" + d, len(data)


def iso(epoch):
    return datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_assemble(a):
    with open(a.spec) as f:
        spec = json.load(f)
    epoch = int(spec["epoch"])
    blobdir = os.path.join(a.out, "blobs", "sha256")
    os.makedirs(blobdir, exist_ok=True)
    manifests = []
    referenced = set()
    for img in spec["images"]:
        recs = []
        for rf in img["layers"]:
            with open(rf) as f:
                recs.append(json.load(f))
        for variant, suffix in (("det", ""), ("asbuilt", "-asbuilt")):
            layers = [r[variant] for r in recs]
            if variant == "det":
                created = [iso(epoch)] * len(recs)
            else:
                created = [r["created"] for r in recs]
            config = {
                "architecture": "amd64",
                "os": "linux",
                "created": created[-1],
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "LANG=C.UTF-8"],
                    "Cmd": img.get("cmd", ["/bin/bash"]),
                },
                "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
                "history": [{"created": c, "created_by": r["created_by"]}
                            for c, r in zip(created, recs)],
            }
            cdig, csize = put_blob(blobdir, canon(config))
            manifest = {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": cdig, "size": csize},
                "layers": [{"mediaType": MT_LAYER_GZIP, "digest": l["digest"],
                            "size": l["size"]} for l in layers],
            }
            for l in layers:
                if not os.path.exists(os.path.join(blobdir, l["digest"].split(":", 1)[1])):
                    sys.exit(f"layerdiff: missing layer blob {l['digest']} for {img['tag']}")
            mdig, msize = put_blob(blobdir, canon(manifest))
            referenced.update([cdig, mdig] + [l["digest"] for l in layers])
            manifests.append({
                "mediaType": MT_MANIFEST, "digest": mdig, "size": msize,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {REF_NAME: img["tag"] + suffix},
            })
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
    data = json.dumps(index, indent=2).encode() + b"\n"
    tmp = os.path.join(a.out, "index.json.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(a.out, "index.json"))
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    # Drop blobs that nothing references any more (earlier builds).
    removed = 0
    for name in os.listdir(blobdir):
        if "sha256:" + name not in referenced:
            os.unlink(os.path.join(blobdir, name))
            removed += 1
    if removed:
        print(f"  removed {removed} unreferenced blob(s)")


def cmd_table(a):
    blobdir = os.path.join(a.out, "blobs", "sha256")

    def load(d):
        with open(os.path.join(blobdir, d.split(":", 1)[1])) as f:
            return json.load(f)

    with open(os.path.join(a.out, "index.json")) as f:
        index = json.load(f)
    rows, uniq = [], {}
    for m in index["manifests"]:
        man = load(m["digest"])
        cfg = load(man["config"]["digest"])
        gz = sum(l["size"] for l in man["layers"])
        raw = 0
        for l, diff_id in zip(man["layers"], cfg["rootfs"]["diff_ids"]):
            u = a.usizes.get(diff_id) if a.usizes else None
            raw += u if u is not None else 0
            uniq[l["digest"]] = (l["size"], u or 0)
        rows.append((m["annotations"][REF_NAME], len(man["layers"]), gz, raw))
    w = max(len(r[0]) for r in rows)
    print(f"{'tag':<{w}}  layers  {'gzip bytes':>12}  {'tar bytes':>12}")
    for tag, n, gz, raw in rows:
        print(f"{tag:<{w}}  {n:>6}  {gz:>12,}  {raw:>12,}")
    tgz = sum(v[0] for v in uniq.values())
    traw = sum(v[1] for v in uniq.values())
    print(f"{'unique layers: ' + str(len(uniq)):<{w}}  {'':>6}  {tgz:>12,}  {traw:>12,}")
    total = sum(os.path.getsize(os.path.join(blobdir, n)) for n in os.listdir(blobdir))
    print(f"layout blobs on disk: {total:,} bytes")


def usizes_from_records(paths):
    out = {}
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        for v in ("det", "asbuilt"):
            out[r[v]["diff_id"]] = r[v]["uncompressed_size"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    l = sub.add_parser("layer")
    l.add_argument("--lower", help="lower rootfs (omit for the first layer)")
    l.add_argument("--upper", required=True)
    l.add_argument("--out", required=True, help="OCI layout directory")
    l.add_argument("--name", required=True)
    l.add_argument("--created-by", required=True)
    l.add_argument("--record", required=True)
    l.add_argument("--epoch", required=True, help="mtime of every entry in the det variant")
    l.add_argument("--build-time", help="unix time of the build (default: upper's mtime)")
    l.add_argument("--parent")
    l.add_argument("--parent-token")
    s = sub.add_parser("assemble")
    s.add_argument("--out", required=True)
    s.add_argument("--spec", required=True)
    t = sub.add_parser("table")
    t.add_argument("--out", required=True)
    t.add_argument("--records", nargs="*", default=[])
    a = ap.parse_args()
    if a.cmd == "layer":
        cmd_layer(a)
    elif a.cmd == "assemble":
        cmd_assemble(a)
    else:
        a.usizes = usizes_from_records(a.records)
        cmd_table(a)


if __name__ == "__main__":
    main()
