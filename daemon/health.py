"""The health endpoint (`/health`, JSON) and Prometheus metrics (`/metrics`).

`assess` turns the facts the daemon gathers into the `/health` document that
README's "Health and metrics" describes; the server is a thin aiohttp edge
around it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from candled import __version__, calendars, metrics
from candled.config import SeriesSpec
from candled.store.database import UNAVAILABLE
from candled.store.healing import SeriesStatus
from candled.store.leases import Member
from candled.supervisor import ComponentState

RELOAD_OK = "ok"  # `HealthFacts.last_reload` when the last reload applied everything


class HealthStatus(StrEnum):
    """The daemon's verdict in `/health` (`status`); `failing` answers 503."""

    OK = "ok"
    DEGRADED = "degraded"  # something needs attention, but candles still reach the store
    FAILING = "failing"  # candles cannot reach the store


class HealthReason(StrEnum):
    """Every reason `/health` gives for not being `ok`, as a template for
    `str.format` (the venue's own refusals are passed on as the venue said them)."""

    DATABASE_UNREACHABLE = "database unreachable: {error}"
    WRITES_FAILING = "writes failing: {why}"
    SPOOLED = "{candles} candles spooled on disk, waiting for the database"
    RELOAD_FAILED = "last config reload failed: {why}"
    CRASH_LOOPING = "component {name} is crash-looping"
    VENUE_BANNED = "venue {venue} banned until {until}"
    STREAM_DISCONNECTED = "venue {venue} stream disconnected"
    SERIES_NOT_OK = "{count} series not OK"


@dataclass(frozen=True)
class VenueHealth:
    """One venue as `/health` shows it: stream, rate budget, ban and refusals."""

    name: str
    ws_connected: bool | None  # None: no live series on this venue
    rate_tokens: float
    banned_until: datetime | None
    component: ComponentState  # the supervisor's state of its runtime
    credentials_refused: str | None = None  # why the venue refuses the key (names the settings)
    # Why the venue keeps the stream down (a refused key or plan, another
    # connection on the key, a message it rejects), naming what to fix.
    stream_refused: str | None = None


@dataclass(frozen=True)
class SeriesHealth:
    """One series as `/health` shows it: last audit's status, newest bar, lag."""

    venue: str
    symbol: str
    timeframe: str
    status: SeriesStatus
    last_ts: datetime | None
    lag_s: float | None
    missing_bars: int


@dataclass(frozen=True)
class ClusterHealth:
    """This instance in the cluster (`[cluster] enabled`): who it is, the live
    members at its last renewal, and the series it owns."""

    instance: str
    lease_ttl_s: float
    members: Sequence[Member]
    owned: Sequence[str]


