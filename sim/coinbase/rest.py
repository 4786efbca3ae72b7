"""What Coinbase's `GET /products/{product_id}/candles` answers: its query, and
the buckets it selects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from candled.domain import Candle, SeriesKey, Timeframe
from candled_sim.coinbase.wire import (
    GRANULARITIES,
    MAX_CANDLES,
    NOT_FOUND,
    TOO_MANY_BUCKETS,
    UNSUPPORTED_GRANULARITY,
    refusal,
)
from candled_sim.truth import SIM_VENUE, Truth


@dataclass(frozen=True, slots=True)
class CandlesQuery:
    """A well-formed candles request: the series and its range of buckets."""

    series: SeriesKey
    first: datetime  # open time of the oldest bucket in range
    last: datetime  # open time of the newest bucket in range


def parse_candles_query(
    product_id: str, query: Mapping[str, str], truth: Truth, now: datetime
) -> CandlesQuery:
    """The request's parameters, or the `HttpError` (404, 400) Coinbase answers them with."""
    if truth.listing(product_id) is None:
        raise refusal(404, NOT_FOUND)
    try:
        timeframe = GRANULARITIES[int(query.get("granularity", ""))]
    except (ValueError, KeyError):
        raise refusal(400, UNSUPPORTED_GRANULARITY) from None
    tf = Timeframe.parse(timeframe)
    start, end = query.get("start"), query.get("end")
    if start is None or end is None:  # "both fields are ignored": the newest buckets
        last = tf.floor(now)
        return CandlesQuery(SeriesKey(SIM_VENUE, product_id, timeframe),
                            tf.add(last, 1 - MAX_CANDLES), last)  # fmt: skip
    first, last = tf.floor(_time(start, "start")), tf.floor(_time(end, "end"))
    if last < first:
        raise refusal(400, "start must be before end")
    if tf.count_bars(first, tf.next(last)) > MAX_CANDLES:
        raise refusal(400, TOO_MANY_BUCKETS)
    return CandlesQuery(SeriesKey(SIM_VENUE, product_id, timeframe), first, last)


def _time(text: str, name: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise refusal(400, f"Invalid {name}: expected an ISO 8601 time") from None
    # A time without an offset is taken as UTC.
    return ts.astimezone(UTC) if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def select_candles(truth: Truth, query: CandlesQuery, now: datetime) -> list[Candle]:
    """The traded buckets in range that have opened by `now`, newest first."""
    series, tf = query.series, query.series.tf
    stop = min(tf.next(query.last), tf.next(tf.floor(now)))
    return [
        truth.bar(series, ts) if tf.close_time(ts) <= now else truth.partial(series, ts, now)
        for ts in reversed(list(truth.opens(series, query.first, stop)))
        if truth.traded(series, ts)
    ]
