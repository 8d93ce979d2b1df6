#!/usr/bin/env bash
# Installs what only the benchmark needs (idempotent; `make bench` runs it every time):
#  - FastStream for the FastStream baseline, pinned, into the project's venv;
#  - nginx-light (Debian) for the nginx sink, when it is missing and we are root.
# The venv is re-synced from uv.lock by `make env`, which removes FastStream again: that is why
# this runs before every benchmark instead of once.
set -euo pipefail
cd "$(dirname "$0")/.."

FASTSTREAM_PIN="faststream[kafka]==0.7.8"
VENV_PY="${VENV:-.venv}/bin/python"
UV=".tools/bin/uv"

if ! "$VENV_PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('faststream') != '0.7.8')" 2>/dev/null; then
    echo "bench/setup.sh: installing $FASTSTREAM_PIN into ${VENV:-.venv}"
    if [ -x "$UV" ]; then
        "$UV" pip install --quiet --python "$VENV_PY" "$FASTSTREAM_PIN"
    else
        "$VENV_PY" -m pip install --quiet "$FASTSTREAM_PIN"
    fi
fi

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench/setup.sh: installing nginx-light (Debian) for the nginx sink"
        # Keep the package from starting a system nginx on port 80: the bench starts its own.
        made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        status=0
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends nginx-light >/dev/null || status=$?
        if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
        if [ "$status" != 0 ]; then
            echo "bench/setup.sh: nginx-light did not install: nginx sink unavailable" >&2
        fi
    else
        echo "bench/setup.sh: nginx not installed (not root or no apt-get): nginx sink unavailable" >&2
    fi
fi
