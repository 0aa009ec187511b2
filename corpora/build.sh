#!/usr/bin/env bash
# Build real OCI image corpora offline (see corpora/README.md and
# shared/CORPORA.md): Debian bookworm rootfs trees made with debootstrap, apt
# and pip inside a chroot, diffed into layers by corpora/layerdiff.py, written
# into ONE OCI image layout with a tag per image, in two variants (deterministic
# and "-asbuilt").
#
# usage: corpora/build.sh [--small|--full] [--out DIR] [--cache DIR] [--keep-rootfs]
#   --small        base, python3, django-5.0.7, django-5.0.8, django-5.0.8-rebuild (default)
#   --full         + nodejs, build-essential, django 5.0.4..5.0.8, numpy 1.26.0..1.26.4, 2.0.0..2.0.2
#   --out DIR      OCI layout to write (default: corpora/out/<size>); work trees go to DIR.work
#   --cache DIR    downloaded .debs, apt lists, wheels (default: /var/cache/puzzle-corpora)
#   --keep-rootfs  keep the rootfs trees of leaf images too (default: removed once diffed)
# Environment: SOURCE_DATE_EPOCH (default 1704067200: the det variant's mtime and
# the pip step's .pyc timestamps), PUZZLE_DEBIAN_MIRROR (default: the host's
# apt source), PYTHON (default python3).
# Needs root (debootstrap, chroot, mount). Re-running is incremental: layers
# whose record, blobs and parent are unchanged are not rebuilt.
set -euo pipefail

SIZE=small
OUT=""
CACHE=/var/cache/puzzle-corpora
KEEP_ROOTFS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --small) SIZE=small ;;
        --full) SIZE=full ;;
        --out) OUT="$2"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        --cache) CACHE="$2"; shift ;;
        --cache=*) CACHE="${1#--cache=}" ;;
        --keep-rootfs) KEEP_ROOTFS=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$REPO/corpora"
