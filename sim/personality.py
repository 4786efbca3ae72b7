"""What every simulator personality (one venue's protocol) is given and gives back,
and the WebSocket plumbing the streaming ones share.

A personality lives in its venue's package (`candled_sim.binance`, ...): its
`personality.py` holds the routes, `rest.py` what a REST answer holds,
`stream.py` one stream connection, `wire.py` the venue's JSON shapes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from aiohttp import web

from candled_sim.counters import SimCounters
from candled_sim.scenario import Scenario
from candled_sim.truth import Truth

Clock = Callable[[], datetime]
TICK_LAG_S = 0.001  # streams push just after a boundary, when the bar has closed
_EARLY_S = 0.01  # how much earlier than asked the loop's timers may fire


@dataclass(frozen=True, slots=True)
class SimContext:
    """The exchange's shared state: every personality serves the same truth."""

    truth: Truth
    scenario: Scenario
    counters: SimCounters
    clock: Clock
    rng: random.Random  # faults draw from it, so one seed replays the same run
    sockets: set[web.WebSocketResponse]  # open WebSockets, closed when the exchange stops


class Personality(Protocol):
    """One venue's protocol: its REST paths and stream endpoints."""

    def __init__(self, context: SimContext) -> None: ...

    def routes(self) -> list[web.RouteDef]:
        """The REST paths and stream endpoints the exchange serves for this venue."""
        ...


class Settling(Protocol):
    """A personality whose answer about a bar is final only `settle` after the
    bar's close (OANDA's `complete: false`, Kraken's uncommitted last entry);
    until then it says "not yet" its own way. Zero by default: every closed
    bar is final at once. A scenario sets it (`[oanda] settle`, `[kraken]
    settle`), and so may a test (`sim.personality.settle = ...`)."""

    settle: timedelta


def settled(close: datetime, now: datetime, settle: timedelta) -> bool:
    """Whether a bar closing at `close` is final at `now`, `settle` after its close."""
    return close + settle <= now


async def send_text(ws: web.WebSocketResponse, text: str) -> bool:
    """Send one text frame; False if the connection is gone."""
    try:
        await ws.send_str(text)
    except ConnectionError:
        return False
    return True


async def send_json(ws: web.WebSocketResponse, payload: Any) -> bool:
    """Send `payload` as one JSON text frame; False if the connection is gone."""
    return await send_text(ws, json.dumps(payload))


def next_tick(clock: Clock, interval_s: float) -> float:
    """The next multiple of `interval_s` on `clock`, in seconds since the epoch."""
    return (int(clock().timestamp() / interval_s) + 1) * interval_s


async def sleep_to_tick(clock: Clock, interval_s: float) -> None:
    """Sleep until just after the next multiple of `interval_s` on `clock`: a
    stream's push tick, when the bars of the boundary have closed."""
    tick = next_tick(clock, interval_s)
    await asyncio.sleep(tick - clock().timestamp() + TICK_LAG_S)
    # The loop's timers may fire a little early (millisecond clocks): not
    # before the boundary, or its bars would close a tick late. (A clock
    # that does not follow the wall clock, as a test's, is left as it is.)
    left = tick - clock().timestamp()
    if 0 < left < _EARLY_S:
        await asyncio.sleep(left + TICK_LAG_S)


@asynccontextmanager
async def websocket(
    request: web.Request, context: SimContext
) -> AsyncIterator[web.WebSocketResponse]:
    """Accept a WebSocket, counted and known to the exchange until it ends."""
    ws = web.WebSocketResponse(autoping=True)  # answers client pings; personalities send theirs
    await ws.prepare(request)
    context.sockets.add(ws)
    context.counters.ws_connections += 1
    context.counters.ws_open += 1
    try:
        yield ws
    finally:
        context.sockets.discard(ws)
        context.counters.ws_open -= 1
