"""Chaos run: the daemon against the simulated exchange and a TimescaleDB
cluster of its own, while at random intervals the daemon is killed with
SIGKILL and restarted, the database is stopped and started, and venue faults
are switched on and off. At the end: everything up, a settle period, a
graceful stop, one heal cycle (`candled repair`), then the store is compared
with the simulator's truth.

    .venv/bin/python scripts/chaos.py --minutes 11 [--seed S]

Exit 1 if any candle is missing, duplicated, extra or has other values than
the truth. Not part of the test suite (it runs for minutes); `make chaos`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for `tests`

import asyncpg

from candled.domain import SeriesKey, Timeframe
from candled.store.cluster import PostgresCluster
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from candled_sim.truth import Truth
from tests.daemon_proc import (
    StoreDiff,
    compare_with_truth,
    repair_pass,
    running_daemon,
    series_toml,
    stop,
    venue_toml,
    write_config,
)
from tests.pg import free_port, own_cluster

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
LOOKBACK = {"1s": timedelta(hours=1), "1m": timedelta(days=1)}
# The e2e faults test's faults, plus connection resets and slow answers.
FAULTS = {
    "http_errors": {"every": 15, "burst": 3, "status": 503},
    "connection_resets": {"probability": 0.02},
    "slow_responses": {"every": 10, "delay": "1s"},
    "ws_drop": {"every": "20s"},
    "ws_idle": {"after": "6s", "duration": "30s", "pings": True},
    "lost_closing_frames": {"every": 7},
}
KILL_EVERY_S = (20.0, 45.0)
DB_OUTAGE_EVERY_S = (45.0, 120.0)
DB_OUTAGE_FOR_S = (5.0, 30.0)
FAULT_TOGGLE_EVERY_S = (30.0, 90.0)
# `candled repair` audits up to 30 s before now: judge bars older than this.
AUDIT_SETTLE = timedelta(seconds=35)


@dataclass
class Tally:
    kills: int = 0
    crashes: int = 0  # exits nobody asked for
    db_outages: int = 0
    db_down_s: float = 0.0
    fault_toggles: int = 0


class Clock:
    """Elapsed time for the event log, and the end of the chaos phase."""

    def __init__(self, minutes: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + minutes * 60

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:7.1f}s] {text}", flush=True)

    def next_wait(self, rng: random.Random, bounds: tuple[float, float]) -> float | None:
        """A random wait, or None when the next event would fall past the end."""
        wait = rng.uniform(*bounds)
        return wait if time.monotonic() + wait < self.deadline else None


def scenario(seed: int, faults: bool) -> dict[str, Any]:
    """The same seed and listings with or without faults: the same truth."""
    return {
        "seed": seed,
        "symbols": [
            {"symbol": "AAAUSDT", "listed": "-2h"},  # genesis inside the 1m lookback
            *({"symbol": s, "listed": "-30d"} for s in SYMBOLS[1:]),
        ],
        "faults": FAULTS if faults else {},
    }


class Venue:
    """The simulated exchange on a fixed port; faults are switched by
    restarting it with another scenario (same seed, same load time)."""

    def __init__(self, seed: int, loaded_at: datetime) -> None:
        self.seed, self.loaded_at = seed, loaded_at
        self.port = free_port()
        self.faulty = False
        self.sim = self._new()

    def _new(self) -> SimExchange:
        return SimExchange(parse_scenario(scenario(self.seed, self.faulty), self.loaded_at))

    @property
    def truth(self) -> Truth:
        return self.sim.truth

    async def start(self) -> None:
        await self.sim.start("127.0.0.1", self.port)

    async def switch(self, faulty: bool) -> None:
        await self.sim.stop()
        self.faulty = faulty
        self.sim = self._new()
        await self.start()

    async def stop(self) -> None:
        await self.sim.stop()


class Daemon:
    """The current `candled run` process; one log file per incarnation."""

    def __init__(self, config: Path, dsn: str, work: Path, clock: Clock, tally: Tally) -> None:
        self.config, self.dsn, self.work, self.clock, self.tally = config, dsn, work, clock, tally
        self.incarnations = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._stack = AsyncExitStack()
        self._lock = asyncio.Lock()  # the killer and the crash watcher take turns

    async def start(self) -> None:
        self.incarnations += 1
        log = self.work / f"daemon-{self.incarnations:02d}.log"
        running = running_daemon(self.config, self.dsn, log)
        self.proc = await self._stack.enter_async_context(running)
        self.clock.say(f"daemon #{self.incarnations} started (pid {self.proc.pid})")

    async def kill_and_restart(self, rng: random.Random) -> None:
        async with self._lock:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            self.tally.kills += 1
            self.clock.say(f"kill -9 #{self.tally.kills} (pid {self.proc.pid})")
            await self._stack.aclose()
            await asyncio.sleep(rng.uniform(0, 5))  # bars close while nothing runs
            await self.start()

    async def restart_if_exited(self) -> None:
        """Restart a daemon that exited on its own, as systemd would; count it."""
        async with self._lock:
            if self.proc is not None and self.proc.returncode is not None:
                self.tally.crashes += 1
                self.clock.say(f"daemon exited by itself with {self.proc.returncode}: restarting")
                await self._stack.aclose()
                await self.start()

    async def stop(self) -> int:
        async with self._lock:
            assert self.proc is not None
            code = await stop(self.proc, within=60)
            await self._stack.aclose()
            return code

    async def close(self) -> None:
        """Kill whatever still runs (after an error)."""
        await self._stack.aclose()


async def kill_loop(daemon: Daemon, clock: Clock, rng: random.Random) -> None:
    while (wait := clock.next_wait(rng, KILL_EVERY_S)) is not None:
        await asyncio.sleep(wait)
        await daemon.kill_and_restart(rng)


async def watch_loop(daemon: Daemon, clock: Clock) -> None:
    while time.monotonic() < clock.deadline:
        await daemon.restart_if_exited()
        await asyncio.sleep(1)


async def db_loop(cluster: PostgresCluster, clock: Clock, tally: Tally, rng: random.Random) -> None:
    while (wait := clock.next_wait(rng, DB_OUTAGE_EVERY_S)) is not None:
        await asyncio.sleep(wait)
        down_for = rng.uniform(*DB_OUTAGE_FOR_S)
        await asyncio.to_thread(cluster.stop)
        tally.db_outages += 1
        clock.say(f"database stopped (outage #{tally.db_outages}, {down_for:.0f} s)")
        await asyncio.sleep(down_for)
        await asyncio.to_thread(cluster.start)  # same port: the daemon finds it again
        tally.db_down_s += down_for
        clock.say("database started")


async def fault_loop(venue: Venue, clock: Clock, tally: Tally, rng: random.Random) -> None:
    while (wait := clock.next_wait(rng, FAULT_TOGGLE_EVERY_S)) is not None:
        await asyncio.sleep(wait)
        await venue.switch(not venue.faulty)
        tally.fault_toggles += 1
        clock.say(f"venue faults {'on' if venue.faulty else 'off'}")


def config_body(sim_port: int) -> str:
    body = """