@dataclass(frozen=True)
class HealthFacts:
    """Everything `assess` judges, gathered by the daemon at each request."""

    uptime_s: float
    database_ok: bool
    database_error: str | None
    timescaledb: str | None
    license: str | None
    config_loaded_at: datetime
    last_reload: str  # RELOAD_OK, or what went wrong
    venues: Sequence[VenueHealth]
    series: Sequence[SeriesHealth]
    crash_looping: Sequence[str]
    writer_failing: str | None = None  # why writes are failing, if they are
    spooled_candles: int = 0  # waiting on disk for the database
    cluster: ClusterHealth | None = None  # None: clustering is off


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def assess(f: HealthFacts) -> dict[str, Any]:
    """The /health document. `failing` when candles cannot reach the store
    (the database unreachable, writes failing, a full spool holding intake
    back); `degraded` when something needs attention but candles still flow."""
    reasons: list[str] = []
    if not f.database_ok:
        reasons.append(HealthReason.DATABASE_UNREACHABLE.format(error=f.database_error))
    if f.writer_failing:
        reasons.append(HealthReason.WRITES_FAILING.format(why=f.writer_failing))
    if f.spooled_candles:
        reasons.append(HealthReason.SPOOLED.format(candles=f.spooled_candles))
    if f.last_reload != RELOAD_OK:
        reasons.append(HealthReason.RELOAD_FAILED.format(why=f.last_reload))
    reasons += [HealthReason.CRASH_LOOPING.format(name=name) for name in f.crash_looping]
    for v in f.venues:
        if v.banned_until is not None:
            until = v.banned_until.isoformat()
            reasons.append(HealthReason.VENUE_BANNED.format(venue=v.name, until=until))
        if v.credentials_refused is not None:
            reasons.append(v.credentials_refused)
        if v.stream_refused is not None:
            reasons.append(v.stream_refused)
        if v.ws_connected is False:
            reasons.append(HealthReason.STREAM_DISCONNECTED.format(venue=v.name))
    not_ok = [s for s in f.series if s.status != SeriesStatus.OK]
    if not_ok:
        reasons.append(HealthReason.SERIES_NOT_OK.format(count=len(not_ok)))
    failing = not f.database_ok or f.writer_failing is not None
    status = (
        HealthStatus.FAILING if failing else (HealthStatus.DEGRADED if reasons else HealthStatus.OK)
    )
    return {
        "status": status,
        "reasons": reasons,
        "version": __version__,
        "uptime_s": round(f.uptime_s, 1),
        "database": {
            "ok": f.database_ok,
            "timescaledb": f.timescaledb,
            "license": f.license,
            **({"error": f.database_error} if f.database_error else {}),
        },
        "config": {"loaded_at": _iso(f.config_loaded_at), "last_reload": f.last_reload},
        "venues": [
            {
                "name": v.name,
                "ws_connected": v.ws_connected,
                "rate_tokens": int(v.rate_tokens),
                "banned_until": _iso(v.banned_until),
                "component": v.component,
                "credentials_refused": v.credentials_refused,
                "stream_refused": v.stream_refused,
            }
            for v in f.venues
        ],
        "series": [
            {
                "venue": s.venue,
                "symbol": s.symbol,
                "timeframe": s.timeframe,
                "status": s.status,
                "last_ts": _iso(s.last_ts),
                "lag_s": None if s.lag_s is None else round(s.lag_s, 1),
                "missing_bars": s.missing_bars,
            }
            for s in f.series
        ],
        "cluster": None if f.cluster is None else _cluster(f.cluster),
    }


def _cluster(c: ClusterHealth) -> dict[str, Any]:
    return {
        "instance": c.instance,
        "lease_ttl_s": c.lease_ttl_s,
        "members": [
            {
                "instance": m.instance,
                "host": m.host,
                "pid": m.pid,
                "health": m.health,
                "version": m.version,
                "started_at": _iso(m.started_at),
                "expires_at": _iso(m.expires_at),
            }
            for m in c.members
        ],
        "owned": list(c.owned),
    }


class HealthServer:
    """Serves `/health`, `/metrics` and `/coverage` on `health_listen`."""

    def __init__(
        self,
        gather: Callable[[], Awaitable[HealthFacts]],
        coverage: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        self._gather = gather
        self._coverage = coverage  # renders the /coverage page
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port and return the address bound (port 0: the one chosen)."""
        app = web.Application()
        app.add_routes([web.get("/health", self._health), web.get("/metrics", self._metrics)])
        if self._coverage is not None:
            app.add_routes([web.get("/coverage", self._coverage_page)])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _health(self, request: web.Request) -> web.Response:
        doc = assess(await self._gather())
        return web.json_response(doc, status=503 if doc["status"] == HealthStatus.FAILING else 200)

    async def _coverage_page(self, request: web.Request) -> web.Response:
        assert self._coverage is not None
        try:
            page = await self._coverage()
        except UNAVAILABLE as e:
            return web.Response(status=503, text=f"database unreachable: {e!r}\n")
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def lag_seconds(
    spec: SeriesSpec, last: datetime, now: datetime, overrides: calendars.Overrides | None = None
) -> float:
    """Seconds since the oldest bar the store lacks closed: 0 when every bar
    the calendar expects up to `now` is stored after `last` (so an equity
    series is not behind over a weekend)."""
    tf = spec.key.tf
    expected = calendars.expected_ranges(spec.profile, spec.calendar, tf, tf.next(last),
                                         tf.floor(now), overrides=overrides)  # fmt: skip
    return (now - tf.close_time(expected[0][0])).total_seconds() if expected else 0.0
