"""Scale-out: how fast a cluster takes a dead instance's series over, and what
a shared budget sends. Three `candled run` processes share one database and
one simulated Binance (its own process, see `SimProcess`).

1. Take-over: N live `1m` series (lookback 10m, so the first backfill is
   short) shared by 3 instances; one is killed with SIGKILL. From the kill:

   * leases: every series has a live lease held by a survivor (the table);
   * health: the survivors' /health `cluster.owned` covers all N, each equal
     to what the table gives it, and their venue stream is connected;
   * subscribed: the simulator has all N kline streams subscribed on open
     connections (it is asked; the dead instance's connections are gone);
   * stored: every series taken over has its newest closed bar stored.

   The split, from the lease table (the database's clock): expiry = the dead
   instance's last leases' `expires_at` - the kill (waiting for the TTL);
   claim = the survivors' `acquired_at` of the last series - that expiry (the
   renewal tick, every TTL/3, and the claim); then to /health (the new view
   applied: subscribe, catch-up planning).

2. Shared budget: 3 instances with `shared_budget = true` backfill N series x
   D days of `1m` under one budget (the simulator's per-IP limit and the
   configured `rate_capacity` alike), then 1 instance the same load. Each
   instance's `candled_http_requests_total` (its /metrics) and weight
   against the simulator's counters; 429 and 418 must stay 0. The
   simulator's weight by clock minute shows how much of the budget the
   cluster used in each of the venue's windows.

python -m bench.takeover                          # both parts, defaults below
python -m bench.takeover --n 10,100 --ttl 6       # take-over only for these
python -m bench.takeover --skip-takeover --budget-n 100 --days 2 --budget 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import resource
import signal
import socket
import sys
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.backfill import _PIPE_LIMIT, SimProcess
from candled import logs
from candled.domain import Timeframe
from candled.store.cluster import PostgresCluster
from candled.store.migrations import migrate

REPO = Path(__file__).resolve().parents[1]
INSTANCES = 3
N_VALUES = (10, 100, 1_000)
TTLS_S = (30.0, 6.0)
LOOKBACK = "10m"
TF = Timeframe.parse("1m")
SETTLE_BOUND_S = 300.0  # only stops a hang
TAKEOVER_BOUND_S = 180.0
BUDGET_N, BUDGET_DAYS, BUDGET = 100, 2, 600  # weight per minute: sim limit = rate_capacity
BUDGET_BOUND_S = 600.0
WEIGHT = 2  # Binance klines request weight (candled.venues.binance.LIMITS)
LOG_DIR: Path | None = None  # --keep-logs


# --- the simulator, in a child process that can also tell its subscriptions --------


class TakeoverSim(SimProcess):
    """`SimProcess` running `python -m bench.takeover sim`: the same protocol,
    plus a `streams` line answered with the kline streams subscribed on open
    connections."""

    MODULE = "bench.takeover"

    async def streams(self) -> dict[str, int]:
        """{"streams": distinct streams subscribed, "subscriptions": with
        duplicates, "connections": open ones}."""
        return {k: int(v) for k, v in (await self._ask("streams")).items()}


async def _serve_sim() -> None:
    """The child side of `TakeoverSim`."""
    from candled_sim.binance import stream as binance_stream
    from candled_sim.scenario import parse_scenario
    from candled_sim.server import SimExchange

    logs.configure("warning", "console")  # to stderr: stdout carries the protocol
    sessions: weakref.WeakSet[Any] = weakref.WeakSet()
    cls: Any = binance_stream.StreamSession
    init = cls.__init__

    def tracked_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        sessions.add(self)

    cls.__init__ = tracked_init
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    scenario = parse_scenario(json.loads(await reader.readline()), datetime.now(UTC))
    sim = SimExchange(scenario)
    _, port = await sim.start("127.0.0.1", 0)
    print(json.dumps({"port": port}), flush=True)
    try:
        while line := await reader.readline():
            what = line.strip()
            if what == b"counters":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                fields = dataclasses.fields(sim.counters)
                counters = {f.name: getattr(sim.counters, f.name) for f in fields}
                counters["cpu_s"] = usage.ru_utime + usage.ru_stime
                print(json.dumps(counters), flush=True)
            elif what == b"streams":
                live = [s for s in list(sessions) if not s._ws.closed]
                names = [n for s in live for n in s._streams]
                answer = {"streams": len(set(names)), "subscriptions": len(names),
                          "connections": len(live)}  # fmt: skip
                print(json.dumps(answer), flush=True)
    finally:
        await sim.stop()


# --- daemon instances ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class Instance:
    """One `candled run` process with its own state directory and health port."""

    name: str
    home: Path
    port: int
    proc: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> Path:
        return self.home / "daemon.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, dsn: str, config: str) -> None:
        path = self.home / "config.toml"
        path.write_text(
            f'[daemon]\nhealth_listen = "127.0.0.1:{self.port}"\nlog_level = "info"\n'
            f'log_format = "json"\nstate_dir = "{self.home / "state"}"\n{config}'
        )
        env = {**os.environ, "CANDLED_DATABASE_URL": dsn}
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "candled", "run", "--config", str(path),
                cwd=REPO, env=env, stdout=out, stderr=out,
            )  # fmt: skip

    async def get(self, session: aiohttp.ClientSession, path: str) -> str | None:
        try:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as r:
                return await r.text()
        except aiohttp.ClientError:
            return None

    async def health(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        text = await self.get(session, "/health")
        if text is None:
            return None
        doc: dict[str, Any] = json.loads(text)
        return doc

    async def stop(self) -> None:
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def symbols(n: int) -> list[str]:
    return [f"TK{i:04d}USDT" for i in range(n)]


def config_body(
    port: int, n: int, *, ttl_s: float, lookback: str, capacity: int, shared: bool
) -> str:
    names = ", ".join(f'"{s}"' for s in symbols(n))
    return f"""
