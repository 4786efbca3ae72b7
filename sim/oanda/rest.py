"""What OANDA's `GET /v3/instruments/{instrument}/candles` answers: its query,
and the candles it selects with their `complete` flags."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from candled.domain import Candle, SeriesKey
from candled_sim.http import HttpError
from candled_sim.oanda import wire
from candled_sim.personality import settled
from candled_sim.truth import SIM_VENUE, Truth

_UNIX_TIME = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")
_UTC_ZONES = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT"})


def _bad(message: str) -> HttpError:
    return wire.refusal(400, message)


@dataclass(frozen=True, slots=True)
class CandlesQuery:
    """A well-formed candles request."""

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
    """The request's parameters, or the `HttpError` (400) OANDA answers them with."""
    if truth.listing(instrument) is None:
        raise _bad(wire.invalid("instrument"))
    granularity = query.get("granularity", "S5")
    if granularity not in wire.GRANULARITIES:
        raise _bad(wire.invalid("granularity"))
    timeframe = wire.TIMEFRAMES.get(granularity)
    if timeframe is None:
        raise _bad(f"The simulator serves no {granularity} candles")
    components = query.get("price", "M")
    if (
        not components
        or len(set(components)) != len(components)
        or (set(components) - set(wire.COMPONENTS))
    ):
        raise _bad(wire.invalid("price"))
    if _flag(query, "smooth", False):
        raise _bad("The simulator serves no smoothed candles")
    include_first = _flag(query, "includeFirst", True)
    if granularity in wire.DAY_ALIGNED:
        _require_utc_alignment(query, granularity)
    start, end = _time(query, "from"), _time(query, "to")
    if end is not None and end > now:
        raise _bad(wire.TO_IN_FUTURE)
    if start is not None and end is not None and start > end:
        raise _bad(wire.invalid("to"))
    count = _count(query, both_ends=start is not None and end is not None)
    series = SeriesKey(SIM_VENUE, instrument, timeframe)
    if start is not None and end is not None:
        tf = series.tf
        if tf.count_bars(tf.floor(start), tf.next(end)) > wire.MAX_COUNT:
            raise _bad(wire.COUNT_EXCEEDED)
    return CandlesQuery(series, granularity, components, start, end, count, include_first)


def _flag(query: Mapping[str, str], name: str, default: bool) -> bool:
    text = query.get(name)
    if text is None:
        return default
    if text not in ("true", "false"):
        raise _bad(wire.invalid(name))
    return text == "true"


def _count(query: Mapping[str, str], *, both_ends: bool) -> int:
    text = query.get("count")
    if text is None:
        return wire.DEFAULT_COUNT
    if both_ends or not text.isdigit() or int(text) < 1:
        # "Count should not be specified if both the start and end parameters are provided"
        raise _bad(wire.invalid("count"))
    if int(text) > wire.MAX_COUNT:
        raise _bad(wire.COUNT_EXCEEDED)
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
        raise _bad(wire.invalid(name)) from None
    if ts.tzinfo is None:
        raise _bad(wire.invalid(name))
    return ts.astimezone(UTC)


def _require_utc_alignment(query: Mapping[str, str], granularity: str) -> None:
    hour = query.get("dailyAlignment", "17")
    if not hour.isdigit() or not 0 <= int(hour) <= 23:
        raise _bad(wire.invalid("dailyAlignment"))
    zone = query.get("alignmentTimezone", "America/New_York")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise _bad(wire.invalid("alignmentTimezone")) from None
    weekday = query.get("weeklyAlignment", "Friday")
    if weekday not in wire.WEEKDAYS:
        raise _bad(wire.invalid("weeklyAlignment"))
    # The truth's bars follow the domain's UTC grid: days at 00:00 UTC, weeks on Monday.
    if int(hour) != 0 or zone not in _UTC_ZONES or (granularity == "W" and weekday != "Monday"):
        raise _bad(
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
