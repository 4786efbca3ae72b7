"""The simulated exchange: Binance's REST and WebSocket market data on one port."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web

from daemon.sim.counters import SimCounters
from daemon.sim.rest import Clock, RestApi
from daemon.sim.scenario import Scenario, load_scenario
from daemon.sim.stream import StreamSession
from daemon.sim.truth import Truth
from daemon.sim.wire import error_body, stream_series

MAX_STREAMS = 1024  # per connection, as on Binance


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SimExchange:
    """REST (`/api/v3/...`) and WebSocket (`/stream`, `/ws/...`) over one aiohttp server."""

    def __init__(self, scenario: Scenario | None = None, clock: Clock = _utc_now) -> None:
        self.scenario = scenario or Scenario()
        self.truth = Truth(self.scenario.seed, self.scenario.listings, self.scenario.maintenance)
        self.counters = SimCounters()
        self._clock = clock
        self._rng = random.Random(self.scenario.seed)  # faults replay the same for one seed
        self._rest = RestApi(self.truth, self.scenario, self.counters, clock, self._rng)
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on host:port (port 0: any free port); returns the bound address."""
        app = web.Application(middlewares=[self._rest.count_statuses])
        app.add_routes(self._rest.routes())
        app.add_routes(
            [
                web.get("/stream", self._stream),
                web.get("/ws", self._stream),
                web.get("/ws/{streams:.+}", self._stream),
            ]
        )
        # Open WebSockets are closed by stop(); nothing else needs a long grace period.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        return str(bound_host), int(bound_port)

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        combined = request.path == "/stream"
        if combined:
            joined = request.query.get("streams", "")
        else:
            joined = request.match_info.get("streams", "")
        streams = [name for name in joined.split("/") if name]
        bad = [name for name in streams if stream_series(name) is None]
        if bad or len(streams) > MAX_STREAMS:
            body = error_body(-1121, f"Invalid stream(s): {bad or len(streams)}")
            return web.json_response(body, status=400)
        ws = web.WebSocketResponse(autoping=True)  # answers client pings; we send our own
        await ws.prepare(request)
        self._sockets.add(ws)
        self.counters.ws_connections += 1
        self.counters.ws_open += 1
        session = StreamSession(
            ws,
            request,
            streams,
            combined,
            self.truth,
            self.scenario,
            self.counters,
            self._clock,
            self._rng,
        )
        try:
            await session.run()
        finally:
            self._sockets.discard(ws)
            self.counters.ws_open -= 1
        return ws


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_sim(listen: str, scenario_path: Path | None) -> None:
    """`candled sim`: serve the simulated exchange until cancelled."""
    host, port = _parse_listen(listen)
    now = _utc_now()
    scenario = Scenario() if scenario_path is None else load_scenario(scenario_path, now)
    sim = SimExchange(scenario)
    bound_host, bound_port = await sim.start(host, port)
    log = structlog.get_logger("candled.sim")
    log.info(
        "sim listening",
        rest_url=f"http://{bound_host}:{bound_port}",
        ws_url=f"ws://{bound_host}:{bound_port}",
        symbols=sim.truth.symbols,
        scenario=str(scenario_path) if scenario_path else "default",
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
