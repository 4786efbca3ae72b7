"""Several `candled run` instances sharing one database and one simulated
exchange, for the scale-out tests: configs, /health, the lease table."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from candled import clock
from candled.domain import SeriesKey, Timeframe
from candled.gaps import SETTLE
from candled_sim.scenario import parse_scenario
from candled_sim.server import SimExchange
from tests.daemon_proc import REPO, compare_with_truth, series_toml, venue_toml, write_config
from tests.pg import free_port
from tests.waiting import log_events, tail, until

SYMBOLS = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT", "EEEUSDT", "FFFUSDT"]
TIMEFRAMES = ["1s", "1m"]
KEYS = [SeriesKey("binance", s, tf) for s in SYMBOLS for tf in TIMEFRAMES]  # a dozen
NAMES = {str(k) for k in KEYS}
LOOKBACK = "10m"
# Stores are compared from this long before the start: inside every heal
# cycle's lookback (LOOKBACK) for the whole test.
WINDOW = timedelta(minutes=6)
BOUND_S = 240  # only stops a hang


def scenario() -> dict[str, Any]:
    return {"seed": 5, "symbols": [{"symbol": s, "listed": "-30d"} for s in SYMBOLS]}


@dataclass
class Instance:
    """One `candled run` process of the cluster, with its own state and health port."""

    name: str
    config: Path
    log: Path
    port: int
    proc: asyncio.subprocess.Process | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, dsn: str) -> None:
        n = len(self.logs)
        log = self.log.with_name(f"{self.log.stem}.{n}.log")
        self.logs.append(log)
        env = {**os.environ, "CANDLED_DATABASE_URL": dsn}
        with log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "candled", "run", "--config", str(self.config),
                cwd=REPO, env=env, stdout=out, stderr=out,
            )  # fmt: skip

    async def signal(self, sig: signal.Signals, within: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        async with asyncio.timeout(within):
            return await self.proc.wait()

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        try:
            async with session.get(f"http://127.0.0.1:{self.port}/health") as r:
                doc: dict[str, Any] = await r.json()
                return doc
        except aiohttp.ClientError:
            return None

    async def metric(self, session: aiohttp.ClientSession, name: str) -> float:
        """One unlabelled sample of /metrics."""
        async with session.get(f"http://127.0.0.1:{self.port}/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics of {self.name}")

    def heal_cycles_started_after(self, t: datetime) -> int:
        """ "heal cycle done" lines of the current process whose cycle began
        after `t` (wall clock, see `wall`)."""
        done = log_events(self.logs[-1], "heal cycle done")
        return sum(
            datetime.fromisoformat(e["timestamp"]) - timedelta(seconds=e["seconds"]) > t
            for e in done
        )

    def tail(self) -> str:
        return tail(self.logs[-1]) if self.logs else ""


def make_instances(
    tmp: Path, port: int, n: int, *, lease_ttl: str, heal_every: str = "5s", extra: str = ""
) -> list[Instance]:
    """`n` instances with the same series and cluster config, each with its
    own state directory and health port."""
    body = venue_toml("binance", port) + extra
    body += series_toml("binance", SYMBOLS, TIMEFRAMES, lookback=f'"{LOOKBACK}"')
    body += f'\n[healing]\ninterval = "{heal_every}"\nconfirm_empty_after = 1\n'
    body += f'\n[cluster]\nenabled = true\nlease_ttl = "{lease_ttl}"\n'
    out = []
    for i in range(n):
        home = tmp / f"i{i}"
        home.mkdir()
        port_i = free_port()
        out.append(Instance(f"i{i}", write_config(home, body, health_port=port_i),
                            home / "daemon.log", port_i))  # fmt: skip
    return out


async def lease_holders(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """Every configured series' live holders, from the lease table (one read)."""
    rows = await conn.fetch(
        "SELECT series, holder FROM series_leases WHERE expires_at > now() ORDER BY holder"
    )
    holders: dict[str, list[str]] = {name: [] for name in NAMES}
    for r in rows:
        holders.setdefault(r["series"], []).append(r["holder"])
    return holders


async def owned_by(
    instances: Sequence[Instance], session: aiohttp.ClientSession
) -> dict[str, set[str]]:
    """Each running instance's id -> the series its /health says it owns."""
    out = {}
    for inst in instances:
        if not inst.running:
            continue
        doc = await inst.health(session)
        if doc is not None and doc.get("cluster"):
            out[doc["cluster"]["instance"]] = set(doc["cluster"]["owned"])
    return out


