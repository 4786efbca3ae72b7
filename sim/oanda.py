"""The OANDA v20 personality: `GET /v3/instruments/{instrument}/candles`.

Every request needs `Authorization: Bearer candled-sim-oanda-token` (`SIM_TOKEN`);
anything else is answered 401. Each client may send the scenario's
`[rest] weight_per_minute` / 60 requests a second (100 by default, OANDA's
recommended rate); more are answered 429 with `Retry-After: 1`. Candles exist
only for bars with a price (sparse: `Truth.traded`), inside the symbol's
sessions (`profile = "FOREX"`: none over the weekend); the bar in progress is
sent with `complete: false`, and so is a closed bar until `settle` after its
close: OANDA completes a candle only when a price after its end arrives, after
a second or two in busy hours and up to tens of seconds in quiet ones
(hootnot/oanda-api-v20#155). `settle` is zero by default; tests set it
(`OandaPersonality.settle`).

Parameters as documented (instrument-ep): `granularity` (default S5),
`price` (any of M, B, A; default M), `count` (default 500, at most 5000),
`from`, `to` (a `to` in the future is refused, as on OANDA), `includeFirst`,
`smooth`, `dailyAlignment`, `alignmentTimezone`, `weeklyAlignment`. `from`
includes the candle it falls in, and so does `to`. A `from`..`to` range of
more than 5000 candles is refused like a `count` above 5000.

Limits of the simulation, answered 400 with a message saying so: granularities
without a domain timeframe (S5, M2, H3, ...), `smooth=true`, and day-aligned
granularities aligned other than at 00:00 UTC (weeks: on Monday).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from candled.domain import Candle, SeriesKey
from candled_sim import oanda_wire as wire
from candled_sim.personality import SimContext, settled
from candled_sim.truth import Truth
from candled_sim.wire import SIM_VENUE

SIM_TOKEN = "candled-sim-oanda-token"
CANDLES_PATH = "/v3/instruments/{instrument}/candles"
_UNIX_TIME = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_UTC_ZONES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT"})


class BadRequest(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


@dataclass(frozen=True, slots=True)
class CandlesQuery:
    series: SeriesKey
    granularity: str
    components: str  # e.g. "M", "BA"
    start: datetime | None  # `from`: the candle it falls in is the first
    end: datetime | None  # `to`: the candle it falls in is the last
    count: int
    include_first: bool


def parse_candles_query(
    instrument: str, query: Mapping[str, str], truth: Truth, now: datetime
) -> CandlesQuery:
    if truth.listing(instrument) is None:
        raise BadRequest(wire.invalid("instrument"))
    granularity = query.get("granularity", "S5")
    if granularity not in wire.GRANULARITIES:
        raise BadRequest(wire.invalid("granularity"))
    timeframe = wire.TIMEFRAMES.get(granularity)
    if timeframe is None:
        raise BadRequest(f"The simulator serves no {granularity} candles")
    components = query.get("price", "M")
    if (
        not components
        or len(set(components)) != len(components)
        or (set(components) - set(wire.COMPONENTS))
    ):
        raise BadRequest(wire.invalid("price"))
    if _flag(query, "smooth", False):
        raise BadRequest("The simulator serves no smoothed candles")
    include_first = _flag(query, "includeFirst", True)
    if granularity in wire.DAY_ALIGNED:
        _require_utc_alignment(query, granularity)
    start, end = _time(query, "from"), _time(query, "to")
    if end is not None and end > now:
        raise BadRequest(wire.TO_IN_FUTURE)
    if start is not None and end is not None and start > end:
        raise BadRequest(wire.invalid("to"))
    count = _count(query, both_ends=start is not None and end is not None)
    series = SeriesKey(SIM_VENUE, instrument, timeframe)
    if start is not None and end is not None:
        tf = series.tf
        if tf.count_bars(tf.floor(start), tf.next(end)) > wire.MAX_COUNT:
            raise BadRequest(wire.COUNT_EXCEEDED)
    return CandlesQuery(series, granularity, components, start, end, count, include_first)


def _flag(query: Mapping[str, str], name: str, default: bool) -> bool:
    text = query.get(name)
    if text is None:
        return default
    if text not in ("true", "false"):
        raise BadRequest(wire.invalid(name))
    return text == "true"


def _count(query: Mapping[str, str], *, both_ends: bool) -> int:
    text = query.get("count")
    if text is None:
        return wire.DEFAULT_COUNT
    if both_ends or not text.isdigit() or int(text) < 1:
        # "Count should not be specified if both the start and end parameters are provided"
        raise BadRequest(wire.invalid("count"))
    if int(text) > wire.MAX_COUNT:
        raise BadRequest(wire.COUNT_EXCEEDED)
    return int(text)


def _time(query: Mapping[str, str], name: str) -> datetime | None:
    """A DateTime parameter: RFC 3339 or Unix seconds (both documented)."""
    text = query.get(name)
    if text is None:
        return None
    try:
        if _UNIX_TIME.match(text):
            return datetime.fromtimestamp(float(text), UTC)
        ts = datetime.fromisoformat(text)
    except (ValueError, OverflowError, OSError):
        raise BadRequest(wire.invalid(name)) from None
    if ts.tzinfo is None:
        raise BadRequest(wire.invalid(name))
    return ts.astimezone(UTC)


def _require_utc_alignment(query: Mapping[str, str], granularity: str) -> None:
    hour = query.get("dailyAlignment", "17")
    if not hour.isdigit() or not 0 <= int(hour) <= 23:
        raise BadRequest(wire.invalid("dailyAlignment"))
    zone = query.get("alignmentTimezone", "America/New_York")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(wire.invalid("alignmentTimezone")) from None
    weekday = query.get("weeklyAlignment", "Friday")
    if weekday not in wire.WEEKDAYS:
        raise BadRequest(wire.invalid("weeklyAlignment"))
    # The truth's bars follow the domain's UTC grid: days at 00:00 UTC, weeks on Monday.
    if int(hour) != 0 or zone not in _UTC_ZONES or (granularity == "W" and weekday != "Monday"):
        raise BadRequest(
            "The simulator aligns days at 00:00 UTC only (dailyAlignment=0,"
            " alignmentTimezone=UTC, weeklyAlignment=Monday)"
        )


def select_candles(
    truth: Truth, query: CandlesQuery, now: datetime, settle: timedelta = timedelta(0)
) -> list[tuple[Candle, bool]]:
    """OANDA's answer, oldest first, each candle with its `complete` flag: a
    candle is complete `settle` after its close (the bar in progress never is)."""
    series, tf = query.series, query.series.tf
    stop = tf.next(now)  # every bar opening before this has opened
    if query.end is not None:
        stop = min(stop, tf.next(query.end))  # the candle `to` falls in is the last

    def priced(opens: Iterable[datetime]) -> Iterator[datetime]:
        return (ts for ts in opens if truth.traded(series, ts))  # no price, no candle

    if query.start is not None:
        first = tf.floor(query.start)
        if not query.include_first:
            first = tf.add(first, 1)
        opens = priced(truth.opens(series, first, stop))
        chosen = list(opens if query.end is not None else islice(opens, query.count))
    else:
        chosen = list(islice(priced(truth.opens_before(series, stop)), query.count))[::-1]
    return [
        (truth.bar(series, ts), settled(tf.close_time(ts), now, settle))
        if tf.close_time(ts) <= now
        else (truth.partial(series, ts, now), False)
        for ts in chosen
    ]


class _RequestsPerSecond:
    """Requests per client in the current clock second; past the budget: refused."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._used: dict[str, tuple[int, int]] = {}  # client -> (second, requests)

    def admit(self, client: str, now: datetime) -> bool:
        second = int(now.timestamp())
        window, used = self._used.get(client, (second, 0))
        used = used + 1 if window == second else 1
        self._used[client] = (second, used)
        return used <= self._budget


