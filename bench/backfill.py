"""Backfill 20 symbols x 3 days of `1m` from the simulated exchange under a
budget of 1,200 weight per minute (the sim's limit and our throttle's), through
the writer into the store.

Two runs of the same 86,400 bars:

1. Binance's 1,000-bar pages (as configured in the daemon): 20 x (1 genesis +
   5 pages) = 120 requests, W = 240 weight. The bucket starts full with 1,200,
   so the budget never binds: the minimum is 0 s and the time is what the
   simulator, the client and the database need.
2. The same bars in 100-bar pages (the codec's page size overridden in this
   file, as for a venue with small pages): 20 x (1 + 44) = 900 requests,
   W = 1,800, so the budget binds and the run shows how close the throttle
   gets to the minimum.

The simulator runs in a child process (`python -m bench.backfill sim`), so
that generating the answers does not compete with the client's event loop;
it reports its counters on request (see `SimProcess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from candled import logs
from candled.backfill import Backfiller, BackfillJob, split_window
from candled.domain import SeriesKey, Timeframe
from candled.fetch import Fetcher
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.writer import CandleStore, CandleWriter
from candled.throttle import VenueThrottle
from candled.venues import VenueLimits
from candled.venues.binance import LIMITS, BinanceCodec

N_SYMBOLS, DAYS, TIMEFRAME = 20, 3, "1m"
BUDGET, PERIOD_S, BATCH = 1_200, 60.0, 5  # weight per minute: sim and throttle alike
WINDOW_S = 60.0  # the venue counts weight per clock minute
RUN_TIMEOUT_S = 240.0
RATIO_GOAL = 1.10
_PIPE_LIMIT = 1 << 24  # a scenario with thousands of symbols is one long line


# --- the simulator in a child process ---------------------------------------------


class SimProcess:
    """`SimExchange` in a child process on 127.0.0.1, for as long as the context lasts.

    Line protocol over the child's stdin/stdout: the parent writes the scenario
    as one JSON line and reads back `{"port": N}`; each `counters` line is
    answered with the sim's counters as JSON (plus the child's CPU seconds);
    closing stdin stops the child.
    """

    MODULE = "bench.backfill"  # whose `sim` command runs the child

    def __init__(self, scenario: dict[str, Any]) -> None:
        self._scenario = scenario
        self._proc: asyncio.subprocess.Process | None = None
        self.port = 0

    def sim_args(self) -> list[str]:
        """Extra arguments of the child's `sim` command."""
        return []

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.MODULE, "sim", *self.sim_args(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=_PIPE_LIMIT,
        )  # fmt: skip
        try:
            self.port = int((await self._ask(json.dumps(self._scenario)))["port"])
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self._stop()

    async def counters(self) -> dict[str, Any]:
        return await self._ask("counters")

    async def _ask(self, line: str) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin and self._proc.stdout
        self._proc.stdin.write(line.encode() + b"\n")
        await self._proc.stdin.drain()
        async with asyncio.timeout(30):
            answer = await self._proc.stdout.readline()
        if not answer:
            raise RuntimeError("the simulator process exited")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _serve_sim() -> None:
    """The child side of `SimProcess`."""
    from candled_sim.scenario import parse_scenario
    from candled_sim.server import SimExchange

    logs.configure("warning", "console")  # to stderr: stdout carries the protocol
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    scenario = parse_scenario(json.loads(await reader.readline()), datetime.now(UTC))
    sim = SimExchange(scenario)
    _, port = await sim.start("127.0.0.1", 0)
    print(json.dumps({"port": port}), flush=True)
    try:
        while line := await reader.readline():
            if line.strip() == b"counters":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs.
                fields = dataclasses.fields(sim.counters)
                counters = {f.name: getattr(sim.counters, f.name) for f in fields}
                counters["cpu_s"] = usage.ru_utime + usage.ru_stime
                print(json.dumps(counters), flush=True)
    finally:
        await sim.stop()


# --- the benchmark -------------------------------------------------------------------


