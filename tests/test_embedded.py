"""The embedded default: with no DSN, `candled` runs its own PostgreSQL
under state_dir (TimescaleDB when installed), says which, and stops it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from candled.store.cluster import find_postgres_bin, timescaledb_available
from tests.pg import scratch_dir

REPO = Path(__file__).resolve().parents[1]


def test_migrate_on_the_embedded_database() -> None:
    with scratch_dir("embedded") as base:
        config = base / "config.toml"
        config.write_text(f'[daemon]\nstate_dir = "{base / "state"}"\nlog_format = "json"\n')
        env = {k: v for k, v in os.environ.items() if k != "CANDLED_DATABASE_URL"}
        for _run in range(2):  # the second run finds the cluster initialised
            r = subprocess.run(
                [sys.executable, "-m", "candled", "migrate", "--config", str(config)],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            assert "embedded database started" in r.stderr
            assert "embedded database stopped" in r.stderr
        bin_dir = find_postgres_bin()
        assert bin_dir is not None
        expect = "with TimescaleDB" if timescaledb_available(bin_dir) else "without TimescaleDB"
        assert expect in r.stdout
        assert "migrations applied" in r.stdout
        assert (base / "state" / "pgdata" / "PG_VERSION").exists()
        assert not (base / "state" / "pgdata" / "postmaster.pid").exists()
        # No TCP: a Unix socket in a private directory (tests/test_embedded_security.py).
        assert "127.0.0.1" not in r.stderr
        assert "pgsocket" in r.stderr
        assert stat.S_IMODE((base / "state" / "pgsocket").stat().st_mode) == 0o700
