"""Run the benchmarks against a throwaway TimescaleDB cluster.

python -m bench                     # all of them, in order
python -m bench audit               # one (or several: backfill live)
python -m bench live --writer-max-age 0.05
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import uvloop

from bench import audit, backfill, live, writer
from candled import logs
from candled.store.cluster import PostgresCluster

BENCHMARKS: dict[str, Callable[[str], Awaitable[None]]] = {
    "writer": writer.run,
    "backfill": backfill.run,
    "live": live.run,
    "audit": audit.run,
}


async def fresh_database(admin_dsn: str, name: str) -> str:
    """Create an empty database `name` on the cluster and return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


async def main(names: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="candled-bench-") as tmp:
        os.chmod(tmp, 0o755)  # the server may run as `postgres` when we are root
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            if not cluster.has_timescaledb:
                print("warning: TimescaleDB is not installed; benchmarking plain PostgreSQL")
            print(f"database: {cluster.description}\n", flush=True)
            for name in names:
                started = time.perf_counter()
                # The writer benchmark keeps its own tables in `postgres`; the
                # others get an empty database each, so none sees another's rows.
                dsn = cluster.dsn if name == "writer" else await fresh_database(cluster.dsn, name)
                await BENCHMARKS[name](dsn)
                print(f"  ({name}: {time.perf_counter() - started:.0f} s in all)\n", flush=True)
        finally:
            cluster.stop()


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    # No `choices`: argparse checks an empty `*` list against them and fails.
    p.add_argument(
        "benchmarks", nargs="*", metavar="NAME",
        help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--writer-max-age", type=float, metavar="S",
        help="live: the CandleWriter's max_age (default: the daemon's)",
    )  # fmt: skip
    args = p.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


if __name__ == "__main__":
    args = _parse(sys.argv[1:])
    live.WRITER_MAX_AGE = args.writer_max_age
    logs.configure("warning", "console")  # library logs to stderr; tables on stdout
    uvloop.run(main(args.benchmarks or list(BENCHMARKS)))
    sys.exit(0)
