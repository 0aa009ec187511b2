#!/usr/bin/env bash
# Set up a fresh Debian machine (as root), build the small real corpus, then
# convert two django images into a store, extract one, and list the store.
# Store and rootfs go to ${DEMO_DIR:-/tmp/puzzle-demo} (wiped first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
corpora/build.sh --small
cargo build --release --locked
demo=${DEMO_DIR:-/tmp/puzzle-demo}
rm -rf "$demo"
puzzle() { target/release/puzzle --store "$demo/store" "$@"; }
set -x
puzzle build oci:corpora/out/small:django-5.0.7 --tag django:5.0.7
puzzle build oci:corpora/out/small:django-5.0.8 --tag django:5.0.8
puzzle extract django:5.0.8 "$demo/rootfs"
puzzle images
du -sh "$demo/store/blobs" corpora/out/small/blobs
