"""Run `candled` as a real child process, for end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import pytest
from aiohttp import web

from candled import clock
from candled.domain import Candle, SeriesKey
from candled_sim.personality import Personality
from candled_sim.server import SimExchange

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")
Clock = Callable[[], datetime]


def pinned(instant: datetime, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Run at `instant`: the daemon and CLI processes started after this (they
    inherit os.environ) read it as now, and so does the returned clock, for the
    in-process simulator and the test. Both then run on with the wall clock."""
    offset = clock.offset_for(instant)
    monkeypatch.setenv(clock.OFFSET_ENV, repr(offset))
    shift = timedelta(seconds=offset - clock.OFFSET_S)  # this process may run shifted too
    return lambda: clock.now() + shift


def at(text: str) -> datetime:
    """An instant written `2026-11-27T17:20:30Z`."""
    return datetime.fromisoformat(text).astimezone(UTC)


def venue_toml(
    name: str,
    port: int,
    *,
    kind: str = "binance",
    batch: int = 5,
    rate_capacity: int = 6000,
    **extra: str,
) -> str:
    """A `[[venues]]` table for a simulator on `port`; `extra` values are TOML literals."""
    return f"""
[[venues]]
name = "{name}"
kind = "{kind}"
rest_url = "http://127.0.0.1:{port}"
ws_url = "ws://127.0.0.1:{port}"
batch = {batch}
rate_capacity = {rate_capacity}
rate_period = "60s"
""" + "".join(f"{k} = {v}\n" for k, v in extra.items())


def series_toml(venue: str, symbols: Sequence[str], timeframes: Sequence[str], **extra: str) -> str:
    lines = [
        "[[series]]",
        f'venue = "{venue}"',
        "symbols = [" + ", ".join(f'"{s}"' for s in symbols) + "]",
        "timeframes = [" + ", ".join(f'"{t}"' for t in timeframes) + "]",
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def write_config(tmp: Path, body: str, *, health_port: int = 0) -> Path:
    path = tmp / "config.toml"
    path.write_text(
        f"""
[daemon]
health_listen = "127.0.0.1:{health_port}"
log_level = "info"
log_format = "json"
state_dir = "{tmp / "state"}"
{body}"""
    )
    return path


@asynccontextmanager
async def running_daemon(
    config: Path, dsn: str, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start `python -m candled run`; on exit, make sure it is gone."""
    env = {**os.environ, "CANDLED_DATABASE_URL": dsn}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "candled", "run", "--config", str(config),
            cwd=REPO, env=env, stdout=out, stderr=out,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()


async def stop(proc: asyncio.subprocess.Process, within: float = 30.0) -> int:
    """SIGTERM, then the exit code (a hang past `within` seconds fails the test)."""
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(within):
        return await proc.wait()


async def repair_pass(config: Path, dsn: str, log_dir: Path) -> None:
    """One `candled repair` pass (the heal cycle the daemon would run next);
    its output goes to `log_dir/repair.log`. It must end with every series OK
    (exit 0): a series left DEGRADED or STALE fails the test here."""
    env = {**os.environ, "CANDLED_DATABASE_URL": dsn}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "candled", "repair", "--config", str(config),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    (log_dir / "repair.log").write_bytes(out)
    assert proc.returncode == 0, out.decode()[-2000:]


async def wait_until(check: Callable[[], Awaitable[T | None]], within: float = 60) -> T:
    """Poll `check` every 0.5 s until it returns something true; a hang past
    `within` seconds raises TimeoutError."""
    async with asyncio.timeout(within):
        while not (result := await check()):
            await asyncio.sleep(0.5)
        return result


async def stored_candle(conn: asyncpg.Connection, key: SeriesKey, ts: datetime) -> Candle | None:
    """The stored bar of `key` opening at `ts` (None also before the daemon migrated)."""
    try:
        row = await conn.fetchrow(
            "SELECT open, high, low, close, volume FROM candles"
            " WHERE venue = $1 AND symbol = $2 AND timeframe = $3 AND ts = $4",
            key.venue, key.symbol, key.timeframe, ts,
        )  # fmt: skip
    except asyncpg.UndefinedTableError:
        return None  # not migrated yet
    return None if row is None else Candle(key, ts, *row)


def tail(log: Path, chars: int = 3000) -> str:
    """The end of a log, for an assertion's message."""
    return log.read_text(errors="replace")[-chars:]


def log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a daemon's log (others, e.g. a traceback, skipped)."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


async def wait_for_event(
    log: Path, event: str, proc: asyncio.subprocess.Process | None = None, within: float = 90
) -> dict[str, Any]:
    """Wait until the daemon logs `event` (a process that exits meanwhile fails)."""

    async def logged() -> dict[str, Any] | None:
        if proc is not None and proc.returncode is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}): {tail(log)}")
        return next((e for e in log_events(log) if e.get("event") == event), None)

    return await wait_until(logged, within)


