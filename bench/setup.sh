#!/usr/bin/env bash
# Installs what only the benchmark needs and the venv does not have (idempotent):
#  - nginx-light (Debian) for the nginx sink, when it is missing and we are root.
# FastStream (the FastStream baseline) comes with the project's `bench` extra, which `make env`
# installs with the others.
set -euo pipefail
cd "$(dirname "$0")/.."

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
