#!/usr/bin/env bash
# The three jobs puzzle is for, on the small real corpus: convert two django
# images into one store, mount one read-only and read a file through the mount,
# then the report of what the two share and cost.
#
# On a fresh Debian machine (as root) it first installs what the project needs
# (scripts/setup.sh), builds the corpus (corpora/build.sh --small) and the
# release binary. The mount is taken down whatever happens (trap).
#
# Environment:
#   DEMO_DIR       where the store and the mount point go (default /tmp/puzzle-demo, wiped first)
#   PUZZLE_CORPUS  an OCI layout holding django-5.0.7 and django-5.0.8: skips setup and the corpus build
#   PUZZLE_BIN     a puzzle binary to use instead of building target/release/puzzle
#   DEMO_READ      the file read through the mount
#                  (default /usr/local/lib/python3.11/dist-packages/django/__init__.py)
set -euo pipefail
# Paths given relative to where the demo was started, before moving to the repo.
abs() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
[ -z "${PUZZLE_CORPUS:-}" ] || PUZZLE_CORPUS=$(abs "$PUZZLE_CORPUS")
[ -z "${PUZZLE_BIN:-}" ] || PUZZLE_BIN=$(abs "$PUZZLE_BIN")
[ -z "${DEMO_DIR:-}" ] || DEMO_DIR=$(abs "$DEMO_DIR")
cd "$(dirname "$0")/.."
if [ -z "${PUZZLE_CORPUS:-}" ]; then
    scripts/setup.sh
    corpora/build.sh --small
    corpus=corpora/out/small
else
    corpus=$PUZZLE_CORPUS
fi
if [ -z "${PUZZLE_BIN:-}" ]; then
    cargo build --release --locked
    bin=target/release/puzzle
else
    bin=$PUZZLE_BIN
fi
demo=${DEMO_DIR:-/tmp/puzzle-demo}
mnt=$demo/mnt
read_path=${DEMO_READ:-/usr/local/lib/python3.11/dist-packages/django/__init__.py}
# Each step is shown as `$ command` on stderr, then run.
show() { printf '\n$ %s\n' "$*" >&2; "$@"; }
puzzle() { "$bin" --store "$demo/store" "$@"; }

# Unmount if mounted: on success, on a failing step and on Ctrl-C alike.
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        puzzle umount "$mnt" || umount -l "$mnt"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cleanup # a mount left by an earlier run
rm -rf "$demo"
mkdir -p "$mnt"

# 1. Build: the second image costs only what changed.
show puzzle build "oci:$corpus:django-5.0.7" --tag django:5.0.7
show puzzle build "oci:$corpus:django-5.0.8" --tag django:5.0.8
show puzzle images
# 2. Mount: files are rebuilt from chunks as they are read.
show puzzle mount django:5.0.8 "$mnt" --daemon
show grep -m1 '^VERSION' "$mnt$read_path"
show puzzle umount "$mnt"
# 3. The report: what the images share, what each costs, what changed.
show puzzle stats --diff django:5.0.7 django:5.0.8 --top 5
show du -sh "$demo/store/blobs" "$corpus/blobs"
