"""What Binance's `GET /api/v3/klines` answers: its query, and the bars it selects."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import EPOCH, SUPPORTED
from candled_sim.binance.wire import refusal
from candled_sim.truth import SIM_VENUE, Truth

KLINES_WEIGHT = 2
DEFAULT_LIMIT, MAX_LIMIT = 500, 1000
_DIGITS = re.compile(r"^[0-9]{1,20}$")


@dataclass(frozen=True, slots=True)
class KlinesQuery:
    """A well-formed klines request: the series, its time range and page size."""

    series: SeriesKey
    start: datetime | None
    end: datetime | None  # inclusive, as Binance's endTime
    limit: int


def parse_klines_query(query: Mapping[str, str], truth: Truth) -> KlinesQuery:
    """The request's parameters, or the `HttpError` (400) Binance answers them with."""
    symbol, interval = query.get("symbol", ""), query.get("interval", "")
    for name, value in (("symbol", symbol), ("interval", interval)):
        if not value:
            raise refusal(
                -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
            )
    if interval not in SUPPORTED:
        raise refusal(-1120, "Invalid interval.")
    if truth.listing(symbol) is None:
        raise refusal(-1121, "Invalid symbol.")
    start, end, limit = (_number(query, name) for name in ("startTime", "endTime", "limit"))
    if start is not None and end is not None and start > end:
        raise refusal(-1023, "Start time is greater than end time.")
    if limit is not None and limit < 1:
        raise refusal(-1130, "Data sent for parameter 'limit' is not valid.")
    return KlinesQuery(
        series=SeriesKey(SIM_VENUE, symbol, interval),
        start=None if start is None else EPOCH + timedelta(milliseconds=start),
        end=None if end is None else EPOCH + timedelta(milliseconds=end),
        limit=min(MAX_LIMIT, DEFAULT_LIMIT if limit is None else limit),  # capped, not refused
    )


def _number(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not _DIGITS.match(text):
        raise refusal(
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(text)


def select_klines(truth: Truth, query: KlinesQuery, now: datetime) -> list[Candle]:
    """Binance's answer: with startTime the oldest bars from there, else the newest.

    Like Binance, the answer includes the bar still open at `now`, with its
    values so far.
    """
    series, tf = query.series, query.series.tf
    if not truth.listed_by(series.symbol, now):
        return []
    stop = tf.next(now)  # every bar opening before this has opened
    if query.end is not None:
        stop = min(stop, query.end + timedelta(milliseconds=1))
    if query.start is not None:
        opens = list(islice(truth.opens(series, query.start, stop), query.limit))
    else:
        opens = list(islice(truth.opens_before(series, stop), query.limit))[::-1]
    return [
        truth.bar(series, ts) if tf.close_time(ts) <= now else truth.partial(series, ts, now)
        for ts in opens
    ]
