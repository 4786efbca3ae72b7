"""Fuzzing the venue codecs: whatever a venue sends, a parser answers with a
parsed result or its own malformed-input answer, never another exception.

Anything else (OverflowError from a timestamp in year 10000, RecursionError from
JSON nested 5,000 deep, ValueError from int parsing limits) would escape the
drivers, which count and skip only the codec's answers, and restart the whole
venue. The inputs: arbitrary JSON values; the recorded fixtures in
tests/fixtures/ with values mutated (huge, negative and non-finite numbers,
strings for numbers, timestamps at the ends of the datetime range, deep
nesting, keys removed); raw and non-UTF-8 bytes; truncations of the fixtures.

`make test` runs a bounded number of examples per test; `make fuzz` many more
(the `fuzz` profile, registered in tests/conftest.py).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from candled.domain import Candle, SeriesKey
from candled.validate import problem
from candled.venues import (
    ClosedBars,
    CodecError,
    Credentials,
    Foreign,
    Gap,
    Heartbeat,
    LoggedIn,
    Malformed,
    RateFacts,
    Refusal,
    Reply,
    StreamCodec,
    Subscribed,
    VenueCodec,
    VenueError,
    get_codec,
)

FIXTURES = Path(__file__).parent / "fixtures"
# A bounded run in `make test`, unless a profile with more (HYPOTHESIS_PROFILE=fuzz) is loaded.
FUZZ = settings(
    max_examples=max(200, settings.default.max_examples),
    deadline=None,  # a shared, busy machine: slow is not wrong
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
# Clocks a parser may be handed: today, and the ends of what a datetime holds
# (every bar before the last one has closed at the far end).
NOWS = st.sampled_from(
    [NOW, datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)]
)
STATUSES = st.one_of(st.just(200), st.sampled_from([400, 401, 403, 404, 418, 429, 500, 503]),
                     st.integers(100, 599))  # fmt: skip


def codec_of(kind: str) -> VenueCodec:
    return get_codec(kind, kind, Credentials("key", "secret"))


@dataclass(frozen=True)
class Seed:
    """A recorded payload and the series it answers."""

    kind: str
    file: str
    timeframe: str = "1m"
    symbol: str = "X"

    @property
    def body(self) -> bytes:
        return (FIXTURES / self.kind / self.file).read_bytes()

    @property
    def series(self) -> SeriesKey:
        return SeriesKey(self.kind, self.symbol, self.timeframe)


REST_SEEDS = {
    "binance": [Seed("binance", "klines_btcusdt_1m.json", symbol="BTCUSDT"),
                Seed("binance", "error_invalid_symbol.json")],
    "coinbase": [Seed("coinbase", "candles_btc_usd_1m.json", symbol="BTC-USD"),
                 Seed("coinbase", "candles_eth_usd_1m_recorded.json", symbol="ETH-USD"),
                 Seed("coinbase", "candles_docs_example.json", "1d", "BTC-USD"),
                 Seed("coinbase", "error_not_found.json")],
    "kraken": [Seed("kraken", "ohlc_xbtusd_1m.json", symbol="XBT/USD"),
               Seed("kraken", "error_too_many_requests.json"),
               Seed("kraken", "error_unknown_pair.json")],
    "alpaca": [Seed("alpaca", "bars_aapl_1min.json", symbol="AAPL"),
               Seed("alpaca", "bars_aapl_1day.json", "1d", "AAPL"),
               Seed("alpaca", "bars_aapl_page.json", symbol="AAPL"),
               Seed("alpaca", "bars_empty.json", symbol="AAPL"),
               Seed("alpaca", "error_invalid_timeframe.json")],
    "oanda": [Seed("oanda", "candles_eur_usd_m1.json", symbol="EUR_USD"),
              Seed("oanda", "candles_eur_usd_h1_ba.json", "1h", "EUR_USD"),
              Seed("oanda", "candles_de30_eur_m5.json", "5m", "DE30_EUR"),
              Seed("oanda", "error_invalid_instrument.json")],
}  # fmt: skip
# Coinbase and OANDA have no candle stream: their live bars are polled.
FRAME_SEEDS = {
    kind: [Seed(kind, p.name) for p in sorted((FIXTURES / kind).glob("*.json"))
           if p.name.startswith(("stream_", "ws_", "raw_", "subscribe_", "method_"))]
    for kind in ("binance", "kraken", "alpaca")
}  # fmt: skip
# The streams of the fixtures' series: a session carrying them turns their bars
# into closed bars (whatever a mutation does to them, they are parsed first).
FRAME_STREAMS = {
    "binance": [SeriesKey("binance", s, tf) for s in ("BTCUSDT", "ETHUSDT") for tf in ("1s", "1m")],
    "kraken": [SeriesKey("kraken", s, tf) for s in ("ALGO/USD", "MATIC/USD") for tf in ("1m", "5m")],
    "alpaca": [SeriesKey("alpaca", s, "1m") for s in ("AAPL", "SPY")],
}  # fmt: skip
EVENTS = (ClosedBars, Heartbeat, Gap, Reply, Refusal, LoggedIn, Subscribed, Malformed, Foreign)


# --- what a parser may answer ----------------------------------------------


def check_candle(candle: Candle, now: datetime) -> None:
    """A candle the drivers can use: its bar's close exists, its numbers are finite
    floats, and the validator judges it without raising."""
    assert isinstance(candle, Candle)
    assert candle.ts.utcoffset() == timedelta(0)
    candle.series.tf.close_time(candle.ts)  # the collector and the healer compute it
    values = (candle.open, candle.high, candle.low, candle.close, candle.volume)
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert problem(candle, now) is None or isinstance(problem(candle, now), str)


def check_history(kind: str, series: SeriesKey, status: int, body: bytes, now: datetime) -> None:
    try:
        candles = codec_of(kind).parse_history(series, status, body, now)
    except (CodecError, VenueError):  # RateLimitedAnswer is a VenueError
        return
    assert isinstance(candles, list)
    for candle in candles:
        check_candle(candle, now)
        assert candle.series == series


def stream_of(kind: str) -> StreamCodec:
    stream = codec_of(kind).stream
    assert stream is not None
    return stream


def check_frame(kind: str, text: str) -> None:
    session = stream_of(kind).session()
    session.subscribe(FRAME_STREAMS[kind])
    # Twice: the second time meets the state the first left (bars forming,
    # each series' last closed bar, replies awaited).
    for _ in range(2):
        events = session.receive(text)
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, EVENTS)
            if isinstance(event, ClosedBars):
                for candle in event.candles:
                    check_candle(candle, NOW)
            elif isinstance(event, Reply):
                assert event.error is None or isinstance(event.error, str)


# --- inputs ------------------------------------------------------------------


class Raw:
    """JSON text put verbatim where a value goes: what `json.dumps` cannot write
    (nesting deeper than Python recursion, integers past the 4,300-digit limit)."""

    def __init__(self, text: str) -> None:
        self.text = text


def nested(depth: int, inner: str = "1") -> Raw:
    return Raw("[" * depth + inner + "]" * depth)


# Values at the edges: beyond datetime's range as milliseconds or seconds, past
# float's range, non-finite, strings where numbers go and numbers as strings.
EDGE_VALUES: list[object] = [
    0, -1, -(10**18), 10**18, 10**18 * 1000, 2**63, 2**64, 10**400, -(10**400), 10**20,
    253_402_300_740, 253_402_300_740_000, 253_402_214_400, 253_402_214_400_000,
    -62_135_596_800, -62_135_596_800_000,  # 0001-01-01 in seconds and milliseconds
    1e308, -1e308, 5e-324, -0.0, math.nan, math.inf, -math.inf,
    True, False, None, "", "0", "-1", "1e400", "-1e400", "nan", "inf", "NaN", "1_000",
    "9" * 400, " 1 ", "\x00", "\ud800", "\u0663", "0x10",
    "9999-12-31T23:59:00Z", "9999-12-31T00:00:00.000000000Z", "9999-12-31T23:55:00Z",
    "0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000000Z", "0000-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z", "2024-01-01T00:00:60Z",
    [], {}, [[[]]], {"": {"": None}},
    Raw("9" * 5000), Raw("-" + "9" * 5000), Raw("1e99999"), Raw("-1e99999"),
    Raw("1" + "0" * 400 + ".5"), Raw("NaN"), Raw("Infinity"),
    nested(900), nested(990), nested(1000), nested(5000), nested(50_000),
    Raw("{" + '"a":{' * 3000 + "}" * 3001),
]  # fmt: skip

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400),
    st.floats(), st.text(max_size=20), st.sampled_from(EDGE_VALUES),
)  # fmt: skip
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(
            st.text(max_size=4) | st.sampled_from(list("tohlcvxsiTSe")), inner, max_size=6
        )
    ),
    max_leaves=25,
)
NASTY = st.one_of(st.sampled_from(EDGE_VALUES), JSON_VALUES,
                  st.integers(0, 60_000).map(nested))  # fmt: skip


def dumps(value: object) -> str:
    """JSON text of `value`, with each `Raw` put in verbatim."""
    raws: list[str] = []

    def placeholder(v: object) -> Any:
        if isinstance(v, Raw):
            raws.append(v.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(v, list):
            return [placeholder(x) for x in v]
        if isinstance(v, dict):
            return {k: placeholder(x) for k, x in v.items()}
        return v

    text = json.dumps(placeholder(value))
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw)
    return text


def paths(doc: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document, the root first."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from paths(value, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, seed_bytes: bytes) -> str:
    """The seed's JSON with one to three places replaced, removed or added to."""
    doc = json.loads(seed_bytes)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths(doc))))
        value = copy.deepcopy(draw(NASTY))  # later mutations must not edit EDGE_VALUES
        if not path:
            doc = value
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = value
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, list):
            parent.insert(path[-1], value)
        else:
            parent[draw(st.text(max_size=3))] = value
    return dumps(doc)