@dataclass(frozen=True)
class SimRequest:
    """One request the simulator answered (its time by the simulator's clock)."""

    at: datetime  # when it arrived
    path: str
    params: Mapping[str, str]
    status: int


class _Recording:
    """A personality whose every route also appends to a request log."""

    def __init__(self, inner: Personality, now: Clock, log: list[SimRequest]) -> None:
        self._inner = inner
        self._now = now
        self._log = log

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)  # what tests read of the personality itself

    def routes(self) -> list[web.RouteDef]:
        return [web.RouteDef(r.method, r.path, self._wrap(r.handler), r.kwargs)
                for r in self._inner.routes()]  # fmt: skip

    def _wrap(self, handler: Any) -> Any:
        async def recorded(request: web.Request) -> web.StreamResponse:
            arrived = self._now()
            response: web.StreamResponse = await handler(request)
            self._log.append(SimRequest(arrived, request.path, dict(request.query),
                                        response.status))  # fmt: skip
            return response

        return recorded


def record_requests(sim: SimExchange, now: Clock) -> list[SimRequest]:
    """The requests `sim` answers from now on, in the order answered (call
    before `sim.start`; `now` is the clock the simulator was given)."""
    requests: list[SimRequest] = []
    sim.personality = _Recording(sim.personality, now, requests)
    return requests


class Bars(Protocol):
    """The simulator's truth, or a view of it as a venue publishes it."""

    def candles(
        self, series: SeriesKey, start: datetime, end: datetime, now: datetime, *, sparse: bool
    ) -> list[Candle]: ...


@dataclass(frozen=True)
class StoreDiff:
    """How a stored series differs from the simulator's truth over a window."""

    expected: int
    stored: int
    missing: list[datetime]
    extra: list[datetime]  # stored bars the truth does not have
    wrong: list[datetime]  # stored with other values than the truth's
    duplicated: int

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.wrong or self.duplicated)

    def __str__(self) -> str:
        return (f"expected {self.expected}, stored {self.stored}, missing {len(self.missing)}"
                f" (first {self.missing[:3]}), extra {len(self.extra)} (first {self.extra[:3]}),"
                f" wrong {len(self.wrong)} (first {self.wrong[:3]}),"
                f" duplicated {self.duplicated}")  # fmt: skip


async def compare_with_truth(
    conn: asyncpg.Connection,
    truth: Bars,
    key: SeriesKey,
    lo: datetime,
    hi: datetime,
    *,
    sim_symbol: str | None = None,
    sparse: bool = False,
) -> StoreDiff:
    """Compare the stored bars of `key` opening in [lo, hi) with the truth's
    (named `sim_symbol` in the simulator, default the same symbol)."""
    rows = await conn.fetch(
        """SELECT ts, open, high, low, close, volume FROM candles
           WHERE venue = $1 AND symbol = $2 AND timeframe = $3 AND ts >= $4 AND ts < $5""",
        key.venue, key.symbol, key.timeframe, lo, hi,
    )  # fmt: skip
    stored = {r["ts"]: tuple(r)[1:] for r in rows}
    sim_key = SeriesKey(key.venue, sim_symbol or key.symbol, key.timeframe)
    expected = {c.ts: (c.open, c.high, c.low, c.close, c.volume)
                for c in truth.candles(sim_key, lo, hi, now=hi, sparse=sparse)}  # fmt: skip
    return StoreDiff(
        expected=len(expected),
        stored=len(rows),
        missing=sorted(expected.keys() - stored.keys()),
        extra=sorted(stored.keys() - expected.keys()),
        wrong=sorted(ts for ts in expected.keys() & stored.keys() if expected[ts] != stored[ts]),
        duplicated=len(rows) - len(stored),
    )


class NotifyListener:
    """A NOTIFY_SOCKET as systemd provides it: drained as datagrams arrive
    (the kernel queues only a few for an unread socket), so that the daemon
    never finds it full. Made inside the test's event loop; `close()` it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []  # every message, in order of arrival
        self._seen = 0  # how many of them `wait_for` has looked at
        self._arrived = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock, self._drain)

    def _drain(self) -> None:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                break
        self._arrived.set()

    async def wait_for(self, field: str, within: float = 60) -> str:
        """The next message (after those already looked at) holding `field`."""
        async with asyncio.timeout(within):
            while True:
                while self._seen < len(self.messages):
                    msg = self.messages[self._seen]
                    self._seen += 1
                    if field in msg.split("\n"):
                        return msg
                self._arrived.clear()
                await self._arrived.wait()

    def close(self) -> None:
        self._loop.remove_reader(self.sock)
        self.sock.close()
