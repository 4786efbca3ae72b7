"""The simulated exchange: one deterministic truth served through a venue's
protocol (its "personality"), REST and WebSocket on one port."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import structlog
from aiohttp import web

from candled import clock
from candled.domain import DataProfile
from candled_sim.alpaca import AlpacaPersonality
from candled_sim.binance import BinancePersonality
from candled_sim.coinbase import CoinbasePersonality
from candled_sim.counters import SimCounters
from candled_sim.http import Handler
from candled_sim.kraken import KrakenPersonality
from candled_sim.oanda import OandaPersonality
from candled_sim.personality import Clock, Personality, SimContext
from candled_sim.scenario import Scenario, load_scenario
from candled_sim.truth import Market, Truth

# --protocol name -> the personality serving it.
PROTOCOLS: dict[str, type[Personality]] = {
    "binance": BinancePersonality,
    "kraken": KrakenPersonality,
    "coinbase": CoinbasePersonality,
    "oanda": OandaPersonality,
    "alpaca": AlpacaPersonality,
}


# Without a scenario, each protocol serves symbols named as its venue names them
# (binance: the scenario defaults, BTCUSDT and ETHUSDT).
_DEFAULT_MARKETS: dict[str, dict[str, Market]] = {
    "coinbase": {"BTC-USD": Market(), "ETH-USD": Market(illiquid=0.05)},
    "kraken": {"BTC/USD": Market(), "ETH/USD": Market(illiquid=0.05)},
    "alpaca": {
        "AAPL": Market(DataProfile.EQUITY, "XNYS", illiquid=0.02),
        "MSFT": Market(DataProfile.EQUITY, "XNYS", illiquid=0.05),
    },
    "oanda": {"EUR_USD": Market(DataProfile.FOREX), "USD_JPY": Market(DataProfile.FOREX)},
}


def default_scenario(protocol: str) -> Scenario:
    """The scenario of a sim started without one: the protocol's default symbols."""
    markets = _DEFAULT_MARKETS.get(protocol, {})
    if not markets:
        return Scenario()
    listed = next(iter(Scenario().listings.values()))
    return Scenario(listings=dict.fromkeys(markets, listed), markets=markets)


class SimExchange:
    """A venue's REST and WebSocket market data over one aiohttp server."""

    def __init__(
        self, scenario: Scenario | None = None, clock: Clock = clock.now, protocol: str = "binance"
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}"
            )
        self.scenario = scenario or default_scenario(protocol)
        self.protocol = protocol
        self.truth = Truth(
            self.scenario.seed,
            self.scenario.listings,
            self.scenario.maintenance,
            self.scenario.markets,
        )
        self.counters = SimCounters()
        self._sockets: set[web.WebSocketResponse] = set()
        self._context = SimContext(
            self.truth,
            self.scenario,
            self.counters,
            clock,
            random.Random(self.scenario.seed),  # faults replay the same for one seed
            self._sockets,
        )
        self.personality = PROTOCOLS[protocol](self._context)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on host:port (port 0: any free port); returns the bound address."""
        app = web.Application(middlewares=[self._count_statuses])
        app.add_routes(self.personality.routes())
        # Open WebSockets are closed by stop(); nothing else needs a long grace period.
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        return str(bound_host), int(bound_port)

    async def stop(self) -> None:
        """Close every open WebSocket and stop listening."""
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _count_statuses(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        transport = request.transport
        # An answer on a closed connection (a reset fault) never reaches the client.
        rest = not isinstance(response, web.WebSocketResponse)
        if rest and transport is not None and not transport.is_closing():
            self.counters.requests_by_status[response.status] += 1
        return response


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def run_sim(listen: str, scenario_path: Path | None, protocol: str = "binance") -> None:
    """`candled sim`: serve the simulated exchange until cancelled."""
    host, port = _parse_listen(listen)
    now = clock.now()
    scenario = None if scenario_path is None else load_scenario(scenario_path, now)
    sim = SimExchange(scenario, protocol=protocol)
    bound_host, bound_port = await sim.start(host, port)
    log = structlog.get_logger("candled.sim")
    log.info(
        "sim listening",
        rest_url=f"http://{bound_host}:{bound_port}",
        ws_url=f"ws://{bound_host}:{bound_port}",
        protocol=protocol,
        symbols=sim.truth.symbols,
        scenario=str(scenario_path) if scenario_path else "default",
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()
