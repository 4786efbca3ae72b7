"""Run every benchmark against a throwaway TimescaleDB cluster."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import uvloop

from bench import writer
from daemon.store.cluster import PostgresCluster


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="candled-bench-") as tmp:
        os.chmod(tmp, 0o755)  # the server may run as `postgres` when we are root
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            if not cluster.has_timescaledb:
                print("warning: TimescaleDB is not installed; benchmarking plain PostgreSQL")
            print(f"database: {cluster.description}\n")
            await writer.run(cluster.dsn)
        finally:
            cluster.stop()


if __name__ == "__main__":
    uvloop.run(main())
    sys.exit(0)