[healing]
interval = "1m"
max_fills = 100
""" + venue_toml("binance", sim_port, idle_timeout='"5s"')
    for tf, depth in LOOKBACK.items():
        hours = int(depth.total_seconds() // 3600)
        body += series_toml("binance", SYMBOLS, [tf], lookback=f'"{hours}h"')
    return body


async def compare(
    dsn: str, truth: Truth, repaired_at: datetime, stopped: datetime
) -> dict[SeriesKey, tuple[datetime, datetime, StoreDiff]]:
    """Each series against the truth over the window the heal cycle covers:
    from its lookback (or genesis) to the audit's settle margin before the stop."""
    diffs = {}
    conn = await asyncpg.connect(dsn)
    try:
        for symbol in SYMBOLS:
            for tf_text, depth in LOOKBACK.items():
                key, tf = SeriesKey("binance", symbol, tf_text), Timeframe.parse(tf_text)
                genesis = truth.genesis(key)
                assert genesis is not None
                lo = max(genesis, tf.ceil(repaired_at - depth + timedelta(seconds=10)))
                hi = tf.floor(stopped - AUDIT_SETTLE)
                diffs[key] = (lo, hi, await compare_with_truth(conn, truth, key, lo, hi))
    finally:
        await conn.close()
    return diffs