class _PagedCodec(BinanceCodec):
    """Binance's codec with another page size (the request weight stays 2)."""

    def __init__(self, page_size: int) -> None:
        super().__init__("binance")
        self._limits: VenueLimits = dataclasses.replace(LIMITS, page_size=page_size)

    @property
    def limits(self) -> VenueLimits:
        return self._limits


def min_send_time(
    requests: int, weight: int, start: float, budget: int = BUDGET, period_s: float = PERIOD_S
) -> float:
    """Earliest time (s after `start`, epoch seconds) at which the last of
    `requests` requests can be sent, spending greedily (which is optimal) under
    both limits the budget imposes:

    * our token bucket: starts full with `budget`, refills `budget` per `period_s`;
    * the venue's count: at most `budget` per clock-aligned minute (WINDOW_S).

    With the bucket alone this is max(0, W - BUDGET) / BUDGET * 60 s (W the
    total weight); the fixed windows can add to it, depending on where in the
    minute the run starts (e.g. W = 1,800 from second 0 of a minute: 1,200
    now, the rest only when the next minute starts, 60 s instead of 30 s).
    """
    rate = budget / period_s
    window_budget = budget * WINDOW_S / period_s
    # Seconds since `start` (epoch-sized floats would swallow tiny refill waits).
    t, tokens, used = 0.0, float(budget), 0.0
    window_end = WINDOW_S - start % WINDOW_S
    for _ in range(requests):
        if used + weight > window_budget:  # this minute is spent: wait for the next one
            tokens = min(budget, tokens + (window_end - t) * rate)
            t, used = window_end, 0.0
            window_end += WINDOW_S
        if tokens < weight:  # wait for the bucket to refill (the window may roll meanwhile)
            t += (weight - tokens) / rate
            tokens = float(weight)
            while t >= window_end:
                used, window_end = 0.0, window_end + WINDOW_S
        tokens -= weight
        used += weight
    return t


