"""Waits on the condition a test stands for: a log event, a simulator counter,
rows in the store, `series_status`. A wait's bound only stops a hang; it is no
assertion of speed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from candled import clock
from candled.domain import SeriesKey
from candled_sim.server import SimExchange


def log_events(log: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `log` whose event starts with `event`, in order."""
    if not log.exists():
        return []
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and str(doc.get("event", "")).startswith(event):
            found.append(doc)
    return found


async def until(
    check: Callable[[], bool | Awaitable[bool]], within: float, what: str, every: float = 0.2
) -> None:
    """Poll `check` every `every` seconds until it is true; past `within`
    seconds (a hang, not slowness) fail naming `what`."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await asyncio.sleep(every)
    except TimeoutError:
        raise AssertionError(f"still waiting after {within:g} s for {what}") from None


async def logged(
    log: Path,
    event: str,
    within: float = 300,
    count: int = 1,
    proc: asyncio.subprocess.Process | None = None,
) -> dict[str, Any]:
    """Wait until `log` holds `count` lines of `event`; the last of them.
    A daemon `proc` that exits meanwhile fails at once."""

    def seen() -> bool:
        if proc is not None and proc.returncode is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}): {tail(log)}")
        return len(log_events(log, event)) >= count

    await until(seen, within, f"{event!r} in {log.name}")
    return log_events(log, event)[count - 1]


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else ""


def sim_requests(sim: SimExchange) -> int:
    """REST requests the simulator answered, whatever the status."""
    return sum(sim.counters.requests_by_status.values())


async def first_request(
    sim: SimExchange,
    within: float = 120,
    before: int | None = None,
    now: Callable[[], datetime] = clock.now,
) -> datetime:
    """Wait for a REST request past the `before` first ones (default: those
    so far); an instant at or after it, read from `now` (the simulator's clock).

    A venue runtime computes its lookback start before it queues the jobs
    that ask: their start is at most `lookback` before this instant."""
    n = sim_requests(sim) if before is None else before
    await until(lambda: sim_requests(sim) > n, within, "a first REST request")
    return now()


async def series_status(dsn: str) -> dict[SeriesKey, tuple[str, int | None]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT venue, symbol, timeframe, status, missing_bars FROM series_status"
        )
    finally:
        await conn.close()
    return {
        SeriesKey(r["venue"], r["symbol"], r["timeframe"]): (r["status"], r["missing_bars"])
        for r in rows
    }


async def assert_series_ok(dsn: str, keys: Iterable[SeriesKey]) -> None:
    """Every configured series in `keys` (and no other) is OK with no missing bar."""
    keys = set(keys)
    status = await series_status(dsn)
    assert set(status) == keys, f"series_status has {sorted(map(str, status))}"
    bad = {str(k): v for k, v in status.items() if v != ("OK", 0)}
    assert not bad, f"series not OK with 0 missing bars: {bad}"
