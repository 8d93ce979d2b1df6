#!/usr/bin/env bash
# Install promtool (Prometheus' rule checker) from Debian's `prometheus` package if it is missing.
#
# Used by tests/unit/test_alert_rules.py: `promtool check rules` and `promtool test rules`.
# Never fails the build: when promtool cannot be installed here (not root, no apt-get, offline),
# it says why and exits 0, and those two tests are skipped with a message.
#
# Note: the package also ships a `prometheus` server and its systemd unit. In containers (no
# systemd, or a policy-rc.d that denies starts) nothing is started; on a systemd host the
# package starts the server: `systemctl disable --now prometheus` if you only want promtool.
# On Debian 12 the install takes about 10-15 s.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "promtool already installed: $(command -v promtool) ($(promtool --version 2>&1 | head -n1))"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "promtool not found and apt-get is not available: install Prometheus' promtool" \
         "(https://prometheus.io/download/) to run the alert rule tests; skipping." >&2
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "promtool not found and not running as root: run" \
         "'sudo apt-get install --no-install-recommends prometheus' to run the alert rule" \
         "tests; skipping." >&2
    exit 0
fi

start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }; then
    echo "apt-get could not install the prometheus package (offline?); alert rule tests" \
         "will be skipped." >&2
    exit 0
fi
echo "promtool installed in $(( $(date +%s) - start ))s: $(command -v promtool)" \
     "($(promtool --version 2>&1 | head -n1))"
