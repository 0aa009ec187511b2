#!/usr/bin/env bash
# Install what the project needs on a Debian bookworm machine (root, or sudo).
# Idempotent: when everything is present it only checks and exits in well under
# a second. Safe for CI: non-interactive, runs `apt-get update` only when a
# package has to be installed (or its list is missing).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Debian packages the project uses:
#   umoci skopeo      check/inspect OCI layouts (corpora, tests)
#   debootstrap pigz  build the corpora (corpora/build.sh)
#   jq zstd           scripts, inspecting blobs and packs
#   fuse3             fusermount3, needed by fuser's auto-unmount
#   ca-certificates   TLS to the package registries
#   python3           corpora/layerdiff.py (standard library only)
#   chromium chromium-driver  the `puzzle stats --html` test opens the page headless
#   casync            the store-size baseline in benches/run.sh
#   gnuplot-nox       the store-size plot of benches/run.sh
#   docker-registry   a local registry for the docker:// source tests (cli/tests/registry.rs)
#   apache2-utils     htpasswd -B, for the registry basic-auth tests (cli/tests/registry_auth.rs)
#   openssl           a CA and server certificate for the TLS registry test (cli/tests/registry_tls.rs)
PKGS=(umoci skopeo debootstrap pigz jq fuse3 zstd ca-certificates python3 chromium chromium-driver
      casync gnuplot-nox docker-registry apache2-utils openssl)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
        echo "setup.sh: not root and no sudo; cannot install packages" >&2; fi
fi

installed() { # $1 = package name; true if dpkg says it is installed
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

missing=()
for p in "${PKGS[@]}"; do installed "$p" || missing+=("$p"); done

# corpora/build.sh downloads wheels on the host with `python3 -m pip download`.
# The machine's python3 (pyenv or Debian's) may already have pip; only then is
# Debian's python3-pip not needed.
if ! python3 -m pip --version >/dev/null 2>&1 && ! installed python3-pip; then
    missing+=(python3-pip)
fi

apt_install() {
    # Update the lists only when they are missing or when an install fails with
    # the lists we have (stale lists give 404s or "unable to locate").
    if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
        "${SUDO[@]}" apt-get update -qq
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@"
    elif ! "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@"; then
        "${SUDO[@]}" apt-get update -qq
        "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@"
    fi
}

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing: ${missing[*]}"
    apt_install "${missing[@]}" >/dev/null
    for p in "${missing[@]}"; do
        printf '  installed %-16s %s\n' "$p" "$(dpkg-query -W -f='${Version}' "$p")"
    done
else
    echo "setup.sh: all Debian packages present: ${PKGS[*]}"
fi

status=0
if command -v cargo >/dev/null 2>&1; then
    echo "setup.sh: $(cargo --version)"
else
    echo "setup.sh: ERROR: cargo not found (the machine's rustup toolchain should provide it; not installed here)" >&2
    status=1
fi
if [ -c /dev/fuse ]; then
    echo "setup.sh: /dev/fuse present"
else
    echo "setup.sh: WARNING: /dev/fuse missing: FUSE mount tests will be skipped or fail" >&2
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "setup.sh: WARNING: python3 -m pip unavailable: corpora/build.sh cannot download wheels" >&2
fi
exit "$status"
