"""Run the benchmarks against a throwaway TimescaleDB cluster.

python -m bench                     # all of them, in order
python -m bench audit               # one (or several: backfill live)
python -m bench live --writer-max-age 0.05
python -m bench live --live-mode 1m  # 10,000 1m streams only (default: 1s, then 1m)
python -m bench growth --sizes 1M,10M   # growth (default 1M,10M,50M): only when named,
                                        # or when --sizes is given
python -m bench depth                   # backfill at depth: 100 x 200 days of 1m, and ccxt
                                        # (knobs: python -m bench.depth --help)
python -m bench takeover                # kill -9 take-over, shared budget
                                        # (knobs: python -m bench.takeover --help)
make bench BENCH=growth BENCH_SIZES=1M,10M,50M
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

from bench import audit, backfill, depth, growth, live, takeover, writer
from candled import logs
from candled.store.cluster import PostgresCluster

BENCHMARKS: dict[str, Callable[[str], Awaitable[None]]] = {
    "writer": writer.run,
    "backfill": backfill.run,
    "live": live.run,
    "audit": audit.run,
    "growth": growth.run,
    "depth": depth.run,
    "takeover": takeover.run,
}
# Run only when named: the 50M store takes a quarter of an hour and ~10 GB of
# disk, the depth backfill (28.8M candles) about as long, the take-overs ten
# minutes with three daemons a run.
ON_REQUEST = ("growth", "depth", "takeover")


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
        help=f"benchmarks to run, of {', '.join(BENCHMARKS)} (default: all but "
        f"{', '.join(ON_REQUEST)})",
    )  # fmt: skip
    p.add_argument(
        "--writer-max-age", type=float, metavar="S",
        help="live: the CandleWriter's max_age (default: the daemon's)",
    )  # fmt: skip
    p.add_argument(
        "--sizes", type=growth.parse_sizes, metavar="N,N,...",
        help="growth: store sizes in candles, e.g. 1M,10M,50M (the default); "
        "without NAMEs, runs the growth benchmark too",
    )  # fmt: skip
    p.add_argument(
        "--live-mode", choices=list(live.MODES), action="append", metavar="MODE",
        help=f"live: which run, of {', '.join(live.MODES)} (repeatable; default: all)",
    )  # fmt: skip
    p.add_argument(
        "--live-sim-processes", type=int, default=live.SIM_PROCESSES, metavar="N",
        help=f"live: simulator processes, connections handed out in turn (default "
        f"{live.SIM_PROCESSES})",
    )  # fmt: skip
    args = p.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    return args


if __name__ == "__main__":
    args = _parse(sys.argv[1:])
    live.WRITER_MAX_AGE = args.writer_max_age
    live.MODE_NAMES = args.live_mode or list(live.MODES)
    live.SIM_PROCESSES = args.live_sim_processes
    if args.sizes:
        growth.SIZES = args.sizes
    logs.configure("warning", "console")  # library logs to stderr; tables on stdout
    names = args.benchmarks or [
        n for n in BENCHMARKS if n not in ON_REQUEST or (n == "growth" and args.sizes)
    ]
    uvloop.run(main(names))
    sys.exit(0)