[[venues]]
name = "binance"
kind = "binance"
rest_url = "http://127.0.0.1:{port}"
ws_url = "ws://127.0.0.1:{port}"
rate_capacity = {capacity}
rate_period = "60s"
shared_budget = {"true" if shared else "false"}

[[series]]
venue = "binance"
symbols = [{names}]
timeframes = ["1m"]
lookback = "{lookback}"

[healing]
interval = "1h"

[cluster]
enabled = true
lease_ttl = "{ttl_s:g}s"
"""


def scenario(n: int, weight_per_minute: int) -> dict[str, Any]:
    return {
        "seed": 11,
        "rest": {"weight_per_minute": weight_per_minute},
        "symbols": [{"symbol": s, "listed": "-30d"} for s in symbols(n)],
    }


async def fresh_database(server_dsn: str, name: str) -> str:
    """An empty, migrated database `name` on the server of `server_dsn`."""
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = server_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def until(check: Callable[[], Awaitable[bool]], bound_s: float, what: str,
                every_s: float = 0.5) -> None:  # fmt: skip
    try:
        async with asyncio.timeout(bound_s):
            while not await check():
                await asyncio.sleep(every_s)
    except TimeoutError:
        raise RuntimeError(f"waited {bound_s:g} s for {what}") from None


async def live_holders(conn: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await conn.fetch(
        "SELECT series, holder FROM series_leases WHERE expires_at > now() ORDER BY series"
    )
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["series"], []).append(r["holder"])
    return out


async def newest_closed_stored(conn: asyncpg.Connection, names: Sequence[str]) -> int:
    """How many of `names` (venue:SYMBOL:1m) have the newest closed bar stored."""
    newest = TF.add(TF.floor(datetime.now(UTC)), -1)
    syms = [n.split(":")[1] for n in names]
    count: int = await conn.fetchval(
        """SELECT count(*) FROM series s
           WHERE s.venue = 'binance' AND s.timeframe = '1m' AND s.symbol = ANY($1::text[])
             AND EXISTS (SELECT 1 FROM candle_data c WHERE c.series_id = s.id AND c.ts = $2)""",
        syms,
        newest,
    )
    return count


def _check_alive(instances: Sequence[Instance], allow_killed: Instance | None = None) -> None:
    for inst in instances:
        if inst is allow_killed or inst.proc is None:
            continue
        if inst.proc.returncode is not None:
            raise RuntimeError(f"{inst.name} exited {inst.proc.returncode}: {inst.tail()}")


# --- 1. take-over ------------------------------------------------------------------------


@dataclasses.dataclass
class TakeoverResult:
    n: int
    ttl_s: float
    orphaned: int
    start_s: float  # the cluster settled after this long
    since_renewal_s: float  # the victim's last renewal, before the kill
    expiry_s: float  # the victim's leases expired, after the kill
    claim_s: float  # the last orphaned series claimed, after the kill
    leases_s: float  # (a) observed in the table
    health_s: float  # (b) observed on /health
    subscribed_s: float  # the simulator has all N streams
    stored_s: float  # every orphaned series has its newest closed bar
    requests_after: int  # REST requests the survivors sent from the kill to `stored`
    load: str


async def _takeover_once(server_dsn: str, n: int, ttl_s: float, tmp: Path) -> TakeoverResult:
    dsn = await fresh_database(server_dsn, f"takeover_{n}_{int(ttl_s)}")
    names = [f"binance:{s}:1m" for s in symbols(n)]
    # The budget is not what is measured here: the sim and each instance get plenty.
    async with TakeoverSim(scenario(n, 1_000_000)) as sim:
        body = config_body(sim.port, n, ttl_s=ttl_s, lookback=LOOKBACK, capacity=100_000,
                           shared=False)  # fmt: skip
        instances = []
        for i in range(INSTANCES):
            home = tmp / f"takeover-{n}-{int(ttl_s)}-i{i}"
            home.mkdir()
            instances.append(Instance(f"i{i}", home, free_port()))
        conn = await asyncpg.connect(dsn)
        try:
            async with aiohttp.ClientSession() as session:
                t_start = time.monotonic()
                for inst in instances:
                    await inst.start(dsn, body)

                sent = [-1]  # the simulator's REST answers at the previous look

                async def settled() -> bool:
                    """Shared out as the table says, streaming, and the first
                    backfill over: every genesis known, no request for a second."""
                    _check_alive(instances)
                    holders = await live_holders(conn)
                    if len(holders) != n or any(len(h) != 1 for h in holders.values()):
                        return False
                    by_table: dict[str, set[str]] = {}
                    for series, (holder,) in holders.items():
                        by_table.setdefault(holder, set()).add(series)
                    by_health = {}
                    for inst in instances:
                        doc = await inst.health(session)
                        if doc is None or not doc.get("cluster"):
                            return False
                        if not all(v["ws_connected"] for v in doc["venues"]):
                            return False
                        by_health[doc["cluster"]["instance"]] = set(doc["cluster"]["owned"])
                    if by_health != by_table or len(by_table) != INSTANCES:
                        return False
                    if (await sim.streams())["streams"] != n:
                        return False
                    if await newest_closed_stored(conn, names) != n:
                        return False
                    known = await conn.fetchval(
                        "SELECT count(*) FROM series WHERE genesis_ts IS NOT NULL"
                    )
                    answered = sum((await sim.counters())["requests_by_status"].values())
                    quiet, sent[0] = answered == sent[0], answered
                    return bool(known == n and quiet)

                await until(settled, SETTLE_BOUND_S, "the cluster to settle", every_s=1.0)
                start_s = time.monotonic() - t_start
                # A few renewals in, at a random point of the victim's renewal period.
                await asyncio.sleep(ttl_s / 3 + random.uniform(0, ttl_s / 3))

                victim, survivors = instances[1], [instances[0], instances[2]]
                doc = await victim.health(session)
                assert doc is not None
                victim_id = doc["cluster"]["instance"]
                before = await live_holders(conn)
                orphaned = {s for s, h in before.items() if h == [victim_id]}
                requests_before = sum([await _requests(i, session) for i in survivors])
                uptime = _load()
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                killed_db: datetime = await conn.fetchval("SELECT clock_timestamp()")
                await victim.proc.wait()
                row = await conn.fetchrow(
                    "SELECT max(expires_at) AS e, max(expires_at) - make_interval(secs => $2)"
                    " AS renewed FROM series_leases WHERE holder = $1",
                    victim_id, ttl_s,
                )  # fmt: skip
                expiry_db, renewed_db = row["e"], row["renewed"]

                marks: dict[str, float] = {}
                health_on = False
                while len(marks) < 4:
                    if time.monotonic() - killed > TAKEOVER_BOUND_S:
                        raise RuntimeError(f"take-over not done: {marks}")
                    _check_alive(instances, allow_killed=victim)
                    now = time.monotonic() - killed
                    if "leases" not in marks or not health_on:
                        holders = await live_holders(conn)
                        taken = [h for s, h in holders.items() if s in orphaned]
                        if any(h and h[0] != victim_id for h in taken):
                            health_on = True  # /health cannot own a series before its claim
                        if len(holders) == n and all(
                            len(h) == 1 and h[0] != victim_id for h in holders.values()
                        ):
                            marks["leases"] = now
                            health_on = True
                    if health_on and "health" not in marks:
                        owned: set[str] = set()
                        ok = True
                        for inst in survivors:
                            doc = await inst.health(session)
                            if doc is None or not all(v["ws_connected"] for v in doc["venues"]):
                                ok = False
                                break
                            owned |= set(doc["cluster"]["owned"])
                        if ok and owned >= set(names):
                            marks["health"] = time.monotonic() - killed
                    # Not before a claim: the sim may not have seen the dead
                    # connections close yet.
                    if health_on and "subscribed" not in marks:
                        st = await sim.streams()
                        if st["streams"] == n and st["subscriptions"] == n:
                            marks["subscribed"] = time.monotonic() - killed
                    if (
                        "stored" not in marks
                        and "health" in marks
                        and await newest_closed_stored(conn, sorted(orphaned)) == len(orphaned)
                    ):
                        marks["stored"] = time.monotonic() - killed
                    await asyncio.sleep(0.05)
                claim_db: datetime = await conn.fetchval(
                    "SELECT max(acquired_at) FROM series_leases WHERE series = ANY($1::text[])",
                    sorted(orphaned),
                )
                requests_after = sum([await _requests(i, session) for i in survivors])
                requests_after -= requests_before
        finally:
            for inst in instances:
                await inst.stop()
            await conn.close()
            _keep_logs(instances, f"takeover-{n}-{int(ttl_s)}")
    return TakeoverResult(
        n=n, ttl_s=ttl_s, orphaned=len(orphaned), start_s=start_s,
        since_renewal_s=(killed_db - renewed_db).total_seconds(),
        expiry_s=(expiry_db - killed_db).total_seconds(),
        claim_s=(claim_db - killed_db).total_seconds(),
        leases_s=marks["leases"], health_s=marks["health"], subscribed_s=marks["subscribed"],
        stored_s=marks["stored"], requests_after=requests_after, load=uptime,
    )  # fmt: skip


def _print_takeover_header() -> None:
    print(
        "  N, TTL: the run; orphaned: series the killed instance held; start: s until the\n"
        "  3 instances had settled (streaming, first backfill over); renewed: s since the\n"
        "  victim's last renewal at the kill. Seconds after the kill: expiry (its leases\n"
        "  end, db clock), claim (last orphaned series claimed by a survivor, db clock),\n"
        "  leases (a: the table shows all N on survivors), health (b: /health owned covers\n"
        "  N, stream connected), subs (the sim has all N streams, once each), stored (every\n"
        "  orphaned series has its newest closed bar). claim-exp: renewal tick + claim;\n"
        "  health-claim: applying the view (subscribe, catch-up planning) + the 50-100 ms\n"
        "  polling. reqs: REST requests the survivors sent from the kill to `stored`.",
        flush=True,
    )
    print(
        f"  {'N':>5} {'TTL':>4} {'orph':>5} {'start':>6} {'renewed':>7} | {'expiry':>6} "
        f"{'claim':>6} {'leases':>6} {'health':>6} {'subs':>6} {'stored':>6} | "
        f"{'claim-exp':>9} {'health-claim':>12} {'reqs':>5}",
        flush=True,
    )


def _print_takeover(r: TakeoverResult) -> None:
    print(
        f"  {r.n:>5} {r.ttl_s:>4g} {r.orphaned:>5} {r.start_s:6.1f} {r.since_renewal_s:7.2f} | "
        f"{r.expiry_s:6.2f} {r.claim_s:6.2f} {r.leases_s:6.2f} {r.health_s:6.2f} "
        f"{r.subscribed_s:6.2f} {r.stored_s:6.2f} | {r.claim_s - r.expiry_s:9.2f} "
        f"{r.health_s - r.claim_s:12.2f} {r.requests_after:>5}   [load {r.load}]",
        flush=True,
    )


# --- 2. shared budget --------------------------------------------------------------------


_REQ = re.compile(r"^candled_http_requests_total\{([^}]*)\}\s+([0-9.e+]+)$", re.M)


async def _requests(inst: Instance, session: aiohttp.ClientSession) -> int:
    """The instance's `candled_http_requests_total`, every status, from /metrics."""
    return sum((await _requests_by_status(inst, session)).values())