def report(
    diffs: dict[SeriesKey, tuple[datetime, datetime, StoreDiff]], tally: Tally, minutes: float
) -> bool:
    """Print the summary; True when the store equals the truth."""
    print(f"\nchaos phase: {minutes:g} min; kills (SIGKILL): {tally.kills}; "
          f"unasked exits: {tally.crashes}; database outages: {tally.db_outages} "
          f"({tally.db_down_s:.0f} s down in all); "
          f"venue fault toggles: {tally.fault_toggles}")  # fmt: skip
    print(f"\n{'series':<20} {'window (UTC)':<35} {'expected':>8} {'stored':>8} {'missing':>8}"
          f" {'dup':>5} {'wrong':>6} {'extra':>6}")  # fmt: skip
    totals = [0] * 6
    for key, (lo, hi, d) in diffs.items():
        row = [d.expected, d.stored, len(d.missing), d.duplicated, len(d.wrong), len(d.extra)]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        window = f"{lo:%m-%d %H:%M:%S} .. {hi:%m-%d %H:%M:%S}"
        print(f"{key.symbol + ':' + key.timeframe:<20} {window:<35} {row[0]:>8} {row[1]:>8}"
              f" {row[2]:>8} {row[3]:>5} {row[4]:>6} {row[5]:>6}")  # fmt: skip
        for label, stamps in (("missing", d.missing), ("wrong", d.wrong), ("extra", d.extra)):
            if stamps:
                print(f"    {label}: first {[ts.isoformat() for ts in stamps[:5]]}")
    print(f"{'total':<56} {totals[0]:>8} {totals[1]:>8} {totals[2]:>8} {totals[3]:>5}"
          f" {totals[4]:>6} {totals[5]:>6}")  # fmt: skip
    ok = not any(totals[2:])
    print("\nRESULT: " + ("store equals the truth" if ok else "MISMATCH"))
    return ok


async def chaos(minutes: float, seed: int, settle_s: float, work: Path) -> bool:
    rngs = [random.Random(f"{seed}:{name}") for name in ("kill", "db", "faults")]
    tally = Tally()
    venue = Venue(seed, datetime.now(UTC))
    await venue.start()
    config = write_config(work, config_body(venue.port), health_port=free_port())
    with own_cluster("chaos") as cluster:
        clock = Clock(minutes)
        clock.say(f"seed {seed}; sim on port {venue.port}; {cluster.description}; work dir {work}")
        daemon = Daemon(config, cluster.dsn, work, clock, tally)
        try:
            await daemon.start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(kill_loop(daemon, clock, rngs[0]))
                tg.create_task(watch_loop(daemon, clock))
                tg.create_task(db_loop(cluster, clock, tally, rngs[1]))
                tg.create_task(fault_loop(venue, clock, tally, rngs[2]))
            clock.say("chaos over: venue without faults, database and daemon up")
            if venue.faulty:
                await venue.switch(False)
            await daemon.restart_if_exited()
            await asyncio.sleep(settle_s)
            stopped = datetime.now(UTC)
            code = await daemon.stop()
            clock.say(f"daemon stopped (SIGTERM), exit {code}; one heal cycle (candled repair)")
            repaired_at = datetime.now(UTC)
            await repair_pass(config, cluster.dsn, work)
            clock.say("heal cycle done; comparing the store with the truth")
            diffs = await compare(cluster.dsn, venue.truth, repaired_at, stopped)
        finally:
            await daemon.close()
            await venue.stop()
    return report(diffs, tally, minutes) and code == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="length of the chaos phase")
    parser.add_argument("--seed", type=int, default=1, help="drives prices and the chaos")
    parser.add_argument("--settle", type=float, default=60, help="seconds of calm at the end")
    args = parser.parse_args()
    # Logs of every daemon incarnation and the repair pass stay for inspection.
    work = Path(tempfile.mkdtemp(prefix="candled-chaos-run-"))
    return 0 if asyncio.run(chaos(args.minutes, args.seed, args.settle, work)) else 1


if __name__ == "__main__":
    sys.exit(main())
