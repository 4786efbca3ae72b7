#!/usr/bin/env bash
# Make TimescaleDB available to this machine's PostgreSQL.
#
# Debian 13+ ships a postgresql-NN-timescaledb package; Debian 12 does not, and
# installing trixie binaries on bookworm would upgrade libc6/perl/libssl, so
# there we build Debian's own source package (Apache edition) against the
# machine's PostgreSQL. Idempotent: exits early when the extension is present.
set -euo pipefail

PG_CONFIG=${PG_CONFIG:-$(command -v pg_config || true)}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

have_timescaledb() {
    [ -n "$PG_CONFIG" ] || return 1
    local sharedir
    sharedir=$("$PG_CONFIG" --sharedir)
    ls "$sharedir"/extension/timescaledb.control >/dev/null 2>&1
}

if have_timescaledb; then
    echo "timescaledb: already installed for $("$PG_CONFIG" --version)"
    exit 0
fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@"
}

if [ -z "$PG_CONFIG" ]; then
    # pg_config lives in libpq-dev / postgresql-server-dev-*; the server itself
    # decides the major version.
    apt_install postgresql postgresql-common
    PG_CONFIG=$(command -v pg_config || ls /usr/lib/postgresql/*/bin/pg_config | sort -V | tail -1)
fi
PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
# /usr/bin/pg_config may come from libpq-dev and report the client version;
# prefer the server's own pg_config.
if [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" ]; then
    PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
fi
echo "timescaledb: target PostgreSQL $PG_MAJOR ($PG_CONFIG)"

# 1. The distribution's binary package, where there is one.
if [ "$apt_updated" -eq 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
if apt-cache show "postgresql-$PG_MAJOR-timescaledb" >/dev/null 2>&1; then
    apt_install "postgresql-$PG_MAJOR-timescaledb"
    have_timescaledb && { echo "timescaledb: installed postgresql-$PG_MAJOR-timescaledb"; exit 0; }
fi

# 2. Build Debian's source package (trixie) against the local server.
apt_install "postgresql-server-dev-$PG_MAJOR" cmake libssl-dev libkrb5-dev build-essential dpkg-dev
srclist=/etc/apt/sources.list.d/candled-trixie-src.list
if [ ! -f "$srclist" ]; then
    echo "deb-src http://deb.debian.org/debian trixie main" | $SUDO tee "$srclist" >/dev/null
    $SUDO apt-get update -qq
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(
    cd "$work"
    apt-get source --download-only timescaledb
    dpkg-source -x ./*.dsc src >/dev/null
    cd src
    ./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DWARNINGS_AS_ERRORS=OFF -DPG_CONFIG="$PG_CONFIG" >/dev/null
    make -C build -j"$(nproc)" >/dev/null
    $SUDO make -C build install >/dev/null
)
PG_CONFIG="$PG_CONFIG"
have_timescaledb
echo "timescaledb: built from Debian source for PostgreSQL $PG_MAJOR"