@st.composite
def damaged(draw: st.DrawFn, seed_bytes: bytes) -> bytes:
    """The seed cut short, or with bytes changed to ones that are not UTF-8."""
    if draw(st.booleans()):
        return seed_bytes[: draw(st.integers(0, len(seed_bytes) - 1))]
    at = draw(st.integers(0, len(seed_bytes)))
    bad = draw(
        st.sampled_from(
            [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\xef\xbb\xbf"]
        )
        | st.binary(min_size=1, max_size=4)
    )
    return seed_bytes[:at] + bad + seed_bytes[at + draw(st.integers(0, 2)):]  # fmt: skip


# --- REST history ----------------------------------------------------------

REST_KINDS = sorted(REST_SEEDS)


@pytest.mark.parametrize("kind", REST_KINDS)
@FUZZ
@given(data=st.data(), value=JSON_VALUES, status=STATUSES, now=NOWS)
def test_history_of_arbitrary_json(
    kind: str, data: st.DataObject, value: object, status: int, now: datetime
) -> None:
    seed = data.draw(st.sampled_from(REST_SEEDS[kind]))
    check_history(kind, seed.series, status, dumps(value).encode(), now)


@pytest.mark.parametrize("kind", REST_KINDS)
@FUZZ
@given(data=st.data(), now=NOWS)
def test_history_of_mutated_fixtures(kind: str, data: st.DataObject, now: datetime) -> None:
    seed = data.draw(st.sampled_from(REST_SEEDS[kind]))
    body = data.draw(mutated(seed.body)).encode("utf-8", "surrogatepass")
    status = data.draw(st.just(200) | STATUSES)
    check_history(kind, seed.series, status, body, now)


@pytest.mark.parametrize("kind", REST_KINDS)
@FUZZ
@given(data=st.data(), body=st.binary(max_size=300), status=STATUSES)
def test_history_of_raw_bytes(kind: str, data: st.DataObject, body: bytes, status: int) -> None:
    seed = data.draw(st.sampled_from(REST_SEEDS[kind]))
    check_history(kind, seed.series, status, body, NOW)


@pytest.mark.parametrize("kind", REST_KINDS)
@FUZZ
@given(data=st.data(), status=STATUSES)
def test_history_of_truncated_and_damaged_fixtures(
    kind: str, data: st.DataObject, status: int
) -> None:
    seed = data.draw(st.sampled_from(REST_SEEDS[kind]))
    check_history(kind, seed.series, status, data.draw(damaged(seed.body)), NOW)


@pytest.mark.parametrize("kind", REST_KINDS)
@pytest.mark.parametrize("value", EDGE_VALUES, ids=lambda v: dumps(v)[:24])
def test_history_with_each_edge_value_in_each_place(kind: str, value: object) -> None:
    # Exhaustive where hypothesis samples: every edge value at every place of every seed.
    for seed in REST_SEEDS[kind]:
        doc = json.loads(seed.body)
        for path in paths(doc):
            body = dumps(_replaced(doc, path, value)).encode("utf-8", "surrogatepass")
            for now in (NOW, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)):
                check_history(kind, seed.series, 200, body, now)