def needed_requests(page: int, jobs: list[BackfillJob]) -> int:
    """Requests the backfill cannot do without: one genesis request per series
    (the store knows none yet), then ceil(bars / `page`) per job piece."""
    pieces = [p for job in jobs for p in split_window(job, page)]
    pages = sum(-(-p.series.tf.count_bars(p.start, p.end) // page) for p in pieces)
    return len({job.series for job in jobs}) + pages


@dataclasses.dataclass
class _RunResult:
    label: str
    needed: int
    weight: int
    secs: float
    min_bucket_s: float
    min_s: float
    sent: int
    sent_429: int
    sent_418: int
    rows: int
    expected_rows: int
    failed_jobs: int
    sim_cpu_s: float


async def _run_once(db: Database, label: str, page_size: int) -> _RunResult:
    codec = _PagedCodec(page_size)
    tf = Timeframe.parse(TIMEFRAME)
    symbols = [f"BF{i:02d}USDT" for i in range(N_SYMBOLS)]
    scenario = {"seed": 1, "rest": {"weight_per_minute": BUDGET},
                "symbols": [{"symbol": s} for s in symbols]}  # fmt: skip
    keys = [SeriesKey(codec.venue, s, TIMEFRAME) for s in symbols]
    async with SimProcess(scenario) as sim:
        writer = CandleWriter(CandleStore(db.pool))
        # Whole bars only: a window ending now would catch a bar closing mid-run.
        end = tf.floor(datetime.now(UTC))
        jobs = [BackfillJob(k, end - timedelta(days=DAYS), end, "lookback") for k in keys]
        throttle = VenueThrottle(BUDGET, PERIOD_S, BATCH)  # the bucket starts full now
        fetcher = Fetcher(sim.rest_url, codec, throttle)
        async with fetcher, asyncio.TaskGroup() as tg:
            backfiller = Backfiller(codec, fetcher, writer.put, db.pool)
            started = time.time()
            writing = tg.create_task(writer.run())
            working = tg.create_task(backfiller.run())
            for job in jobs:
                backfiller.submit(job)
            async with asyncio.timeout(RUN_TIMEOUT_S):
                await backfiller.join()
                await writer.drain()  # committed, not only fetched
            secs = time.time() - started
            writing.cancel()
            working.cancel()
        counters = await sim.counters()
    rows = await db.pool.fetchval("SELECT count(*) FROM candle_data")
    needed = needed_requests(codec.limits.page_size, jobs)
    weight = codec.limits.request_weight
    return _RunResult(
        label=label,
        needed=needed,
        weight=needed * weight,
        secs=secs,
        min_bucket_s=max(0, needed * weight - BUDGET) / BUDGET * PERIOD_S,
        min_s=min_send_time(needed, weight, started),
        sent=sum(counters["requests_by_status"].values()),
        sent_429=counters["sent_429"],
        sent_418=counters["sent_418"],
        rows=rows,
        expected_rows=sum(j.series.tf.count_bars(j.start, j.end) for j in jobs),
        failed_jobs=sum(1 for r in backfiller.results if not r.complete),
        sim_cpu_s=counters["cpu_s"],
    )


def _print(r: _RunResult) -> None:
    ratio = f"{r.secs / r.min_s:5.2f}" if r.min_s > 0 else "  n/a"
    print(
        f"  {r.label:<20} {r.needed:>5} {r.sent:>5} {r.weight:>6,} {r.secs:7.2f} "
        f"{r.min_bucket_s:7.2f} {r.min_s:7.2f} {ratio:>6} {r.sent_429:>4} {r.sent_418:>4} "
        f"{r.rows:>8,} {'ok' if r.rows == r.expected_rows and not r.failed_jobs else 'NO':>4}",
        flush=True,
    )
    if r.rows != r.expected_rows or r.failed_jobs:
        print(f"    rows {r.rows:,} != expected {r.expected_rows:,}, failed jobs {r.failed_jobs}")


async def run(dsn: str) -> None:
    """Needs an empty database (migrations are applied here)."""
    db = await Database.connect(dsn, max_size=8)
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn)
        await db.refresh_info()
        print(
            f"backfill benchmark: {N_SYMBOLS} symbols x {DAYS} days of {TIMEFRAME} from the "
            f"simulator (own process), budget {BUDGET:,} weight/min (sim limit = throttle "
            f"capacity per {PERIOD_S:g} s), batch {BATCH}, through the writer",
            flush=True,
        )
        print(
            "  min = earliest send of the last needed request, greedy under the bucket (starts\n"
            f"  full: {BUDGET:,}, refills {BUDGET:,}/min) and the venue's {BUDGET:,} per clock "
            "minute;\n  min(bucket) = max(0, W - 1200) / 1200 x 60 s is the bucket alone. "
            "ratio = time / min.",
            flush=True,
        )
        print(
            f"  {'run':<20} {'reqs':>5} {'sent':>5} {'W':>6} {'time s':>7} {'min(b)':>7} "
            f"{'min s':>7} {'ratio':>6} {'429':>4} {'418':>4} {'rows':>8} {'rows':>4}"
        )
        results = []
        for label, page in (("1000-bar pages", LIMITS.page_size), ("100-bar pages", 100)):
            async with db.pool.acquire() as conn:  # a fresh store: no rows, no genesis
                await conn.execute("TRUNCATE candle_data")
                await conn.execute("TRUNCATE series RESTART IDENTITY CASCADE")
            result = await _run_once(db, label, page)
            _print(result)
            results.append(result)
        for r in results:
            if r.min_s > 0:
                met = r.secs / r.min_s <= RATIO_GOAL and r.sent_429 == 0 and r.sent_418 == 0
                verdict = f"goal (ratio <= {RATIO_GOAL:.2f}, no 429) met: {'yes' if met else 'no'}"
            else:
                verdict = (
                    f"budget never binds (W = {r.weight} <= {BUDGET:,}, min 0 s): ratio n/a; "
                    f"{r.expected_rows / r.secs:,.0f} bars/s; the simulator spent "
                    f"{r.sim_cpu_s:.1f} s of CPU on its answers"
                )
            print(f"  {r.label}: {verdict}", flush=True)
    finally:
        await db.close()


if __name__ == "__main__":
    import uvloop

    if sys.argv[1:] != ["sim"]:
        sys.exit("usage: python -m bench.backfill sim  (the child side of SimProcess)")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve_sim())