async def _requests_by_status(inst: Instance, session: aiohttp.ClientSession) -> dict[str, int]:
    text = await inst.get(session, "/metrics") or ""
    out: dict[str, int] = {}
    for labels, value in _REQ.findall(text):
        status = re.search(r'status="([^"]*)"', labels)
        key = status.group(1) if status else "?"
        out[key] = out.get(key, 0) + int(float(value))
    return out


@dataclasses.dataclass
class BudgetResult:
    instances: int
    secs: float
    per_instance: list[tuple[int, dict[str, int]]]  # (series owned, requests by status)
    sim_requests: int
    sim_weight: int
    sent_429: int
    sent_418: int
    rows: int
    expected_rows: int
    load: str
    # The simulator's weight (every client on 127.0.0.1) by clock minute: (HH:MM, weight).
    by_minute: list[tuple[str, int]]


async def _budget_once(
    server_dsn: str, count: int, n: int, days: int, budget: int, tmp: Path
) -> BudgetResult:
    dsn = await fresh_database(server_dsn, f"budget_{count}")
    async with TakeoverSim(scenario(n, budget)) as sim:
        body = config_body(sim.port, n, ttl_s=30, lookback=f"{days}d", capacity=budget,
                           shared=True)  # fmt: skip
        instances = []
        for i in range(count):
            home = tmp / f"budget-{count}-i{i}"
            home.mkdir()
            instances.append(Instance(f"i{i}", home, free_port()))
        conn = await asyncpg.connect(dsn)
        try:
            async with aiohttp.ClientSession() as session:
                started_at = datetime.now(UTC)
                # The window every instance backfills whatever its start: from a
                # minute after the earliest lookback start to the start.
                lo = TF.next(TF.floor(started_at - timedelta(days=days)))
                hi = TF.floor(started_at)
                expected = n * TF.count_bars(lo, hi)
                t0 = time.monotonic()
                for inst in instances:
                    await inst.start(dsn, body)
                rows = 0
                samples: list[tuple[datetime, int]] = []  # (wall clock, sim weight so far)

                async def done() -> bool:
                    nonlocal rows
                    _check_alive(instances)
                    samples.append((datetime.now(UTC), (await sim.counters())["weight_used"]))
                    rows = int(
                        await conn.fetchval(
                            "SELECT count(*) FROM candle_data WHERE ts >= $1 AND ts < $2", lo, hi
                        )
                    )
                    return rows >= expected

                await until(done, BUDGET_BOUND_S, "the backfill", every_s=0.5)
                secs = time.monotonic() - t0
                load = _load()
                per = []
                for inst in instances:
                    doc = await inst.health(session)
                    owned = len(doc["cluster"]["owned"]) if doc and doc.get("cluster") else -1
                    per.append((owned, await _requests_by_status(inst, session)))
                counters = await sim.counters()
                samples.append((datetime.now(UTC), counters["weight_used"]))
        finally:
            for inst in instances:
                await inst.stop()
            await conn.close()
            _keep_logs(instances, f"budget-{count}")
    return BudgetResult(
        instances=count, secs=secs, per_instance=per,
        sim_requests=sum(counters["requests_by_status"].values()),
        sim_weight=counters["weight_used"], sent_429=counters["sent_429"],
        sent_418=counters["sent_418"], rows=rows, expected_rows=expected, load=load,
        by_minute=_by_minute(samples),
    )  # fmt: skip