@pytest.mark.parametrize("kind", REST_KINDS)
@pytest.mark.parametrize("depth", [500, 900, 950, 980, 990, 995, 1000, 1100, 5000, 100_000])
def test_history_of_deep_nesting(kind: str, depth: int) -> None:
    for body in ("[" * depth + "]" * depth, "[" * depth, '{"a":' * depth + "1" + "}" * depth):
        for status in (200, 400, 429):
            check_history(kind, REST_SEEDS[kind][0].series, status, body.encode(), NOW)


def _replaced(doc: Any, path: tuple[Any, ...], value: object) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(doc))
    parent = copy
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return copy


# --- stream frames -----------------------------------------------------------

FRAME_KINDS = sorted(FRAME_SEEDS)
# What the collector hands a session: text, bytes decoded with replacement.
SURROGATES = st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=40)


@pytest.mark.parametrize("kind", FRAME_KINDS)
@FUZZ
@given(value=JSON_VALUES)
def test_frame_of_arbitrary_json(kind: str, value: object) -> None:
    check_frame(kind, dumps(value))


@pytest.mark.parametrize("kind", FRAME_KINDS)
@FUZZ
@given(data=st.data())
def test_frame_of_mutated_fixtures(kind: str, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(FRAME_SEEDS[kind]))
    check_frame(kind, data.draw(mutated(seed.body)))