OUT="${OUT:-$REPO/corpora/out/$SIZE}"
mkdir -p "$OUT" "$CACHE"
OUT="$(cd "$OUT" && pwd)"
CACHE="$(cd "$CACHE" && pwd)"
WORK="$OUT.work"
PY="${PYTHON:-python3}"
EPOCH="${SOURCE_DATE_EPOCH:-1704067200}"
SUITE=bookworm
PIP_VERSION=24.2
T_START=$(date +%s)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { echo "build.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mount)"
for t in debootstrap pigz jq umoci skopeo chroot mount flock "$PY"; do
    command -v "$t" >/dev/null 2>&1 || die "missing tool '$t' (run scripts/setup.sh)"
done

mkdir -p "$WORK/rootfs" "$WORK/layers" "$CACHE/debootstrap" "$CACHE/apt/archives/partial" \
    "$CACHE/apt/lists/partial" "$CACHE/wheels"
exec 9>"$WORK/.lock"
flock -n 9 || die "another build.sh is using $OUT"

# ------------------------------------------------------------------ mounts
# Every mount is recorded and undone on exit, whatever the exit path.
MOUNTS=()
umount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}" ||
            echo "build.sh: WARNING: could not unmount ${MOUNTS[i]}" >&2
    done
    MOUNTS=()
}
on_exit() {
    local rc=$?
    umount_all
    [ $rc -eq 0 ] || echo "build.sh: FAILED (exit $rc); mounts undone" >&2
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

do_mount() { # do_mount TARGET mount-args...
    local target="$1"; shift
    mount "$@" "$target"
    MOUNTS+=("$target")
}

# rm -rf that refuses to run over anything still mounted.
safe_rm() {
    local d="$1"
    [ -e "$d" ] || return 0
    local real; real="$(realpath "$d")"
    [ "$real" != / ] || die "refusing to remove /"
    if awk -v p="$real" '$5 == p || index($5, p "/") == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
        die "refusing to remove $real: something is mounted below it"
    fi
    rm -rf --one-file-system "$real"
}

chroot_begin() { # bind what apt/pip need; policy-rc.d blocks service starts
    local R="$1"
    do_mount "$R/proc" -t proc proc
    rm -f "$R/etc/resolv.conf"
    touch "$R/etc/resolv.conf"
    do_mount "$R/etc/resolv.conf" --bind "$(readlink -f /etc/resolv.conf)"
    do_mount "$R/var/cache/apt/archives" --bind "$CACHE/apt/archives"
    do_mount "$R/var/lib/apt/lists" --bind "$CACHE/apt/lists"
    printf '#!/bin/sh\n# build.sh: no service starts in a chroot\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
    chmod 755 "$R/usr/sbin/policy-rc.d"
}
chroot_end() {
    local R="$1"
    umount_all
    rm -f "$R/usr/sbin/policy-rc.d" "$R/etc/resolv.conf"
}
in_chroot() { # in_chroot ROOTFS cmd...
    local R="$1"; shift
    chroot "$R" /usr/bin/env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
        SOURCE_DATE_EPOCH="$EPOCH" "$@"
}

# What every rootfs loses before it is diffed (CORPORA.md).
clean_rootfs() {
    local R="$1"
    find "$R/var/lib/apt/lists" -mindepth 1 -delete
    rm -f "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
        "$R"/var/cache/apt/archives/partial/*.deb
    rm -f "$R/var/cache/ldconfig/aux-cache"     # holds inode numbers
    find "$R/var/log" -type f -delete            # dpkg.log, apt/*, alternatives.log, bootstrap.log
    rm -f "$R/etc/resolv.conf" "$R/etc/hostname" # the host's; a runtime provides them
    find "$R/tmp" "$R/var/tmp" -mindepth 1 -delete
    rm -rf "$R/root/.cache"
}

detect_mirror() {
    if [ -n "${PUZZLE_DEBIAN_MIRROR:-}" ]; then echo "$PUZZLE_DEBIAN_MIRROR"; return; fi
    local m=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        m="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
        m="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)"
    fi
    echo "$m" # empty: debootstrap's default mirror
}

# ------------------------------------------------------------------ images
# name -> parent, kind, argument. ORDER lists parents before children.
declare -A PARENT KIND ARG
ORDER=()
img() { ORDER+=("$1"); PARENT[$1]="$2"; KIND[$1]="$3"; ARG[$1]="$4"; }

img base "" debootstrap ""
img python3 base apt python3
if [ "$SIZE" = small ]; then
    img django-5.0.7 python3 pip django==5.0.7
    img django-5.0.8 python3 pip django==5.0.8
    img django-5.0.8-rebuild python3 pip django==5.0.8
else
    img nodejs base apt nodejs
    img build-essential base apt build-essential
    for v in 5.0.4 5.0.5 5.0.6 5.0.7 5.0.8; do img "django-$v" python3 pip "django==$v"; done
    img django-5.0.8-rebuild python3 pip django==5.0.8
    for v in 1.26.0 1.26.1 1.26.2 1.26.3 1.26.4 2.0.0 2.0.1 2.0.2; do
        img "numpy-$v" python3 pip "numpy==$v"
    done
fi
declare -A HAS_CHILD
for n in "${ORDER[@]}"; do [ -z "${PARENT[$n]}" ] || HAS_CHILD[${PARENT[$n]}]=1; done

# The python3 step also deletes one base directory and hard-links one base
# file, so that this layer is guaranteed to carry a whiteout and a hard link
# to a lower-layer file (apt alone produces neither).
PY3_EXTRA="rm -rf /usr/share/doc/debconf && ln /usr/bin/sha256sum /usr/local/bin/sha256sum"

created_by() {
    local n="$1"
    case "${KIND[$n]}" in
        debootstrap) echo "debootstrap --variant=minbase $SUITE (slim: dpkg path-exclude for docs, man pages, locales)" ;;
        apt) local s="apt-get update && apt-get install -y --no-install-recommends ${ARG[$n]}"
             [ "$n" != python3 ] || s="$s && $PY3_EXTRA"
             echo "$s" ;;
        pip) echo "SOURCE_DATE_EPOCH=$EPOCH pip install --no-index --no-cache-dir ${ARG[$n]}" ;;
    esac
}

rootfs_ok() { [ -f "$WORK/rootfs/$1.ok" ] && [ -d "$WORK/rootfs/$1" ]; }
rec_field() { jq -r "$2" "$WORK/layers/$1.json"; }
blob_ok() { [ -f "$OUT/blobs/sha256/${1#sha256:}" ]; }
# A layer is up to date when its record and both blobs exist and it was
# diffed against the current build of its parent.
rec_ok() {
    local n="$1" p="${PARENT[$1]}" rec="$WORK/layers/$1.json"
    [ -f "$rec" ] || return 1
    local fields; fields="$(jq -r '[.det.digest, .asbuilt.digest, (.parent_token // "")] | join(" ")' "$rec")" || return 1
    local d a pt; read -r d a pt <<<"$fields"
    blob_ok "$d" && blob_ok "$a" || return 1
    if [ -n "$p" ]; then
        [ -f "$WORK/layers/$p.json" ] && [ "$pt" = "$(rec_field "$p" .token)" ] || return 1
    fi
}

declare -A STALE FORCED
compute_stale() {
    local n p again=1
    while [ $again = 1 ]; do
        again=0
        for n in "${ORDER[@]}"; do
            p="${PARENT[$n]}"
            if [ "${FORCED[$n]:-0}" = 1 ] || ! rec_ok "$n" || { [ -n "$p" ] && [ "${STALE[$p]}" = 1 ]; }; then
                STALE[$n]=1
            else
                STALE[$n]=0
            fi
        done
        # A child to rebuild needs its parent's tree: if that tree is gone,
        # the parent is rebuilt too (and so are all its children).
        for n in "${ORDER[@]}"; do
            p="${PARENT[$n]}"
            if [ "${STALE[$n]}" = 1 ] && [ -n "$p" ] && [ "${STALE[$p]}" = 0 ] && ! rootfs_ok "$p"; then
                FORCED[$p]=1; again=1
            fi
        done
    done
}

ensure_wheels() { # ensure_wheels SPEC -> prints the wheel directory
    local spec="$1" d="$CACHE/wheels/${1//[^A-Za-z0-9._-]/_}"
    if [ ! -f "$d/.complete" ]; then
        log "pip download $spec (+ pip==$PIP_VERSION) -> $d" >&2
        rm -rf "$d"; mkdir -p "$d"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$PY" -m pip download -q --dest "$d" \
            --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
            "pip==$PIP_VERSION" "$spec" >&2
        touch "$d/.complete"
    fi
    echo "$d"
}

build_rootfs() {
    local n="$1" p="${PARENT[$1]}" R="$WORK/rootfs/$1"
    rm -f "$R.ok"
    safe_rm "$R"
    case "${KIND[$n]}" in
    debootstrap)
        local mirror; mirror="$(detect_mirror)"
        log "debootstrap --variant=minbase $SUITE ${mirror:-(default mirror)}"
        # shellcheck disable=SC2086
        debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" "$SUITE" "$R" $mirror \
            >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
        # Slim like Debian's -slim images: no docs (but copyright), man pages,
        # info, translations, now and in every later dpkg run.
        cat >"$R/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
# puzzle corpora: a slim image, as Debian's -slim container images
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
        find "$R/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
        find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete
        local d
        for d in man groff info lintian linda locale; do
            [ ! -d "$R/usr/share/$d" ] || find "$R/usr/share/$d" -mindepth 1 -delete
        done
        ;;
    apt)
        rootfs_ok "$p" || die "parent rootfs $p missing"
        log "$n: cp -a $p; apt-get install ${ARG[$n]}"
        cp -a "$WORK/rootfs/$p" "$R"
        chroot_begin "$R"
        in_chroot "$R" apt-get update -qq
        # shellcheck disable=SC2086
        in_chroot "$R" apt-get install -y -qq --no-install-recommends ${ARG[$n]} >"$WORK/apt-$n.log" 2>&1 ||
            { tail -20 "$WORK/apt-$n.log" >&2; die "apt-get install ${ARG[$n]} failed"; }
        if [ "$n" = python3 ]; then
            in_chroot "$R" /bin/sh -ec "$PY3_EXTRA"
        fi
        chroot_end "$R"
        ;;
    pip)
        rootfs_ok "$p" || die "parent rootfs $p missing"
        local wh; wh="$(ensure_wheels "${ARG[$n]}")"
        log "$n: cp -a $p; pip install ${ARG[$n]} (in the chroot, SOURCE_DATE_EPOCH=$EPOCH)"
        cp -a "$WORK/rootfs/$p" "$R"
        mkdir "$R/tmp/wheels"
        cp "$wh"/*.whl "$R/tmp/wheels/"
        chroot_begin "$R"
        in_chroot "$R" python3 "/tmp/wheels/pip-$PIP_VERSION-py3-none-any.whl/pip" install -q \
            --no-index --find-links /tmp/wheels --no-cache-dir --disable-pip-version-check \
            --root-user-action=ignore --break-system-packages "${ARG[$n]}"
        chroot_end "$R"
        ;;
    esac
    clean_rootfs "$R"
    date +%s >"$R.ok"
}

make_layer() {
    local n="$1" p="${PARENT[$1]}" R="$WORK/rootfs/$1"
    local args=(layer --upper "$R" --out "$OUT" --name "$n" --created-by "$(created_by "$n")"
        --record "$WORK/layers/$n.json" --epoch "$EPOCH" --build-time "$(cat "$R.ok")")
    if [ -n "$p" ]; then
        args+=(--lower "$WORK/rootfs/$p" --parent "$p" --parent-token "$(rec_field "$p" .token)")
    fi
    log "$n: diff ${p:-(empty)} -> $n, write det + as-built layers"
    "$PY" "$HERE/layerdiff.py" "${args[@]}"
}

# ------------------------------------------------------------------ build
log "corpus '$SIZE' -> $OUT (work: $WORK, cache: $CACHE)"
compute_stale
built=0
for n in "${ORDER[@]}"; do
    if [ "${STALE[$n]}" = 1 ]; then
        t0=$(date +%s)
        build_rootfs "$n"
        make_layer "$n"
        built=$((built + 1))
        log "$n: done in $(( $(date +%s) - t0 )) s"
    fi
    # Leaf trees are not needed again once diffed.
    if [ "${HAS_CHILD[$n]:-0}" != 1 ] && [ "$KEEP_ROOTFS" = 0 ] && [ -e "$WORK/rootfs/$n" ]; then
        rm -f "$WORK/rootfs/$n.ok"
        safe_rm "$WORK/rootfs/$n"
    fi
done
[ $built -gt 0 ] || log "all ${#ORDER[@]} layers up to date"

# ------------------------------------------------------------------ assemble
chain() { # layer records from base to $1
    local n="$1" out=()
    while [ -n "$n" ]; do out=("$WORK/layers/$n.json" "${out[@]}"); n="${PARENT[$n]}"; done
    printf '%s\n' "${out[@]}"
}
{
    echo "{\"epoch\": $EPOCH, \"images\": ["
    sep=""
    for n in "${ORDER[@]}"; do
        cmd='["/bin/bash"]'
        case "$n" in python3|django-*|numpy-*) cmd='["python3"]' ;; nodejs) cmd='["node"]' ;; esac
        printf '%s{"tag": "%s", "cmd": %s, "layers": %s}\n' "$sep" "$n" "$cmd" \
            "$(chain "$n" | jq -R . | jq -cs .)"
        sep=","
    done
    echo "]}"
} >"$WORK/spec.json"
"$PY" "$HERE/layerdiff.py" assemble --out "$OUT" --spec "$WORK/spec.json"

# ------------------------------------------------------------------ check
CHECK_TAG=django-5.0.8
STAMP="$WORK/checked"
index_sum="$(sha256sum "$OUT/index.json" | cut -d' ' -f1)"
umoci ls --layout "$OUT" >"$WORK/umoci-ls.txt"
expected=$((2 * ${#ORDER[@]}))
[ "$(wc -l <"$WORK/umoci-ls.txt")" -eq "$expected" ] ||
    die "umoci ls lists $(wc -l <"$WORK/umoci-ls.txt") tags, expected $expected"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$index_sum" ]; then
    log "checks passed before for this index.json (umoci ls: $expected tags)"
else
    log "check: umoci ls ($expected tags), umoci unpack $CHECK_TAG, skopeo inspect"
    B="$WORK/check-bundle"
    safe_rm "$B"
    umoci unpack --image "$OUT:$CHECK_TAG" "$B" >/dev/null
    v="$(chroot "$B/rootfs" /usr/bin/env -i PATH=/usr/bin:/bin python3 -c 'import django; print(django.get_version())')"
    [ "$v" = 5.0.8 ] || die "unpacked $CHECK_TAG: django version '$v'"
    [ ! -e "$B/rootfs/usr/share/doc/debconf" ] || die "unpacked $CHECK_TAG: whiteout not applied"
    [ "$(stat -c %i "$B/rootfs/usr/bin/sha256sum")" = "$(stat -c %i "$B/rootfs/usr/local/bin/sha256sum")" ] ||
        die "unpacked $CHECK_TAG: hard link not preserved"
    [ -c "$B/rootfs/dev/null" ] || die "unpacked $CHECK_TAG: /dev/null is not a char device"
    safe_rm "$B"
    log "  unpacked $CHECK_TAG: python3 imports django $v; whiteout, hard link, /dev/null ok"
    skopeo inspect "oci:$OUT:$CHECK_TAG" | jq -c '{Digest, Architecture, Os, Layers}'
    skopeo inspect "oci:$OUT:$CHECK_TAG-asbuilt" >/dev/null
    echo "$index_sum" >"$STAMP"
fi

# ------------------------------------------------------------------ report
recs=()
for n in "${ORDER[@]}"; do recs+=("$WORK/layers/$n.json"); done
echo
"$PY" "$HERE/layerdiff.py" table --out "$OUT" --records "${recs[@]}"
log "done in $(( $(date +%s) - T_START )) s ($built layer(s) built)"
