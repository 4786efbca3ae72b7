"""Backfill at depth: 100 symbols x 200 days of `1m` (28.8M candles) from the
simulated Binance under the venue's default budget (6,000 weight a minute,
BATCH 5: candled's Binance defaults), through candled's own Backfiller,
Fetcher, VenueThrottle, Intake and CandleWriter into a fresh TimescaleDB
database; then, in the same run, a 10-symbol x 30-day subset against ccxt's
binance `fetch_ohlcv` pagination on the same simulator, at the default budget
and at a tenth of it (simulator, candled's throttle and ccxt's rateLimit alike).

    python -m bench.depth                                  # the whole thing
    python -m bench.depth --symbols 10 --days 20 --no-ccxt # a smaller run
    sh bench/ccxt-env.sh                                   # ccxt's own venv, once

Figures per run: wall time (first request queued to the last candle
committed), requests the backfill needs (1 genesis request per series, then
ceil(bars / 1000) per job piece), requests and weight the simulator counted,
the budget's minimum time W / rate (weight over the budget's rate: the
brief's "minimum"), the stricter minimum with the bucket starting full
(`min_send_time`: what a perfect client could do, since a full bucket lets the
first minute's budget go at once), and time / minimum. Where the time goes:
CPU seconds of the simulator, candled's process, PostgreSQL and everything
else on the machine over the run (with the busiest other processes: the
machine is shared), candled's own CPU by stage (the codec's parse, the
Intake's validation, the writer's prepare, the rest; the garbage collector's
share), and how often the throttle's bucket sat full (the budget idle: the
time went elsewhere).

The simulator's klines answers are memoised (`_memoise`; `--no-sim-memo` to
compute every page): its pure-Python truth costs ~45 ms of CPU a page, which
for 28,900 pages is ~20 minutes of one CPU, twice the budget's minimum.

Each candled or ccxt run has a simulator process of its own, so the budget
and the counters are its alone. ccxt only fetches (no store); candled also
validates and commits every candle, and asks each series' genesis first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.backfill import SimProcess, min_send_time, needed_requests
from candled import logs
from candled.backfill import Backfiller, BackfillJob, JobReason
from candled.domain import Candle, SeriesKey, Timeframe
from candled.fetch import Fetcher
from candled.intake import Intake
from candled.store.database import Database
from candled.store.migrations import migrate
from candled.store.writer import CandleStore, CandleWriter, PreparedBatch
from candled.throttle import VenueThrottle
from candled.venues import HttpRequest, binance
from candled.venues.base import HistoryPage

ROOT = Path(__file__).resolve().parent.parent
CCXT_SCRIPT = Path(__file__).resolve().parent / "ccxt_ohlcv.py"
CCXT_PYTHON = ROOT / ".bench-venv" / "bin" / "python"
TIMEFRAME = "1m"
# candled's Binance defaults (daemon/config.py: batch 5; the codec's limits:
# 6,000 weight per 60 s, Binance's documented REQUEST_WEIGHT limit).
BUDGET = binance.LIMITS.rate_capacity
PERIOD_S = binance.LIMITS.rate_period_s
BATCH = 5
WINDOW_S = 60.0  # the venue counts weight per clock minute
RATIO_GOAL = 1.10
_TICK_S = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Knobs:
    symbols: int = 100
    days: int = 200
    subset_symbols: int = 10
    subset_days: int = 30
    budget: int = BUDGET
    batch: int = BATCH
    ccxt: bool = True
    ccxt_python: Path = CCXT_PYTHON
    full: bool = True
    memo: bool = True  # the simulator's klines answers memoised (`_memoise`)


KNOBS = Knobs()  # `python -m bench.depth` sets these; `python -m bench depth` takes the defaults


# --- the simulator, its answers memoised -------------------------------------------------


class DepthSim(SimProcess):
    """`SimProcess` running `python -m bench.depth sim [--memo]`: the same
    simulator, optionally with its klines answers memoised (`_memoise`)."""

    MODULE = "bench.depth"

    def __init__(self, scenario: dict[str, Any], memo: bool) -> None:
        super().__init__(scenario)
        self._memo = memo

    def sim_args(self) -> list[str]:
        return ["--memo"] if self._memo else []

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid


class _Row(list[Any]):
    """A klines row already rendered (json.dumps writes it as the list it is)."""


def _memoise() -> None:
    """Memoise the simulator's klines rows by (interval, startTime, endTime,
    limit): every symbol of a depth run asks for the same windows, and the
    simulator's pure-Python truth costs ~40-50 ms of CPU per 1,000-bar page
    (28,900 pages: ~20 minutes of one CPU, twice the budget's minimum). The
    first symbol's pages are computed as always; the others get the same rows
    (the same prices: the client cannot tell). Rate limiting, weight headers,
    429/418 and the request counters are the simulator's, untouched. Answers
    with a bar still open, or without both ends, are never memoised."""
    from candled_sim.binance import personality

    select, render = personality.select_klines, personality.kline_row  # type: ignore[attr-defined]
    memo: dict[tuple[Any, ...], list[Any]] = {}

    def select_klines(truth: Any, query: Any, now: datetime) -> list[Any]:
        if query.start is None or query.end is None:
            return select(truth, query, now)
        key = (query.series.timeframe, query.start, query.end, query.limit)
        rows = memo.get(key)
        if rows is None:
            candles = select(truth, query, now)
            tf = query.series.tf
            if candles and tf.close_time(candles[-1].ts) > now:
                return candles
            rows = memo[key] = [_Row(render(c)) for c in candles]
        return rows

    def kline_row(c: Any) -> Any:
        return c if isinstance(c, _Row) else render(c)

    setattr(personality, "select_klines", select_klines)  # noqa: B010
    setattr(personality, "kline_row", kline_row)  # noqa: B010


# --- where candled's CPU goes ------------------------------------------------------------


class Stages:
    """CPU seconds (this thread's) of candled's stages, per call, not per
    candle, so that the timing costs next to nothing: the codec's parse of a
    page (JSON decode, rows to candles, closed bars), the Intake's validation,
    the writer's prepare (rows for COPY), and the cyclic garbage collector."""

    def __init__(self) -> None:
        self.parse = self.validate = self.prepare = self.gc = 0.0
        self._gc_started = 0.0

    def gc_callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self.gc += time.thread_time() - self._gc_started


class _TimedCodec(binance.BinanceCodec):
    def __init__(self, stages: Stages) -> None:
        super().__init__("binance")
        self._stages = stages

    def parse_history_page(
        self, series: SeriesKey, request: HttpRequest, status: int, body: bytes, now: datetime
    ) -> HistoryPage:
        started = time.thread_time()
        try:
            return super().parse_history_page(series, request, status, body, now)
        finally:
            self._stages.parse += time.thread_time() - started


class _TimedIntake(Intake):
    """The validation is the synchronous part of `Intake.__call__` before it
    hands the good candles to the writer (`put`, timed from its entry)."""

    def __init__(self, writer: CandleWriter, pool: Any, keys: list[SeriesKey], stages: Stages):
        configured = frozenset(keys)  # as the daemon's: a set, looked up per candle
        super().__init__(self._put_timed, pool, lambda: configured, "rest")
        self._writer, self._stages, self._started = writer, stages, 0.0

    async def _put_timed(self, candles: Sequence[Candle]) -> None:
        self._stages.validate += time.thread_time() - self._started
        await self._writer.put(candles)

    async def __call__(self, candles: Sequence[Candle]) -> None:
        self._started = time.thread_time()
        await super().__call__(candles)


class _TimedStore(CandleStore):
    def __init__(self, pool: Any, stages: Stages) -> None:
        super().__init__(pool)
        self._stages = stages

    async def prepare(self, candles: Sequence[Candle]) -> PreparedBatch:
        # It awaits (and other tasks run) only for a series it has no id for
        # yet: such a batch, one per series, is not timed.
        timed = not {c.series for c in candles} - self._ids.keys()
        started = time.thread_time()
        try:
            return await super().prepare(candles)
        finally:
            if timed:
                self._stages.prepare += time.thread_time() - started


# --- CPU accounting: who used the two CPUs while a run went on ------------------------


def _proc_cpu() -> dict[int, tuple[float, str]]:
    """CPU seconds (user + system) of every process now, with its command line."""
    out: dict[int, tuple[float, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, ticks = int(fields[1]), int(fields[11]) + int(fields[12])
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[int(entry.name)] = (ticks / _TICK_S, f"{ppid}|{cmd or comm}")
    return out


def _machine_busy_s() -> float:
    """CPU seconds the machine spent busy (all CPUs, everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK_S


class CpuWatch:
    """CPU over one run: ours (this process), the simulator's, PostgreSQL's
    (the postmaster and its children), and the rest, by process."""

    def __init__(self, postmaster: int | None) -> None:
        self._postmaster = postmaster
        self._before = _proc_cpu()
        self._busy = _machine_busy_s()
        self._self = _self_cpu()
        self._started = time.monotonic()

    def _pg(self, procs: dict[int, tuple[float, str]]) -> set[int]:
        if self._postmaster is None:
            return set()
        return {
            pid for pid, (_, info) in procs.items()
            if pid == self._postmaster or info.split("|", 1)[0] == str(self._postmaster)
        }  # fmt: skip

    def stop(self, sim_pid: int | None, child_pid: int | None = None) -> dict[str, Any]:
        """Call while the simulator (and a child run, if any) still runs."""
        after = _proc_cpu()
        wall = time.monotonic() - self._started
        busy = _machine_busy_s() - self._busy
        client = _self_cpu() - self._self
        deltas = {
            pid: (secs - self._before.get(pid, (0.0, ""))[0], info)
            for pid, (secs, info) in after.items()
        }
        pg_pids = self._pg(after)
        pg = sum(deltas[p][0] for p in pg_pids)
        sim = deltas.get(sim_pid, (0.0, ""))[0] if sim_pid is not None else 0.0
        ours = pg_pids | {os.getpid(), sim_pid, child_pid}
        others = sorted(
            ((d, info.split("|", 1)[1]) for pid, (d, info) in deltas.items()
             if pid not in ours and d >= 0.5),
            reverse=True,
        )  # fmt: skip
        return {
            "client_cpu_s": client, "pg_cpu_s": pg, "sim_cpu_s": sim, "wall_s": wall,
            "machine_busy_s": busy, "others_cpu_s": max(0.0, busy - client - pg - sim),
            "others": [(round(d, 1), cmd[:90]) for d, cmd in others[:6]],
        }  # fmt: skip


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _postmaster(db: Database) -> int | None:
    """The PostgreSQL server's pid, when it runs on this machine and we may read its dir."""
    try:
        data_dir = await db.pool.fetchval("SHOW data_directory")
        return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    except Exception:  # not allowed to SHOW it: no PostgreSQL figure
        return None


# --- one candled run ------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    who: str  # "candled" | "ccxt"
    label: str
    symbols: int
    days: int
    budget: int
    secs: float
    sent: int  # requests the simulator answered
    weight: int  # weight the simulator charged
    needed: int  # requests the job needs at the least (candled: with genesis)
    min_rate_s: float  # W / rate: the budget's minimum
    min_full_s: float  # greedy, the bucket starting full and the venue's minutes
    sent_429: int
    sent_418: int
    candles: int
    expected: int
    errors: str
    cpu: dict[str, Any]
    bucket_full: float = 0.0  # share of 1-s samples with the throttle's bucket full
    mean_in_batch: float = 0.0

    @property
    def ratio(self) -> float:
        return self.secs / self.min_rate_s if self.min_rate_s > 0 else math.nan

    @property
    def ratio_full(self) -> float:
        return self.secs / self.min_full_s if self.min_full_s > 0 else math.nan


def _symbols(n: int) -> list[str]:
    return [f"D{i:03d}USDT" for i in range(n)]


def _window(days: int) -> tuple[datetime, datetime]:
    # Whole bars only: a window ending now would catch a bar closing mid-run.
    end = Timeframe.parse(TIMEFRAME).floor(datetime.now(UTC))
    return end - timedelta(days=days), end


async def _candled(
    db: Database, label: str, n_symbols: int, days: int, budget: int, batch: int,
    postmaster: int | None, memo: bool,
) -> RunResult:  # fmt: skip
    async with db.pool.acquire() as conn:  # a fresh store: no rows, no genesis
        await conn.execute("TRUNCATE candle_data")
        await conn.execute("TRUNCATE series RESTART IDENTITY CASCADE")
    stages = Stages()
    codec = _TimedCodec(stages)
    symbols = _symbols(n_symbols)
    keys = [SeriesKey(codec.venue, s, TIMEFRAME) for s in symbols]
    scenario = {"seed": 1, "rest": {"weight_per_minute": budget},
                "symbols": [{"symbol": s} for s in symbols]}  # fmt: skip
    start, end = _window(days)
    jobs = [BackfillJob(k, start, end, JobReason.LOOKBACK) for k in keys]
    page, weight = codec.limits.page_size, codec.limits.request_weight
    needed = needed_requests(page, jobs)
    async with DepthSim(scenario, memo) as sim:
        writer = CandleWriter(_TimedStore(db.pool, stages))  # the daemon's settings
        intake = _TimedIntake(writer, db.pool, keys, stages)
        throttle = VenueThrottle(budget, PERIOD_S, batch)  # the bucket starts full now
        fetcher = Fetcher(sim.rest_url, codec, throttle)
        samples: list[tuple[float, int]] = []

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0)
                samples.append((throttle.tokens, throttle.in_batch))

        watch = CpuWatch(postmaster)
        gc.callbacks.append(stages.gc_callback)
        async with fetcher, asyncio.TaskGroup() as tg:
            backfiller = Backfiller(codec, fetcher, intake, db.pool)
            started = time.time()
            writing = tg.create_task(writer.run())
            working = tg.create_task(backfiller.run())
            sampling = tg.create_task(sample())
            for job in jobs:
                backfiller.submit(job)
            async with asyncio.timeout(max(600.0, 8 * needed * weight / (budget / PERIOD_S))):
                await backfiller.join()
                await writer.drain()  # committed, not only fetched
            secs = time.time() - started
            for task in (writing, working, sampling):
                task.cancel()
        gc.callbacks.remove(stages.gc_callback)
        counters = await sim.counters()
        cpu = watch.stop(sim.pid)
        cpu["stages"] = {"parse": stages.parse, "validate": stages.validate,
                         "prepare": stages.prepare, "gc": stages.gc}  # fmt: skip
    rows = await db.pool.fetchval("SELECT count(*) FROM candle_data")
    failed = [r for r in backfiller.results if not r.complete]
    w = needed * weight
    return RunResult(
        who="candled", label=label, symbols=n_symbols, days=days, budget=budget, secs=secs,
        sent=sum(counters["requests_by_status"].values()), weight=counters["weight_used"],
        needed=needed, min_rate_s=w / (budget / PERIOD_S),
        min_full_s=min_send_time(needed, weight, started, budget, PERIOD_S),
        sent_429=counters["sent_429"], sent_418=counters["sent_418"], candles=rows,
        expected=sum(j.series.tf.count_bars(j.start, j.end) for j in jobs),
        errors=f"{len(failed)} failed jobs" if failed else "", cpu=cpu,
        bucket_full=sum(1 for t, _ in samples if t >= budget - 1e-6) / max(1, len(samples)),
        mean_in_batch=sum(b for _, b in samples) / max(1, len(samples)),
    )  # fmt: skip


# --- one ccxt run -----------------------------------------------------------------------


async def _ccxt(
    label: str, n_symbols: int, days: int, budget: int, python: Path, postmaster: int | None,
    memo: bool,
) -> RunResult:  # fmt: skip
    symbols = _symbols(n_symbols)
    scenario = {"seed": 1, "rest": {"weight_per_minute": budget},
                "symbols": [{"symbol": s} for s in symbols]}  # fmt: skip
    start, end = _window(days)
    since_ms, until_ms = (int(t.timestamp() * 1000) for t in (start, end))
    rate_limit_ms = 5_000.0 * PERIOD_S / budget  # klines cost 0.4 = 0.2 x weight 2
    async with DepthSim(scenario, memo) as sim:
        watch = CpuWatch(postmaster)
        args = {"rest_url": sim.rest_url, "symbols": symbols, "since_ms": since_ms,
                "until_ms": until_ms, "rate_limit_ms": rate_limit_ms}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            str(python), str(CCXT_SCRIPT), json.dumps(args),
            stdout=asyncio.subprocess.PIPE, limit=1 << 24,
        )  # fmt: skip
        out, _ = await proc.communicate()
        counters = await sim.counters()
        cpu = watch.stop(sim.pid, proc.pid)
    if proc.returncode != 0:
        raise RuntimeError(f"the ccxt run exited {proc.returncode}")
    got = json.loads(out)
    cpu["client_cpu_s"] = got["cpu_s"]  # the ccxt process's own, not this one's
    cpu["others_cpu_s"] = max(0.0, cpu["others_cpu_s"] - got["cpu_s"])
    n_pages = got["pagination_calls"]
    weight = binance.LIMITS.request_weight
    needed = n_symbols * n_pages
    errors = ", ".join(f"{k} x{v}" for k, v in got["errors"].items())
    return RunResult(
        who=f"ccxt {got['ccxt']}", label=label, symbols=n_symbols, days=days, budget=budget,
        secs=got["secs"], sent=sum(counters["requests_by_status"].values()),
        weight=counters["weight_used"], needed=needed,
        min_rate_s=needed * weight / (budget / PERIOD_S),
        min_full_s=min_send_time(needed, weight, time.time() - got["secs"], budget, PERIOD_S),
        sent_429=counters["sent_429"], sent_418=counters["sent_418"],
        candles=sum(got["candles"].values()),
        expected=n_symbols * Timeframe.parse(TIMEFRAME).count_bars(start, end),
        errors=errors, cpu=cpu,
    )  # fmt: skip


# --- output ---------------------------------------------------------------------------------


_HEAD = (
    f"  {'who':<12} {'run':<22} {'reqs':>6} {'sent':>6} {'weight':>7} {'time s':>8} "
    f"{'W/rate':>7} {'ratio':>6} {'min(f)':>7} {'ratio(f)':>8} {'429':>4} {'418':>4} "
    f"{'candles':>11} {'ok':>3}"
)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def _print(r: RunResult) -> None:
    ok = r.candles == r.expected and not r.errors
    print(
        f"  {r.who:<12} {r.label:<22} {r.needed:>6,} {r.sent:>6,} {r.weight:>7,} {r.secs:8.1f} "
        f"{r.min_rate_s:7.1f} {_fmt(r.ratio):>6} {r.min_full_s:7.1f} {_fmt(r.ratio_full):>8} "
        f"{r.sent_429:>4} {r.sent_418:>4} {r.candles:>11,} {'yes' if ok else 'NO':>3}",
        flush=True,
    )
    c = r.cpu
    line = (
        f"      CPU s: client {c['client_cpu_s']:.1f}, simulator {c['sim_cpu_s']:.1f}, "
        f"postgres {c['pg_cpu_s']:.1f}, everything else {c['others_cpu_s']:.1f} "
        f"(machine busy {c['machine_busy_s']:.1f} of {c['wall_s'] * (os.cpu_count() or 1):.0f} "
        f"CPU-s); {r.candles / r.secs:,.0f} candles/s"
    )
    if r.who == "candled":
        line += (
            f"; throttle bucket full in {r.bucket_full:.0%} of 1-s samples, "
            f"{r.mean_in_batch:.1f} of BATCH slots busy on average"
        )
    print(line, flush=True)
    if "stages" in c:
        st, per = c["stages"], 1e6 / max(1, r.candles)
        rest = c["client_cpu_s"] - st["parse"] - st["validate"] - st["prepare"]
        print(
            "      candled's CPU s (us a candle): "
            + ", ".join(
                f"{k} {st[k]:.1f} ({st[k] * per:.1f})" for k in ("parse", "validate", "prepare")
            )
            + f", the rest (HTTP, event loop, backfill, throttle, COPY) {rest:.1f} "
            f"({rest * per:.1f}); all {c['client_cpu_s']:.1f} ({c['client_cpu_s'] * per:.1f}); "
            f"the garbage collector, inside those, {st['gc']:.1f} ({st['gc'] * per:.1f})",
            flush=True,
        )
    if c["others"]:
        print("      others by CPU s: " + "; ".join(f"{d} {cmd}" for d, cmd in c["others"]))
    if not ok:
        print(f"      candles {r.candles:,} of {r.expected:,} expected; {r.errors}", flush=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


async def run(dsn: str) -> None:
    """Needs an empty database (migrations are applied here)."""
    k = KNOBS
    db = await Database.connect(dsn, max_size=8)
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn)
        await db.refresh_info()
        postmaster = await _postmaster(db)
        print(
            f"depth benchmark: Binance simulator (own process per run), budget {k.budget:,} "
            f"weight per {PERIOD_S:g} s (sim limit = throttle capacity), batch {k.batch}, "
            f"{TIMEFRAME} bars, through Backfiller -> Intake -> CandleWriter into "
            f"{db.info.describe}; the simulator's klines answers memoised: {k.memo}; "
            f"{os.cpu_count()} CPUs, {_load()} at the start",
            flush=True,
        )
        print(
            "  reqs = requests needed (candled: 1 genesis per series + ceil(bars/1000) per "
            "job piece; ccxt: its pagination calls);\n  sent, weight = what the simulator "
            "counted; W/rate = reqs x 2 / budget rate (the budget's minimum);\n  min(f) = "
            "the same with the bucket starting full and the venue's clock minutes (greedy);\n"
            "  ratio = time / W/rate, ratio(f) = time / min(f)",
            flush=True,
        )
        print(_HEAD, flush=True)
        results: list[RunResult] = []
        python = k.ccxt_python
        ccxt = k.ccxt and python.exists()
        if k.ccxt and not ccxt:
            print(f"  (no ccxt: {python} is missing; make it with `sh bench/ccxt-env.sh`)")
        runs = []
        for budget, tag in ((k.budget, "default"), (k.budget // 10, "tenth")):
            label = f"{k.subset_symbols}x{k.subset_days}d {tag} {budget}"
            runs.append(("candled", label, k.subset_symbols, k.subset_days, budget))
            if ccxt:
                runs.append(("ccxt", label, k.subset_symbols, k.subset_days, budget))
        if k.full:
            runs.append(("candled", f"{k.symbols}x{k.days}d default {k.budget}", k.symbols,
                         k.days, k.budget))  # fmt: skip
        for who, label, n, days, budget in runs:
            if who == "candled":
                r = await _candled(db, label, n, days, budget, k.batch, postmaster, k.memo)
            else:
                r = await _ccxt(label, n, days, budget, python, postmaster, k.memo)
            _print(r)
            results.append(r)
        print(f"  ({_load()} at the end)")
        for r in results:
            if r.who == "candled" and r.symbols == k.symbols and r.days == k.days:
                met = r.ratio <= RATIO_GOAL and not r.sent_429 and not r.sent_418
                print(
                    f"  {r.label}: ratio {_fmt(r.ratio)} (time / W/rate), goal <= "
                    f"{RATIO_GOAL:.2f} with no 429: {'met' if met else 'NOT met'}",
                    flush=True,
                )
        by_label: dict[str, dict[str, RunResult]] = {}
        for r in results:
            by_label.setdefault(r.label, {})[r.who.split()[0]] = r
        for label, pair in by_label.items():
            if "ccxt" in pair and "candled" in pair:
                a, b = pair["candled"], pair["ccxt"]
                print(
                    f"  {label}: candled {a.secs:.1f} s / {a.sent} requests, ccxt {b.secs:.1f} s "
                    f"/ {b.sent} requests ({b.secs / a.secs:.2f}x candled's time); ccxt got "
                    f"{b.sent_429} 429s and {b.sent_418} 418s, candled {a.sent_429} and "
                    f"{a.sent_418}",
                    flush=True,
                )
    finally:
        await db.close()


# --- standalone: a throwaway cluster of its own -------------------------------------------


@contextlib.contextmanager
def _cluster() -> Iterator[Any]:
    from candled.store.cluster import PostgresCluster

    tmp = tempfile.mkdtemp(prefix="candled-depth-")
    try:
        os.chmod(tmp, 0o755)  # the server may run as `postgres` when we are root
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _main() -> None:
    from bench.__main__ import fresh_database

    with _cluster() as cluster:
        if not cluster.has_timescaledb:
            print("warning: TimescaleDB is not installed; benchmarking plain PostgreSQL")
        started = time.perf_counter()
        await run(await fresh_database(cluster.dsn, "depth"))
        print(f"  (depth: {time.perf_counter() - started:.0f} s in all)", flush=True)


def _parse(argv: list[str]) -> Knobs:
    p = argparse.ArgumentParser(prog="python -m bench.depth", description=__doc__.split("\n")[0])
    d = Knobs()
    p.add_argument("--symbols", type=int, default=d.symbols, help="full run: symbols")
    p.add_argument("--days", type=int, default=d.days, help="full run: days of 1m bars")
    p.add_argument("--subset-symbols", type=int, default=d.subset_symbols)
    p.add_argument("--subset-days", type=int, default=d.subset_days)
    p.add_argument("--budget", type=int, default=d.budget, help="weight per 60 s")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--no-ccxt", action="store_true", help="skip the ccxt runs")
    p.add_argument("--no-full", action="store_true", help="only the subset runs")
    p.add_argument("--ccxt-python", type=Path, default=d.ccxt_python)
    p.add_argument(
        "--no-sim-memo", action="store_true",
        help="the simulator computes every page (no memo: ~45 ms of its CPU a page)",
    )  # fmt: skip
    a = p.parse_args(argv)
    return Knobs(
        symbols=a.symbols, days=a.days, subset_symbols=a.subset_symbols,
        subset_days=a.subset_days, budget=a.budget, batch=a.batch, ccxt=not a.no_ccxt,
        ccxt_python=a.ccxt_python, full=not a.no_full, memo=not a.no_sim_memo,
    )  # fmt: skip


if __name__ == "__main__":
    import uvloop

    if sys.argv[1:2] == ["sim"]:  # the child side of DepthSim
        from bench.backfill import _serve_sim

        if "--memo" in sys.argv[2:]:
            _memoise()
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(_serve_sim())
        sys.exit(0)
    KNOBS = _parse(sys.argv[1:])
    logs.configure("warning", "console")  # library logs to stderr; tables on stdout
    uvloop.run(_main())
    sys.exit(0)
