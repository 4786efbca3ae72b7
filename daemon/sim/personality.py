"""What every simulator personality (one venue's protocol) is given and gives back."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from aiohttp import web

from daemon.sim.counters import SimCounters
from daemon.sim.scenario import Scenario
from daemon.sim.truth import Truth

Clock = Callable[[], datetime]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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

    def routes(self) -> list[web.RouteDef]: ...


async def send_json(ws: web.WebSocketResponse, payload: Any) -> bool:
    """Send `payload` as one JSON text frame; False if the connection is gone."""
    try:
        await ws.send_str(json.dumps(payload))
    except ConnectionError:
        return False
    return True