def _by_minute(samples: Sequence[tuple[datetime, int]]) -> list[tuple[str, int]]:
    """Weight spent in each clock minute, from cumulative samples (to the
    sampling's half second)."""
    out: dict[str, int] = {}
    last = 0
    for at, weight in samples:
        minute = at.strftime("%H:%M")
        out[minute] = out.get(minute, 0) + weight - last
        last = weight
    return list(out.items())


def _print_budget(r: BudgetResult, budget: int) -> None:
    total = sum(sum(s.values()) for _, s in r.per_instance)
    w = total * WEIGHT
    min_s = max(0, w - budget) / budget * 60
    print(
        f"  {r.instances} instance(s): {r.secs:6.1f} s to store {r.rows:,}/{r.expected_rows:,} "
        f"bars; requests {total:,} (weight {w:,}; bucket-only minimum {min_s:.0f} s); sim saw "
        f"{r.sim_requests:,} requests, weight {r.sim_weight:,}, 429: {r.sent_429}, 418: "
        f"{r.sent_418}   [load {r.load}]",
        flush=True,
    )
    minutes = ", ".join(f"{m} {w:,}" for m, w in r.by_minute)
    print(f"    sim weight by clock minute (budget {budget:,}): {minutes}", flush=True)
    for i, (owned, by_status) in enumerate(r.per_instance):
        reqs = sum(by_status.values())
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items()))
        print(f"    i{i}: owns {owned:>4} series, {reqs:>5} requests, weight {reqs * WEIGHT:>6,}"
              f"  ({statuses})", flush=True)  # fmt: skip