@pytest.mark.parametrize("kind", FRAME_KINDS)
@FUZZ
@given(raw=st.binary(max_size=300), text=SURROGATES)
def test_frame_of_raw_bytes_and_text(kind: str, raw: bytes, text: str) -> None:
    check_frame(kind, raw.decode("utf-8", "replace"))
    check_frame(kind, text)


@pytest.mark.parametrize("kind", FRAME_KINDS)
@FUZZ
@given(data=st.data())
def test_frame_of_truncated_and_damaged_fixtures(kind: str, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(FRAME_SEEDS[kind]))
    check_frame(kind, data.draw(damaged(seed.body)).decode("utf-8", "replace"))


@pytest.mark.parametrize("kind", FRAME_KINDS)
@pytest.mark.parametrize("value", EDGE_VALUES, ids=lambda v: dumps(v)[:24])
def test_frame_with_each_edge_value_in_each_place(kind: str, value: object) -> None:
    for seed in FRAME_SEEDS[kind]:
        doc = json.loads(seed.body)
        for path in paths(doc):
            check_frame(kind, dumps(_replaced(doc, path, value)))


@pytest.mark.parametrize("kind", FRAME_KINDS)
@pytest.mark.parametrize("depth", [500, 900, 950, 980, 990, 995, 1000, 1100, 5000, 100_000])
def test_frame_of_deep_nesting(kind: str, depth: int) -> None:
    for text in ("[" * depth + "]" * depth, "[" * depth, '{"a":' * depth + "1" + "}" * depth):
        check_frame(kind, text)


# --- rate facts (response headers) --------------------------------------------

HEADER_NAMES = st.sampled_from(["x-mbx-used-weight-1m", "X-MBX-USED-WEIGHT-1M", "retry-after",
                                "Retry-After", "x-ratelimit-limit", "x-ratelimit-remaining",
                                "X-RateLimit-Reset"]) | st.text(max_size=8)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.text(max_size=30), st.integers().map(str), st.floats().map(str),
    st.sampled_from(["9" * 5000, "-1", "1e400", "nan", " 7 ", "\u00b2", "\u0663", "1_0", ""]),
)  # fmt: skip


@pytest.mark.parametrize("kind", REST_KINDS)
@FUZZ
@given(status=STATUSES, headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=5))
@example(status=200, headers={"x-ratelimit-limit": "9" * 5000, "x-ratelimit-remaining": "1"})
@example(status=200, headers={"x-ratelimit-limit": "\u00b2", "x-ratelimit-remaining": "1"})
def test_rate_facts_of_any_headers(kind: str, status: int, headers: dict[str, str]) -> None:
    facts = codec_of(kind).rate_facts(status, headers)
    assert isinstance(facts, RateFacts)
    assert facts.used_weight is None or facts.used_weight >= 0
    assert facts.retry_after_s is None or (
        math.isfinite(facts.retry_after_s) and facts.retry_after_s >= 0
    )
