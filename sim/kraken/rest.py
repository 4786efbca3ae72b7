"""What Kraken's `GET /0/public/OHLC` answers: its query, and the entries it selects."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from candled.domain import Candle, SeriesKey
from candled_sim.kraken.wire import INVALID_ARGUMENTS, TIMEFRAMES, UNKNOWN_PAIR, refusal
from candled_sim.truth import SIM_VENUE, Truth

HORIZON_ROWS = 720  # entries an OHLC answer holds at most, the forming bar included
_INTEGER = re.compile(r"^-?[0-9]{1,20}$")


@dataclass(frozen=True, slots=True)
class OhlcQuery:
    """A well-formed OHLC request."""

    series: SeriesKey
    since: int | None  # Unix seconds: entries opening after it
    display_names: bool  # assetVersion=1: the answer names the pair as asked


@dataclass(frozen=True, slots=True)
class OhlcRequest:
    """One OHLC request the sim answered, for tests to assert on."""

    symbol: str
    timeframe: str
    since: int | None
    at: datetime


def parse_ohlc_query(query: Mapping[str, str], truth: Truth) -> OhlcQuery:
    """The request's parameters, or the `HttpError` (HTTP 200, an error array) Kraken
    answers them with."""
    pair, interval = query.get("pair", ""), query.get("interval", "1")
    if not pair:
        raise refusal(INVALID_ARGUMENTS)
    if truth.listing(pair) is None:
        raise refusal(UNKNOWN_PAIR)
    if not interval.isdigit() or int(interval) not in TIMEFRAMES:
        raise refusal(INVALID_ARGUMENTS)
    since = query.get("since")
    if since is not None and not _INTEGER.match(since):
        raise refusal(INVALID_ARGUMENTS)
    if query.get("assetVersion", "1") != "1":  # the only version Kraken has
        raise refusal(INVALID_ARGUMENTS)
    return OhlcQuery(
        series=SeriesKey(SIM_VENUE, pair, TIMEFRAMES[int(interval)]),
        since=None if since is None else int(since),
        display_names="assetVersion" in query,
    )


def select_ohlc(
    truth: Truth, series: SeriesKey, now: datetime, settle: timedelta = timedelta(0)
) -> list[Candle]:
    """The newest 720 entries, oldest first: traded bars, then the uncommitted
    one: the bar forming, or, until `settle` after a close, the bar that closed
    (its values may still change; the next bar is not listed yet)."""
    listed = truth.listing(series.symbol)
    if listed is None or listed > now:
        return []
    current = max(series.tf.floor(now - settle), series.tf.floor(listed))
    # The forming bar "will always be present", traded or not.
    rows = [truth.partial(series, current, now)]
    traded = (ts for ts in truth.opens_before(series, current) if truth.traded(series, ts))
    rows += (truth.bar(series, ts) for ts in islice(traded, HORIZON_ROWS - 1))
    return rows[::-1]
