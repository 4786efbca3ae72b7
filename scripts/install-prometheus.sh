#!/usr/bin/env bash
# Prometheus and promtool for the alerting rules' tests (Debian's `prometheus`).
#
# The tests run promtool and a Prometheus server of their own (own port, own
# data directory); the package's service is never started: while apt installs
# it, a policy-rc.d (unless the machine has one) tells invoke-rc.d and
# deb-systemd-invoke not to start services, with or without systemd.
# Idempotent: exits early when promtool and prometheus are on PATH.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "prometheus: already installed ($(prometheus --version 2>&1 | head -1))"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# candled: install-prometheus.sh, while apt runs\nexit 101\n' \
        | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 0755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