class OandaPersonality:
    def __init__(self, context: SimContext) -> None:
        self._ctx = context
        self._rate = _RequestsPerSecond(max(1, context.scenario.weight_per_minute // 60))
        self.settle = timedelta(0)  # a closed candle is `complete` this long after its close

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", CANDLES_PATH, self._candles),
            web.route("*", "/{tail:.*}", self._not_found),
        ]

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, f"The requested path {request.path} was not found")

    async def _candles(self, request: web.Request) -> web.Response:
        ctx = self._ctx
        if request.method != "GET":
            return _error(405, f"The method {request.method} is not allowed for this path")
        if request.headers.get("Authorization") != f"Bearer {SIM_TOKEN}":
            return _error(401, wire.UNAUTHORIZED)
        now = ctx.clock()
        if not self._rate.admit(request.remote or "?", now):
            ctx.counters.sent_429 += 1
            return _error(429, wire.RATE_LIMITED, {"Retry-After": "1"})
        instrument = request.match_info["instrument"]
        try:
            query = parse_candles_query(instrument, request.query, ctx.truth, now)
        except BadRequest as exc:
            return _error(400, exc.msg)
        rows = [
            wire.candlestick(candle, complete, query.components)
            for candle, complete in select_candles(ctx.truth, query, now, self.settle)
        ]
        return web.json_response(wire.candles_body(instrument, query.granularity, rows))


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(wire.error_body(message), status=status, headers=headers)