# --- driver ------------------------------------------------------------------------------


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def _keep_logs(instances: Sequence[Instance], label: str) -> None:
    if LOG_DIR is None:
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for inst in instances:
        if inst.log.exists():
            (LOG_DIR / f"{label}-{inst.name}.log").write_bytes(inst.log.read_bytes())


@dataclasses.dataclass
class Plan:
    ns: tuple[int, ...] = N_VALUES
    ttls: tuple[float, ...] = TTLS_S
    budget_n: int = BUDGET_N
    days: int = BUDGET_DAYS
    budget: int = BUDGET
    takeover: bool = True
    shared_budget: bool = True


PLAN = Plan()


async def run(dsn: str) -> None:
    """Needs a database server (`dsn` of any database on it): each run creates its own."""
    plan = PLAN
    with tempfile.TemporaryDirectory(prefix="candled-takeover-") as tmp_name:
        tmp = Path(tmp_name)
        if plan.takeover:
            print(
                f"take-over benchmark: {INSTANCES} instances, N live 1m series on the Binance "
                f"simulator (own process), lookback {LOOKBACK}; kill -9 of one "
                f"(load 1/5 min now {_load()}, {os.cpu_count()} CPUs)",
                flush=True,
            )
            _print_takeover_header()
            for ttl in plan.ttls:
                for n in plan.ns:
                    _print_takeover(await _takeover_once(dsn, n, ttl, tmp))
        if plan.shared_budget:
            bars = plan.budget_n * plan.days * 1440
            print(
                f"\nshared budget: {plan.budget_n} series x {plan.days} days of 1m "
                f"({bars:,} bars), budget {plan.budget:,} weight/min (sim limit per IP = "
                f"rate_capacity, shared_budget = true), klines weight {WEIGHT}",
                flush=True,
            )
            for count in (INSTANCES, 1):
                r = await _budget_once(dsn, count, plan.budget_n, plan.days, plan.budget, tmp)
                _print_budget(r, plan.budget)


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="candled-bench-") as tmp:
        os.chmod(tmp, 0o755)  # the server may run as `postgres` when we are root
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            print(f"database: {cluster.description}\n", flush=True)
            started = time.perf_counter()
            await run(cluster.dsn)
            print(f"  (takeover: {time.perf_counter() - started:.0f} s in all)", flush=True)
        finally:
            cluster.stop()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x.rstrip("s")) for x in text.split(","))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.takeover", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=_ints, default=N_VALUES, metavar="N,N,...",
                   help="take-over: series counts (default 10,100,1000)")  # fmt: skip
    p.add_argument("--ttl", type=_floats, default=TTLS_S, metavar="S,S,...",
                   help="take-over: lease TTLs in seconds (default 30,6)")  # fmt: skip
    p.add_argument("--budget-n", type=int, default=BUDGET_N, help="shared budget: series")
    p.add_argument("--days", type=int, default=BUDGET_DAYS, help="shared budget: days of 1m")
    p.add_argument("--budget", type=int, default=BUDGET,
                   help="shared budget: weight/min (sim limit and rate_capacity)")  # fmt: skip
    p.add_argument("--skip-takeover", action="store_true")
    p.add_argument("--skip-budget", action="store_true")
    p.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the daemons' logs here")
    return p.parse_args(argv)


if __name__ == "__main__":
    import uvloop

    if sys.argv[1:] == ["sim"]:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(_serve_sim())
        sys.exit(0)
    args = _parse(sys.argv[1:])
    PLAN = Plan(args.n, args.ttl, args.budget_n, args.days, args.budget,
                not args.skip_takeover, not args.skip_budget)  # fmt: skip
    LOG_DIR = args.keep_logs
    logs.configure("warning", "console")
    uvloop.run(main())