async def assert_one_owner_each(
    conn: asyncpg.Connection, instances: Sequence[Instance], session: aiohttp.ClientSession
) -> dict[str, set[str]]:
    """The lease table gives every series exactly one live holder, and each
    running instance owns exactly the series the table gives it."""
    holders = await lease_holders(conn)
    assert all(len(h) == 1 for h in holders.values()), holders
    by_health = await owned_by(instances, session)
    by_table: dict[str, set[str]] = {}
    for series, (holder,) in holders.items():
        by_table.setdefault(holder, set()).add(series)
    assert by_health == by_table, (by_health, by_table)
    return by_table


async def settled(
    conn: asyncpg.Connection, instances: Sequence[Instance], session: aiohttp.ClientSession
) -> bool:
    """Every series has one live holder, every running instance has a share,
    and /health agrees with the table."""
    holders = await lease_holders(conn)
    if not all(len(h) == 1 for h in holders.values()):
        return False
    by_health = await owned_by(instances, session)
    running = sum(i.running for i in instances)
    if len(by_health) != running or not all(by_health.values()):
        return False
    return set().union(*by_health.values()) == NAMES and sum(map(len, by_health.values())) == 12


async def wait_settled(
    conn: asyncpg.Connection, instances: Sequence[Instance], session: aiohttp.ClientSession
) -> None:
    for inst in instances:
        if inst.running:
            assert inst.proc is not None and inst.proc.returncode is None, inst.tail()

    async def check() -> bool:
        for inst in instances:
            if inst.proc is not None and inst.proc.returncode not in (None, 0, -9):
                raise AssertionError(f"{inst.name} exited {inst.proc.returncode}: {inst.tail()}")
        return await settled(conn, instances, session)

    await until(check, BOUND_S, "the series to be shared out, one owner each")


async def wait_heal_cycle(instances: Sequence[Instance], after: datetime) -> None:
    """Every running instance ran a whole heal cycle that began after `after`."""
    await until(lambda: all(i.heal_cycles_started_after(after) for i in instances if i.running),
                BOUND_S, "a heal cycle on every instance")  # fmt: skip


async def assert_store_equals_truth(
    conn: asyncpg.Connection, truth: Any, lo: datetime, hi: datetime
) -> None:
    """Every series, bar for bar and value for value, over [lo, hi)."""
    for key in KEYS:
        tf = Timeframe.parse(key.timeframe)
        diff = await compare_with_truth(conn, truth, key, tf.next(lo), tf.floor(hi))
        assert diff.equal, f"{key}: {diff}"


def settled_before(t: datetime) -> datetime:
    """The newest instant a heal cycle begun at `t` has judged."""
    return t - SETTLE - timedelta(seconds=1)


def wall() -> datetime:
    """The wall clock, as log timestamps have it (`clock.now()` may run shifted in tests)."""
    return datetime.now(UTC)


@dataclass
class Cluster:
    """Three instances on one simulator, and what the tests read them with."""

    sim: SimExchange
    instances: list[Instance]
    session: aiohttp.ClientSession
    started: datetime  # before the first instance started (the simulator's clock)

    async def stop(self) -> None:
        """SIGTERM every running instance: each exits 0."""
        for inst in self.instances:
            if inst.running:
                assert await inst.signal(signal.SIGTERM) == 0, inst.tail()


@asynccontextmanager
async def three_instances(tmp: Path, dsn: str, ttl_s: int) -> AsyncIterator[Cluster]:
    """Start the simulator and three clustered instances on `dsn`; on the way
    out, kill whatever still runs."""
    sim = SimExchange(parse_scenario(scenario(), clock.now()))
    _, port = await sim.start("127.0.0.1", 0)
    instances = make_instances(tmp, port, 3, lease_ttl=f"{ttl_s}s")
    started = clock.now()
    try:
        async with aiohttp.ClientSession() as session:
            for inst in instances:
                await inst.start(dsn)
            yield Cluster(sim, instances, session, started)
    finally:
        for inst in instances:
            if inst.running:
                assert inst.proc is not None
                inst.proc.kill()
                await inst.proc.wait()
        await sim.stop()


async def healed_equals_truth(
    conn: asyncpg.Connection, cluster: Cluster, instances: Sequence[Instance], hi: datetime
) -> None:
    """Once bars up to `hi` have settled and every running instance has run a
    heal cycle judging them, the store equals the truth from the lookback to `hi`."""
    await until(lambda: settled_before(clock.now()) > hi, BOUND_S, "bars to settle")
    await wait_heal_cycle(instances, wall())
    await assert_store_equals_truth(conn, cluster.sim.truth, cluster.started - WINDOW, hi)
