#!/usr/bin/env python3
"""Cuts seed inputs for the fuzz targets from a real OCI image corpus and a
store the real `puzzle` binary builds from it. See fuzz/README.md.

    fuzz/seeds.py CORPUS PUZZLE_BIN OUT

CORPUS is an OCI layout (corpora/build.sh --small), PUZZLE_BIN the binary,
OUT the seeds directory (OUT/<target>/<sha1>; replaced). Needs zstd(1).
An empty PUZZLE_BIN cuts the layer_tar and oci_json seeds only.

- layer_tar: the first entries of each distinct layer, cut at an entry
  boundary under 64 KiB and under 256 KiB, and small tars of the raw entries
  of each kind found (symlinks, hard links with their target, long names,
  PAX and GNU headers, whiteouts, devices, empty and small files).
- oci_json: each tag's index entry, manifest and config, NUL-separated.
- prefetch_list: traces (puzzle-trace v1) of the regular files of each
  layer_tar seed (whole files, heads, middle ranges), plus hand-written edge
  cases (escapes, comments, bad lines).
- pack_header, meta_blob, meta_stored: packs and metadata blobs of a store
  that `puzzle build` fills from the corpus's tags and from one-layer images
  of the layer_tar seeds (small whole packs and blobs); a big pack is cut to
  its first frames (real index entries, trailer rewritten to match).
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

SMALL, LARGE = 64 << 10, 256 << 10
EOF_BLOCKS = b"\0" * 1024
PACK_MAGIC = b"PZLPACK\0"
ENTRY_LEN, TRAILER_LEN = 56, 32
INDEX_MEDIA = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"


def save(out, target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def blob(layout, digest):
    algo, hexd = digest.split(":", 1)
    with open(os.path.join(layout, "blobs", algo, hexd), "rb") as f:
        return f.read()


def tags(layout):
    """(tag or None, index descriptor, manifest) for each index entry."""
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    for desc in index["manifests"]:
        name = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
        yield name, desc, json.loads(blob(layout, desc["digest"]))


def layer_tar(layout, desc):
    raw = blob(layout, desc["digest"])
    return gzip.decompress(raw) if desc["mediaType"].endswith("gzip") else raw


def members(raw):
    """(TarInfo, start, end) of each entry; start includes its PAX/GNU headers."""
    t = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
    for m in t:
        end = m.offset_data + ((m.size + 511) // 512 * 512 if m.isreg() else 0)
        yield m, m.offset, end


def kinds(m, raw, start):
    base = os.path.basename(m.name)
    k = []
    if m.issym():
        k.append("symlink")
    if m.islnk():
        k.append("hardlink")
    if m.isdir():
        k.append("dir")
    if m.ischr() or m.isblk() or m.isfifo():
        k.append("device")
    if m.pax_headers:
        k.append("pax")
    if any(key.startswith("SCHILY.xattr.") for key in m.pax_headers):
        k.append("xattr")
    if raw[start + 156 : start + 157] in (b"L", b"K"):
        k.append("gnulong")
    if len(m.name) > 100:
        k.append("longname")
    if base.startswith(".wh."):
        k.append("whiteout")
    if m.isreg() and m.size == 0:
        k.append("empty")
    if m.isreg() and 0 < m.size <= 4096:
        k.append("small")
    if m.isreg() and m.mode & 0o6000:
        k.append("setid")
    return k


def tar_seeds(raw):
    """Prefix cuts at entry boundaries, and the first entries of each kind."""
    cuts, by_kind, offsets = {SMALL: 0, LARGE: 0}, {}, {}
    for m, start, end in members(raw):
        offsets[m.name] = (start, end)
        for limit in cuts:
            if end <= limit:
                cuts[limit] = end
        for k in kinds(m, raw, start):
            picked = by_kind.setdefault(k, [])
            if len(picked) < 4 and end - start <= SMALL:
                if m.islnk() and m.linkname in offsets:
                    s, e = offsets[m.linkname]
                    if e - s <= SMALL:
                        picked.append(raw[s:e])
                picked.append(raw[start:end])
    for limit, end in cuts.items():
        if end:
            yield raw[:end] + EOF_BLOCKS
    for picked in by_kind.values():
        yield b"".join(picked) + EOF_BLOCKS


def write_blob(layout, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs/sha256", d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}


def tiny_layout(path, tars):
    """An OCI layout with a one-layer image per tar, tagged t0, t1, ..."""
    os.makedirs(os.path.join(path, "blobs/sha256"))
    with open(os.path.join(path, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for i, tar in enumerate(tars):
        layer = write_blob(path, gzip.compress(tar, mtime=0))
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        }
        cdesc = write_blob(path, json.dumps(config).encode())
        cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA, "config": cdesc, "layers": [layer]}
        mdesc = write_blob(path, json.dumps(manifest).encode())
        mdesc["mediaType"] = MANIFEST_MEDIA
        mdesc["annotations"] = {"org.opencontainers.image.ref.name": f"t{i}"}
        entries.append(mdesc)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": INDEX_MEDIA, "manifests": entries}, f)
    return [f"t{i}" for i in range(len(tars))]


def cut_pack(pack):
    """The pack itself if small, else its first frames (under SMALL bytes, at
    least one) with their real index entries and a matching trailer."""
    if len(pack) <= LARGE:
        return pack
    t = pack[-TRAILER_LEN:]
    count, index_offset, _frames = struct.unpack("<IQI", t[12:28])
    index = pack[index_offset : index_offset + count * ENTRY_LEN]
    keep, frames, end = 0, 0, 0
    for i in range(count):
        e = index[i * ENTRY_LEN : (i + 1) * ENTRY_LEN]
        offset, clen = struct.unpack("<QI", e[32:44])
        if offset == end:  # a new frame
            if frames and offset + clen > SMALL:
                break
            frames, end = frames + 1, offset + clen
        keep = i + 1
    trailer = PACK_MAGIC + t[8:12] + struct.pack("<IQII", keep, end, frames, 0)
    return pack[:end] + index[: keep * ENTRY_LEN] + trailer


def main():
    corpus, puzzle, out = sys.argv[1:4]
    shutil.rmtree(out, ignore_errors=True)
    tars, seen = [], set()
    corpus_tags = []
    for name, desc, manifest in tags(corpus):
        if name:
            corpus_tags.append(name)
        config = blob(corpus, manifest["config"]["digest"])
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA, "manifests": [desc]}
        save(out, "oci_json", json.dumps(index, indent=2).encode() + b"\0" + blob(corpus, desc["digest"]) + b"\0" + config)
        for layer in manifest["layers"]:
            if layer["digest"] in seen:
                continue
            seen.add(layer["digest"])
            for tar in tar_seeds(layer_tar(corpus, layer)):
                save(out, "layer_tar", tar)
                tars.append(tar)
    if puzzle:
        store_seeds(corpus, corpus_tags, tars, puzzle, out)
    registry_seeds(corpus_tags, out)
    prefetch_seeds(tars, out)
    for target in sorted(os.listdir(out)):
        files = os.listdir(os.path.join(out, target))
        size = sum(os.path.getsize(os.path.join(out, target, f)) for f in files)
        print(f"seeds: {target}: {len(files)} inputs, {size >> 10} KiB")


DIGEST = "sha256:" + "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def registry_seeds(corpus_tags, out):
    """What registries and users send, in the forms they send it: references
    (one per corpus tag too), challenges, Retry-After values and times,
    token answers and auth files (host, NUL, file)."""
    refs = ["debian", "debian:bookworm", "bitnami/redis:7", "docker.io/library/python:3.12-slim",
            "index.docker.io/library/python", "quay.io/a/b@" + DIGEST, "quay.io/a/b:t@" + DIGEST,
            "localhost:5000/x", "[::1]:5000/a/b:c", "127.0.0.1:5000/lib/python3:1"]
    refs += [f"127.0.0.1:5000/lib/{t}:1" for t in corpus_tags if ":" not in t]
    for r in refs:
        save(out, "registry_ref", r.encode())
    headers = [
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/debian:pull"',
        'bearer  scope="repository:a/b:pull,push" , realm=http://127.0.0.1:1/t,service="a\\"b"',
        'Basic realm="Registry Realm"', "Negotiate", 'Bearer realm="unterminated',
        "120", "0", "Sun, 06 Nov 1994 08:49:37 GMT", "2024-05-01T10:00:00Z",
        "1994-11-06T10:49:37.123456+02:00",
    ]
    for h in headers:
        save(out, "www_authenticate", h.encode())
    tokens = [
        '{"token":"a","expires_in":300,"issued_at":"2024-05-01T10:00:00Z"}',
        '{"access_token":"b"}', '{"token":"","access_token":"c","expires_in":90.5}',
        '{"token":"d","expires_in":"300","issued_at":"garbage"}', '{"expires_in":300}',
    ]
    for t in tokens:
        save(out, "token_response", t.encode())
    configs = [
        ("docker.io", '{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="}}}'),
        ("127.0.0.1:5000", '{"auths":{"127.0.0.1:5000":{"username":"u","password":"p"}}}'),
        ("quay.io", '{"auths":{"quay.io/some/repo":{"identitytoken":"idt"}}}'),
        ("a.io", '{"auths":{"a.io":{"auth":"YTpi"},"b.io":{}},'
                 '"credHelpers":{"a.io":"pass","registry-1.docker.io":"hub"},"credsStore":"desktop"}'),
        ("b.io", '{"auths":{"b.io":{"auth":""}},"credsStore":"desktop"}'),
    ]
    for host, c in configs:
        save(out, "auth_config", host.encode() + b"\0" + c.encode())


def trace_path(name):
    """A tar member name as a trace path: absolute, %-escaped."""
    path = b"/" + name.encode("utf-8", "surrogateescape").lstrip(b"./")
    return "".join(f"%{b:02X}" if b <= 0x20 or b >= 0x7F or b == 0x25 else chr(b) for b in path)


def prefetch_seeds(tars, out):
    """Traces as `mount --trace` writes them, of the files of the layer_tar
    seeds, and a few hand-written edge cases."""
    for i, raw in enumerate(tars[:40]):
        lines = ["puzzle-trace v1"]
        for m, _, _ in members(raw):
            if not m.isreg() or m.size == 0:
                continue
            p = trace_path(m.name)
            if i % 3 == 0:
                lines.append(f"{p} 0 {m.size}")
            elif i % 3 == 1:
                lines.append(f"{p} 0 {min(m.size, 4096)}")
            else:
                lines.append(f"{p} {m.size // 2 // 4096 * 4096} {max(1, m.size - m.size // 2)}")
        save(out, "prefetch_list", ("\n".join(lines) + "\n").encode())
    for t in [
        "puzzle-trace v1\n",
        "puzzle-trace v1\n# a note\n\n/usr/lib/os-release 0 267\n/a%20b/%25%0A%FF 7 1\n",
        "puzzle-trace v1\n/x 18446744073709551614 1\n/x 0 18446744073709551615\n",
        "puzzle-trace v1\n/x 1\n", "puzzle-trace v1\n/%4 1 2\n", "puzzle-trace v2\n/x 0 1\n",
        "puzzle-trace v1\r\n/x 0 1\r\n", "puzzle-trace v1\n/x +1 2\n/y 01 0\n",
    ]:
        save(out, "prefetch_list", t.encode())


def store_seeds(corpus, corpus_tags, tars, puzzle, out):
    with tempfile.TemporaryDirectory(prefix="puzzle-seeds-") as tmp:
        # The tiny images go to a store of their own: in the corpus's store
        # their chunks would all be found in its big packs.
        stores = [os.path.join(tmp, "store"), os.path.join(tmp, "tiny-store")]
        tiny = os.path.join(tmp, "tiny")
        builds = [(stores[0], corpus, t) for t in corpus_tags if not t.endswith("-asbuilt")]
        builds += [(stores[1], tiny, t) for t in tiny_layout(tiny, tars)]
        for store, layout, tag in builds:
            r = subprocess.run(
                [puzzle, "--store", store, "--no-progress", "build", f"oci:{layout}:{tag}", "--tag", tag],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if r.returncode != 0:
                print(f"seeds: building {tag} of {layout} failed, left out: {r.stderr.strip()}")
        for store in stores:
            store_blobs(store, out)


def store_blobs(store, out):
    for _, _, manifest in tags(store):
        stored = blob(store, manifest["layers"][0]["digest"])
        save(out, "meta_stored", stored)
        raw = subprocess.run(["zstd", "-dc"], input=stored, stdout=subprocess.PIPE, check=True).stdout
        save(out, "meta_blob", raw)
        for p in manifest["layers"][1:]:
            if p["mediaType"] == "application/vnd.puzzle.pack.v1":
                save(out, "pack_header", cut_pack(blob(store, p["digest"])))


if __name__ == "__main__":
    main()
