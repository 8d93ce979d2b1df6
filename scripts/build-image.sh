#!/usr/bin/env bash
# Build the conversion-relay image (`make image`): with docker where a Docker engine answers,
# else with buildah (as root; scripts/install-buildah.sh installs it).
#
# With buildah, a base image the Dockerfile names that is neither in local storage nor
# pullable is replaced by a stand-in made here from Debian packages, tagged with the
# Dockerfile's own name, and the script says so:
#   - python:3.11.X-slim-bookworm: a `debootstrap --variant=minbase bookworm` root with Debian's
#     python3.11 (3.11.2, not the official image's build) linked at /usr/local/bin/python3.11;
#   - ghcr.io/astral-sh/uv:X: a scratch image holding the project's own pinned uv (.tools/bin/uv,
#     the Makefile's UV_VERSION) at /uv.
# Stand-ins stay in buildah's storage, so later builds reuse them (a rebuild takes seconds).
#
# Package downloads inside the build trust CA_BUNDLE (default: the system bundle), passed as
# the optional build secret `ca_bundle`; CA_BUNDLE= (empty) passes none.
#
# Environment: IMAGE (default conversion-relay:<version>), CA_BUNDLE, DEBIAN_MIRROR (for the
# stand-in root; default: debootstrap's own), BUILDER=docker|buildah to choose.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
IMAGE=${IMAGE:-conversion-relay:${version}}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
python_image=$(sed -n 's/^FROM \(python:[^ ]*\).*/\1/p' Dockerfile | head -n1)
uv_image=$(sed -n 's/^COPY --from=\([^ ]*uv:[^ ]*\) .*/\1/p' Dockerfile | head -n1)
secret=()
if [ -n "${CA_BUNDLE}" ] && [ -s "${CA_BUNDLE}" ]; then
    secret=(--secret "id=ca_bundle,src=${CA_BUNDLE}")
fi

builder=${BUILDER:-}
if [ -z "${builder}" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        builder=docker
    else
        builder=buildah
    fi
fi

if [ "${builder}" = docker ]; then
    echo "building ${IMAGE} with docker (BuildKit)"
    DOCKER_BUILDKIT=1 docker build "${secret[@]}" -t "${IMAGE}" .
    docker image ls "${IMAGE}"
    exit 0
fi

if ! command -v buildah >/dev/null 2>&1; then
    echo "no Docker engine answers and buildah is not installed:" \
         "run scripts/install-buildah.sh (as root)" >&2
    exit 1
fi

have() { buildah inspect --type image "$1" >/dev/null 2>&1; }

python_stand_in() {
    local root ctr mnt
    command -v debootstrap >/dev/null 2>&1 || {
        echo "debootstrap missing: run scripts/install-buildah.sh" >&2
        exit 1
    }
    root=$(mktemp -d /tmp/relay-python-root.XXXXXX)
    # shellcheck disable=SC2086 # DEBIAN_MIRROR is optional
    debootstrap --variant=minbase --include=python3.11,ca-certificates \
        bookworm "${root}" ${DEBIAN_MIRROR:-} >"${root}.log" 2>&1 || {
        tail -n 20 "${root}.log" >&2
        exit 1
    }
    ln -sf /usr/bin/python3.11 "${root}/usr/local/bin/python3.11"
    ln -sf python3.11 "${root}/usr/local/bin/python3"
    ln -sf python3.11 "${root}/usr/local/bin/python"
    rm -rf "${root}"/var/cache/apt/archives/*.deb "${root}"/var/lib/apt/lists/*
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "${ctr}")
    cp -a "${root}/." "${mnt}/"
    buildah umount "${ctr}" >/dev/null
    buildah config --env LANG=C.UTF-8 \
        --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
        --cmd python3 "${ctr}"
    buildah commit --quiet --rm "${ctr}" "docker.io/library/${python_image}" >/dev/null
    rm -rf "${root}" "${root}.log"
}

uv_stand_in() {
    local uv_bin=.tools/bin/uv want got ctr
    want=${uv_image##*:}
    [ -x "${uv_bin}" ] || make --no-print-directory "${uv_bin}" >/dev/null
    got=$("${uv_bin}" --version | awk '{print $2}')
    if [ "${got}" != "${want}" ]; then
        echo "${uv_bin} is uv ${got}, the Dockerfile wants ${want}" >&2
        exit 1
    fi
    ctr=$(buildah from scratch)
    buildah copy --quiet "${ctr}" "${uv_bin}" /uv >/dev/null
    buildah commit --quiet --rm "${ctr}" "${uv_image}" >/dev/null
}

for base in "${python_image}" "${uv_image}"; do
    if have "${base}"; then
        continue
    fi
    if timeout 60 buildah pull --quiet "${base}" >/dev/null 2>&1; then
        echo "pulled ${base}"
        continue
    fi
    start=$(date +%s)
    case "${base}" in
        python:*) python_stand_in ;;
        *uv:*) uv_stand_in ;;
    esac
    echo "STAND-IN: ${base} cannot be pulled here; made a local stand-in" \
         "in $(( $(date +%s) - start ))s (see scripts/build-image.sh)"
done

echo "building ${IMAGE} with buildah (docker format, chroot isolation)"
buildah bud --quiet --isolation chroot --format docker --layers --pull=never \
    "${secret[@]}" -t "${IMAGE}" -f Dockerfile . >/dev/null
size=$(buildah images --format '{{.Size}}' "${IMAGE}" | head -n1)
echo "built ${IMAGE}: ${size}"
