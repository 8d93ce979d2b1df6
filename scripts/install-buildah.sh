#!/usr/bin/env bash
# Install buildah (and debootstrap, for the stand-in base images) from Debian's packages if they
# are missing: `make image` builds with buildah where no Docker engine runs.
#
# Never fails the build: when they cannot be installed here (not root, no apt-get, offline) it
# says why and exits 0, and tests/packaging/test_image.py skips with that reason.
set -euo pipefail

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -eq 0 ]; then
    echo "buildah already installed: $(buildah --version)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "${missing[*]} not found and apt-get is not available; the image cannot be built here." >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "${missing[*]} not found and not running as root: run" \
         "'sudo apt-get install --no-install-recommends ${missing[*]}'." >&2
    exit 0
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }; then
    echo "apt-get could not install ${missing[*]} (offline?); the image cannot be built here." >&2
    exit 0
fi
echo "installed ${missing[*]} in $(( $(date +%s) - start ))s: $(buildah --version)"
