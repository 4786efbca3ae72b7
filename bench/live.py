"""The live path: kline streams from the simulated exchange, through the
Collector (shards of <= 1,024 streams per connection) and the writer into the
store, in one of two modes (`MODES`):

* `1s`: 2,000 `1s` streams for 60 s (updates every second): latency from
  the close, goals p99 bar close -> commit < 150 ms and the simulator sending
  every closing frame within 20 ms of the close;
* `1m`: 10,000 `1m` streams for 150 s, at least two minute closes (updates
  every 2 s, as Binance sends them): what one instance costs, goals under half
  a core of client CPU and peak RSS < 300 MB.

The client's CPU and memory are its own: the simulator runs in children
(`SimFarm`: `SIM_PROCESSES` worker processes serving one truth, this process
handing each accepted connection to the next in turn, as a venue serves its
streams from many machines; or one `SimProcess`), the client in another
(`python -m bench.live client ...`, running the daemon's Collector, Intake,
CandleWriter and CandleStore with their defaults), and this one orchestrates.

Latency is measured per closed bar, with three clocks (wall clock, shared by
all processes on the machine):

* close: the bar's close, its open + the timeframe: when the sim may first send it;
* sent: when the sim handed the closing frame to its socket (its counters,
  `closing_lag_ms`: whole milliseconds, over every frame of the window);
* received: when the Collector hands the parsed bar to the sink (hooked);
* committed: when `CandleStore.execute` returns for the batch holding it,
  i.e. after its transaction committed (a `CandleStore` subclass).

close -> received is the simulator and the socket; received -> committed is
the client (Intake's checks, writer buffering, prepare, COPY + INSERT, commit).
The client freezes its heap after the imports (`gc.freeze()`), as the daemon
does once started, so that no collection walks the import heap again;
BENCH_LIVE_GC_FREEZE=0 leaves it unfrozen, to show the collector's share.
With BENCH_LIVE_PROFILE=FILE in the environment the client runs cProfile over
the window and writes its statistics to FILE (the CPU figures then include
the profiler's cost).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.backfill import SimProcess
from bench.simfarm import SimFarm
from candled.store.database import Database
from candled.store.migrations import migrate


@dataclass(frozen=True)
class Mode:
    """How many streams of which timeframe, for how long, and the goals."""

    streams: int
    timeframe: str
    seconds: int  # the window: bars closing in it are measured
    update_interval: str  # the sim's kline updates
    goal_p99_s: float | None = None  # bar close -> committed
    goal_sent_max_s: float | None = None  # bar close -> closing frame sent by the sim
    goal_cpu: float | None = None  # client CPU seconds per wall second
    goal_rss_mb: float | None = None  # client peak RSS


MODES = {
    "1s": Mode(2_000, "1s", 60, "1s", goal_p99_s=0.150, goal_sent_max_s=0.020),
    "1m": Mode(10_000, "1m", 150, "2s", goal_cpu=0.5, goal_rss_mb=300.0),
}
MODE_NAMES: list[str] = list(MODES)  # which run (`python -m bench live --live-mode`)
WRITER_MAX_AGE: float | None = None  # None: the daemon's default (CandleWriter's)
# Simulator processes (`SimFarm`, connections handed out in turn); 1: one `SimProcess`.
SIM_PROCESSES = 2
WARMUP_TIMEOUT_S, GRACE_S = 90.0, 15.0


def _symbols(n: int) -> list[str]:
    return [f"L{i:04d}USDT" for i in range(n)]


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p99": at(0.99), "max": ordered[-1]}


def _closes(w0: float, seconds: float, bar_s: float) -> int:
    """How many bar closes (multiples of `bar_s`) fall in [w0, w0 + seconds)."""
    return math.ceil((w0 + seconds) / bar_s) - math.ceil(w0 / bar_s)


def _lag_percentiles(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """p50, p99 and max of a count by whole milliseconds (the sim's
    `closing_lag_ms`, `closing_burst_cpu_ms`) between two readings, in seconds."""
    counts = sorted((int(ms), after[ms] - before.get(ms, 0)) for ms in after)
    total = sum(c for _, c in counts)
    if total == 0:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}

    def at(q: float) -> float:
        rank, seen = min(total - 1, int(q * total)), 0
        for ms, c in counts:
            seen += c
            if seen > rank:
                return ms / 1000
        return math.nan

    return {"p50": at(0.50), "p99": at(0.99), "max": max(ms for ms, c in counts if c) / 1000}


class _GcWatch:
    """Time spent in the garbage collector (a `gc.callbacks` entry), by generation."""

    def __init__(self) -> None:
        self.runs: dict[int, int] = {}
        self.seconds = self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.seconds += took
        self.longest = max(self.longest, took)
        generation = info["generation"]
        self.runs[generation] = self.runs.get(generation, 0) + 1


# --- the client (child process) ---------------------------------------------------------


@dataclass
class _Stats:
    """Receive and commit times of the bars closing inside the window."""

    bar_s: float
    window: tuple[float, float] = (math.inf, math.inf)
    received: dict[int, float] = field(default_factory=dict)  # id(candle) -> time
    seen: set[object] = field(default_factory=set)  # series with a closed bar (warm-up)
    close_to_commit: list[float] = field(default_factory=list)
    recv_to_commit: list[float] = field(default_factory=list)
    close_to_recv: list[float] = field(default_factory=list)
    committed_in_window: int = 0  # by commit time
    window_bars_committed: int = 0  # bars closing in the window, whenever committed


async def _client(dsn: str, ws_url: str, mode_name: str, max_age: float | None) -> None:
    from candled import logs
    from candled.collector import Collector
    from candled.domain import Candle, SeriesKey
    from candled.intake import Intake
    from candled.store.writer import CandleStore, CandleWriter, PreparedBatch, WriteResult
    from candled.venues import StreamEvent
    from candled.venues.binance import BinanceSession, BinanceStream

    try:  # what the daemon process carries besides the live path (pandas, calendars, ...)
        import candled.app  # noqa: F401

        imported = "candled.app"
    except Exception as e:  # others may be mid-edit; the live path does not need it
        imported = f"live path only (candled.app failed to import: {e!r})"
    rss_imports = _peak_rss_mb()
    frozen = os.environ.get("BENCH_LIVE_GC_FREEZE") != "0"
    if frozen:  # as the daemon once started (app.Daemon): the import heap out of every collection
        gc.collect()
        gc.freeze()
    logs.configure("warning", "console")  # stdout carries the protocol

    mode = MODES[mode_name]
    n, seconds = mode.streams, mode.seconds
    stats = _Stats(bar_s=float(SeriesKey("x", "X", mode.timeframe).tf.seconds))

    class CountingSession(BinanceSession):
        def receive(self, text: str) -> list[StreamEvent]:
            self.codec.frames += 1  # type: ignore[attr-defined]  # a CountingStream
            return super().receive(text)

    class CountingStream(BinanceStream):
        SESSION = CountingSession
        frames = 0

    class TimedStore(CandleStore):
        async def execute(self, batch: PreparedBatch) -> WriteResult:
            result = await super().execute(batch)
            now = time.time()  # the transaction has committed
            lo, hi = stats.window
            if lo <= now < hi:
                stats.committed_in_window += len(batch.candles)
            for c in batch.candles:
                received = stats.received.pop(id(c), None)
                close = c.ts.timestamp() + stats.bar_s
                if lo <= close < hi and received is not None:
                    stats.window_bars_committed += 1
                    stats.close_to_commit.append(now - close)
                    stats.recv_to_commit.append(now - received)
                    stats.close_to_recv.append(received - close)
            return result

    async def sink(candles: Sequence[Candle]) -> None:
        now = time.time()
        for c in candles:
            stats.received[id(c)] = now  # the same objects reach execute()
            if len(stats.seen) < n:
                stats.seen.add(c.series)
        await intake(candles)

    db = await Database.connect(dsn, max_size=4)
    try:
        codec = CountingStream("binance")
        keys = [SeriesKey(codec.venue, s, mode.timeframe) for s in _symbols(n)]
        store = TimedStore(db.pool)
        writer = CandleWriter(store) if max_age is None else CandleWriter(store, max_age=max_age)
        wanted = frozenset(keys)
        intake = Intake(writer.put, db.pool, lambda: wanted, "ws")  # as the daemon's
        collector = Collector(codec, ws_url, keys, sink)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(writer.run()), tg.create_task(collector.run())]
            started = time.time()
            interval = float(mode.update_interval.removesuffix("s"))
            async with asyncio.timeout(WARMUP_TIMEOUT_S):
                if stats.bar_s <= interval:
                    while len(stats.seen) < n:  # every stream has delivered a closed bar
                        await asyncio.sleep(0.1)
                else:  # every connection is up, and every stream has sent an update or two
                    while not collector.connected:
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(2 * interval + 1)
            warmup_s = time.time() - started
            # The window: bars closing in [w0, w0 + seconds), whole seconds.
            w0 = math.ceil(time.time()) + 1.0
            await asyncio.sleep(w0 - time.time())
            stats.window = (w0, w0 + seconds)
            cpu0, frames0 = _cpu_s(), codec.frames
            gc_watch = _GcWatch()
            gc.callbacks.append(gc_watch)
            _emit("start")
            profile = os.environ.get("BENCH_LIVE_PROFILE")  # a file: cProfile the window
            profiler = cProfile.Profile() if profile else None
            if profiler is not None:
                profiler.enable()
            await asyncio.sleep(w0 + seconds - time.time())
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(profile)
            cpu1, frames1 = _cpu_s(), codec.frames
            gc.callbacks.remove(gc_watch)
            _emit("end")
            # Bars that closed inside the window may still be on their way.
            expected = n * _closes(w0, seconds, stats.bar_s)
            deadline = time.time() + GRACE_S
            while stats.window_bars_committed < expected and time.time() < deadline:
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
        _emit(
            "result",
            mode=mode_name,
            streams=n,
            shards=len(collector.shards),
            seconds=seconds,
            warmup_s=warmup_s,
            imported=imported,
            max_age=writer.max_age,
            batch_size=writer.batch_size,
            frames=frames1 - frames0,
            committed_in_window=stats.committed_in_window,
            window_bars_expected=expected,
            window_bars_committed=stats.window_bars_committed,
            close_to_commit=_percentiles(stats.close_to_commit),
            recv_to_commit=_percentiles(stats.recv_to_commit),
            close_to_recv=_percentiles(stats.close_to_recv),
            cpu_s=cpu1 - cpu0,
            gc_s=gc_watch.seconds,
            gc_runs=gc_watch.runs,
            gc_max_s=gc_watch.longest,
            gc_frozen=frozen,
            rss_imports_mb=rss_imports,
            peak_rss_mb=_peak_rss_mb(),
            reconnects=sum(collector.reconnects.values()),
            malformed=collector.malformed,
        )
    finally:
        await db.close()


# --- the orchestrator (this process) ------------------------------------------------


async def run(dsn: str) -> None:
    """Needs an empty database (migrations are applied here); runs each of
    `MODE_NAMES` in turn, each on a store emptied first."""
    db = await Database.connect(dsn, max_size=1)
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn)
    finally:
        await db.close()
    for name in MODE_NAMES:
        await _run_mode(dsn, name)


async def _run_mode(dsn: str, name: str) -> None:
    mode = MODES[name]
    db = await Database.connect(dsn, max_size=1)
    try:
        async with db.pool.acquire() as conn:  # each mode on an empty store
            await conn.execute("TRUNCATE candle_data")
            await conn.execute("TRUNCATE series RESTART IDENTITY CASCADE")
    finally:
        await db.close()
    print(
        f"live benchmark ({name}): {mode.streams:,} {mode.timeframe} streams for "
        f"{mode.seconds} s, updates every {mode.update_interval}; simulator ({SIM_PROCESSES} "
        "process(es)) and client in their own processes (client: Collector -> Intake -> "
        "CandleWriter -> store)",
        flush=True,
    )
    scenario = {"seed": 2, "ws": {"update_interval": mode.update_interval},
                "symbols": [{"symbol": s} for s in _symbols(mode.streams)]}  # fmt: skip
    sim_cm = SimFarm(scenario, SIM_PROCESSES) if SIM_PROCESSES > 1 else SimProcess(scenario)
    async with sim_cm as sim:
        args = ["client", dsn, sim.ws_url, name, str(WRITER_MAX_AGE)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.live", *args,
            stdout=asyncio.subprocess.PIPE, limit=1 << 20,
        )  # fmt: skip
        assert proc.stdout is not None
        marks: dict[str, dict[str, Any]] = {}
        result: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(WARMUP_TIMEOUT_S + mode.seconds + GRACE_S + 30):
                while line := await proc.stdout.readline():
                    message = json.loads(line)
                    if message["event"] in ("start", "end"):
                        marks[message["event"]] = await sim.counters()
                    elif message["event"] == "result":
                        result = message
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    if result is None or set(marks) != {"start", "end"}:
        print(f"  the client failed (exit {proc.returncode}); see its errors above", flush=True)
        return
    _report(mode, result, marks["start"], marks["end"])


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _report(mode: Mode, r: dict[str, Any], sim0: dict[str, Any], sim1: dict[str, Any]) -> None:
    secs = r["seconds"]
    sent = sim1["frames_sent"] - sim0["frames_sent"]
    closing = sim1["closing_frames_sent"] - sim0["closing_frames_sent"]
    sim_cpu = sim1["cpu_s"] - sim0["cpu_s"]
    r["close_to_sent"] = _lag_percentiles(sim0["closing_lag_ms"], sim1["closing_lag_ms"])
    burst = _lag_percentiles(sim0["closing_burst_cpu_ms"], sim1["closing_burst_cpu_ms"])
    ms = {k: {q: v * 1000 for q, v in r[k].items()} for k in
          ("close_to_commit", "recv_to_commit", "close_to_recv", "close_to_sent")}  # fmt: skip
    max_age = r["max_age"]
    print(
        f"  {r['streams']:,} streams on {r['shards']} connections, warm-up {r['warmup_s']:.1f} s; "
        f"writer batch {r['batch_size']:,}, max_age {max_age:g} s; client imports {r['imported']}"
    )
    print(
        f"  simulator: {sent / secs:,.0f} frames/s sent ({closing:,} closing in {secs} s), "
        f"CPU {sim_cpu:.1f} s in {secs} s ({100 * sim_cpu / secs:.0f}% of a core)"
    )
    print(
        f"  simulator CPU per connection's closing frames of a tick (whole ms): p50 "
        f"{burst['p50'] * 1000:.0f}, p99 {burst['p99'] * 1000:.0f}, max {burst['max'] * 1000:.0f}"
        " (their lateness with a core to spare, plus the 1 ms tick lag)"
    )
    print(f"  client: {r['frames'] / secs:,.0f} frames/s received")
    print(f"  {'':<44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for key, label in (
        ("close_to_sent", "bar close -> sent by the sim (whole ms)"),
        ("close_to_recv", "bar close -> received (sim + socket + parse)"),
        ("recv_to_commit", "received -> committed (client)"),
        ("close_to_commit", "bar close -> committed"),
    ):
        q = ms[key]
        print(f"  {label:<44} {q['p50']:8.0f} {q['p99']:8.0f} {q['max']:8.0f}")
    rate = r["committed_in_window"] / secs
    complete = r["window_bars_committed"] >= r["window_bars_expected"]
    cpu = r["cpu_s"] / secs
    print(
        f"  committed: {rate:,.0f} candles/s; bars closing in the window committed: "
        f"{r['window_bars_committed']:,} of {r['window_bars_expected']:,}"
    )
    print(
        f"  client CPU {r['cpu_s']:.1f} s in {secs} s ({100 * cpu:.0f}% of a core); "
        f"peak RSS {r['peak_rss_mb']:.0f} MB (after imports {r['rss_imports_mb']:.0f} MB); "
        f"reconnects {r['reconnects']}, malformed frames {r['malformed']}"
    )
    runs = ", ".join(f"gen{g} x{n}" for g, n in sorted(r["gc_runs"].items()))
    frozen = "; import heap frozen (gc.freeze)" if r["gc_frozen"] else ""
    print(
        f"  client garbage collector: {r['gc_s']:.2f} s in {secs} s ({runs}), longest "
        f"{r['gc_max_s'] * 1000:.0f} ms{frozen}"
    )
    print(
        f"  note: received -> committed includes up to max_age = {max_age * 1000:.0f} ms in the "
        "writer's buffer before a batch smaller than batch_size is flushed"
    )
    goals = [("every bar closing in the window committed", complete)]
    if mode.goal_sent_max_s is not None:
        ok = ms["close_to_sent"]["max"] < mode.goal_sent_max_s * 1000
        goals.append((f"sim sends every closing frame < {mode.goal_sent_max_s * 1000:.0f} ms "
                      "after the close", ok))  # fmt: skip
    if mode.goal_p99_s is not None:
        ok = complete and ms["close_to_commit"]["p99"] < mode.goal_p99_s * 1000
        goals.append((f"p99 bar close -> commit < {mode.goal_p99_s * 1000:.0f} ms", ok))
    if mode.goal_cpu is not None:
        goals.append((f"client CPU < {mode.goal_cpu:g} core", cpu < mode.goal_cpu))
    if mode.goal_rss_mb is not None:
        ok = r["peak_rss_mb"] < mode.goal_rss_mb
        goals.append((f"client peak RSS < {mode.goal_rss_mb:.0f} MB", ok))
    for label, ok in goals:
        print(f"  goal: {label}: {_yes(ok)}")
    print(f"  goals ({r['mode']}) met: {_yes(all(ok for _, ok in goals))}", flush=True)


if __name__ == "__main__":
    import uvloop

    if len(sys.argv) != 6 or sys.argv[1] != "client" or sys.argv[4] not in MODES:
        sys.exit(f"usage: python -m bench.live client DSN WS_URL {'|'.join(MODES)} MAX_AGE|None")
    _, _, dsn_arg, ws_arg, mode_arg, age_arg = sys.argv
    age = None if age_arg == "None" else float(age_arg)
    uvloop.run(_client(dsn_arg, ws_arg, mode_arg, age))
