"""What Alpaca's `GET /v2/stocks/bars` and `GET /v2/stocks/{symbol}/bars` answer:
the query, and the page of bars it selects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

from candled.domain import Candle, SeriesKey, Timeframe
from candled_sim.alpaca import wire
from candled_sim.truth import SIM_VENUE, Truth

PARAMS = frozenset({"symbols", "timeframe", "start", "end", "limit", "feed", "adjustment",
                    "sort", "page_token", "asof", "currency"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class BarsQuery:
    """A well-formed bars request: symbols, timeframe, range, page size, order, token."""

    symbols: tuple[str, ...]  # in answer order
    tf: Timeframe
    start: datetime  # labels, both inclusive
    end: datetime
    limit: int
    descending: bool
    after: tuple[str, datetime] | None  # page_token: continue after this bar


def parse_bars_query(query: Mapping[str, str], symbols: list[str], now: datetime) -> BarsQuery:
    """The request's parameters, or the `HttpError` (400, 422) Alpaca answers them with."""
    unknown = sorted(set(query) - PARAMS)
    if unknown:
        raise wire.refusal(400, f"unexpected parameter: {unknown[0]}")
    if not symbols or not all(symbols):
        raise wire.refusal(400, "missing symbols")
    text = query.get("timeframe")
    if not text:
        raise wire.refusal(400, "missing timeframe")
    m = wire.TIMEFRAME.match(text)
    if m is None or not 1 <= int(m.group(1)) <= wire.MAX_AMOUNT[m.group(2)]:
        raise wire.refusal(422, "invalid timeframe")
    if text not in wire.SERVED:
        raise wire.refusal(422, f"the simulator serves no {text} bars")
    start = _time(query, "start", datetime.combine(now.date(), datetime.min.time(), UTC))
    end = _time(query, "end", now)
    if end < start:
        raise wire.refusal(422, "end should not be before start")
    limit_text = query.get("limit", str(wire.DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= wire.MAX_LIMIT:
        raise wire.refusal(422, "invalid limit: must be between 1 and 10000")
    _choice(query, "feed", wire.FEEDS)
    _choice(query, "adjustment", wire.ADJUSTMENTS)
    sort = _choice(query, "sort", ("asc", "desc"))
    after = None
    if "page_token" in query:
        after = wire.read_page_token(query["page_token"])
        if after is None:
            raise wire.refusal(422, "invalid page_token")
    return BarsQuery(tuple(sorted(set(symbols))), Timeframe.parse(wire.SERVED[text]),
                     start, end, int(limit_text), sort == "desc", after)  # fmt: skip


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = query.get(name, allowed[0])
    if value not in allowed:
        raise wire.refusal(422, f"invalid {name}: {value}")
    return value


def _time(query: Mapping[str, str], name: str, default: datetime) -> datetime:
    """An RFC 3339 time (a date alone means its midnight UTC)."""
    text = query.get(name)
    if text is None:
        return default
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise wire.refusal(422, f"invalid {name}: {text}") from None
    if ts.tzinfo is None:
        if len(text) != 10:  # RFC 3339 needs an offset; a plain date is accepted
            raise wire.refusal(422, f"invalid {name}: {text}")
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def _published(
    truth: Truth, series: SeriesKey, query: BarsQuery, now: datetime
) -> Iterator[Candle]:
    """The bars of one symbol in the query's range and order, as Alpaca has them now."""
    tf = series.tf
    current = tf.floor(now)
    # Labels of daily bars lie a few hours after the truth's open: one bar of slack.
    lo, hi = tf.add(tf.floor(query.start), -1), tf.next(min(query.end, now))
    opens = truth.opens_before(series, hi) if query.descending else truth.opens(series, lo, hi)
    for ts in opens:
        label = wire.label(tf, ts)
        if ts < lo or not query.start <= label <= query.end:
            if query.descending and ts < lo:
                return
            continue
        if truth.traded(series, ts):
            yield truth.partial(series, ts, now) if ts >= current else truth.bar(series, ts)


def select_bars(
    truth: Truth, query: BarsQuery, now: datetime
) -> tuple[dict[str, list[Candle]], tuple[str, datetime] | None]:
    """One page: bars by symbol, and the last bar's (symbol, label) when the page is full."""
    page: dict[str, list[Candle]] = {}
    room = query.limit
    for symbol in query.symbols:
        if query.after is not None and symbol < query.after[0]:
            continue  # pages before this one held it
        series = SeriesKey(SIM_VENUE, symbol, str(query.tf))
        rest = query
        if query.after is not None and symbol == query.after[0]:
            # Continue after the page's last bar (labels are whole seconds).
            step = timedelta(microseconds=1)
            mark = query.after[1]
            rest = (dataclasses.replace(query, end=mark - step) if query.descending
                    else dataclasses.replace(query, start=mark + step))  # fmt: skip
        taken = list(islice(_published(truth, series, rest, now), room))
        if taken:
            page[symbol] = taken
            room -= len(taken)
        if room == 0:
            return page, (symbol, wire.label(query.tf, taken[-1].ts))
    return page, None


def beyond(query: BarsQuery) -> tuple[str, datetime]:
    """A page's last bar beyond every bar of the query, a second further out
    than the query's range or the token it continues: never the same twice."""
    second = timedelta(seconds=1)
    if query.descending:
        mark = min(query.start, query.after[1]) if query.after is not None else query.start
        return query.symbols[-1], mark - second
    mark = max(query.end, query.after[1]) if query.after is not None else query.end
    return query.symbols[-1], mark + second
