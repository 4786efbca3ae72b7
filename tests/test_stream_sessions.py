"""Stream sessions, sans I/O: recorded frames in (tests/fixtures/), events out.

What the collector used to keep and the sessions keep now: which streams a
connection carries, the ids of messages the venue has not answered, the bars
still forming on a stream without a closed flag (Kraken: final when the next
bar opens), the sequence of closed bars (a skipped bar on a dense venue is a
gap to fetch at once), the login. No sockets: each test feeds frames to a
session and reads the events it returns.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from candled.domain import Candle, SeriesKey
from candled.venues import (
    ClosedBars,
    Credentials,
    Foreign,
    Gap,
    Heartbeat,
    LoggedIn,
    Refusal,
    Reply,
    StreamEvent,
    StreamFault,
    Subscribed,
)
from candled.venues.alpaca import AlpacaCodec
from candled.venues.binance import BinanceCodec
from candled.venues.kraken import KrakenCodec
from candled.venues.stream import STREAMS_PER_MESSAGE

FIXTURES = Path(__file__).parent / "fixtures"
BINANCE = BinanceCodec().stream
KRAKEN = KrakenCodec().stream
ALPACA = AlpacaCodec("alpaca", Credentials("AKTESTKEY", "not-a-real-secret")).stream
BTC_1M = SeriesKey("binance", "BTCUSDT", "1m")
ETH_1S = SeriesKey("binance", "ETHUSDT", "1s")
ALGO_5M = SeriesKey("kraken", "ALGO/USD", "5m")
MATIC_5M = SeriesKey("kraken", "MATIC/USD", "5m")
SPY_1M = SeriesKey("alpaca", "SPY", "1m")
T0 = datetime(2024, 1, 1, tzinfo=UTC)  # the Binance fixtures' bar


def fixture(kind: str, name: str) -> Any:
    return json.loads((FIXTURES / kind / name).read_text())


def bars(events: list[StreamEvent]) -> list[Candle]:
    return [c for e in events if isinstance(e, ClosedBars) for c in e.candles]


def gaps(events: list[StreamEvent]) -> list[Gap]:
    return [e for e in events if isinstance(e, Gap)]


# --- Binance: closed flags, replies by id ---------------------------------------------


def kline(ts: datetime, *, closed: bool = True, series: SeriesKey = BTC_1M) -> str:
    """The recorded closed kline frame, moved to the bar opening at `ts`."""
    frame = fixture("binance", "stream_kline_closed.json")
    k = frame["data"]["k"]
    k["t"] = int(ts.timestamp() * 1000)
    k["x"] = closed
    k["s"], k["i"] = series.symbol, series.timeframe
    frame["stream"] = BINANCE.stream_name(series)
    return json.dumps(frame)


def test_replies_awaited_and_data_make_a_session_ready() -> None:
    session = BINANCE.session([BTC_1M])
    assert session.carries(BTC_1M) and not session.ready  # no data yet
    session.subscribe([ETH_1S])
    assert session.awaiting == {1}
    assert session.receive(kline(T0, closed=False)) == [Heartbeat()]
    assert not session.ready  # the subscribe is not answered yet
    assert session.receive(json.dumps(fixture("binance", "subscribe_reply.json"))) == [Reply(1)]
    assert session.ready


def test_a_refused_request_is_answered_too() -> None:
    session = BINANCE.session()
    session.subscribe([BTC_1M])
    for _ in range(6):
        session.subscribe([ETH_1S])
    (reply,) = session.receive(json.dumps(fixture("binance", "method_error_reply.json")))
    assert isinstance(reply, Reply) and reply.request_id == 7 and reply.error
    assert 7 not in session.awaiting and session.awaiting == {1, 2, 3, 4, 5, 6}


def test_many_streams_take_several_messages_each_with_its_id() -> None:
    keys = [SeriesKey("binance", f"S{i}USDT", "1m") for i in range(STREAMS_PER_MESSAGE + 1)]
    keys.append(ETH_1S)
    session = BINANCE.session()
    messages = [json.loads(m) for m in session.subscribe(keys)]
    assert [(m["id"], len(m["params"])) for m in messages] == [
        (1, STREAMS_PER_MESSAGE), (2, 1), (3, 1)
    ]  # fmt: skip
    assert session.awaiting == {1, 2, 3} and all(session.carries(k) for k in keys)


def test_streams_unsubscribed_are_foreign_at_once_and_ours_again_when_subscribed() -> None:
    session = BINANCE.session([BTC_1M, ETH_1S])
    session.unsubscribe([BTC_1M])
    assert not session.carries(BTC_1M) and session.streams == [ETH_1S]
    # A push already under way: alive, not ours to forward.
    assert session.receive(kline(T0)) == [Foreign(1)]
    session.subscribe([BTC_1M])
    assert bars(session.receive(kline(T0 + timedelta(minutes=1)))) != []


def test_a_skipped_bar_on_a_dense_venue_is_a_gap() -> None:
    session = BINANCE.session([BTC_1M])
    first = session.receive(kline(T0))
    assert gaps(first) == [Gap(BTC_1M, None, T0)]  # a stream's first bar: always said
    assert gaps(session.receive(kline(T0 + timedelta(minutes=1)))) == []
    # The close of 00:02 was lost: 00:03 says so.
    later = session.receive(kline(T0 + timedelta(minutes=3)))
    assert later[0] == Gap(BTC_1M, T0 + timedelta(minutes=2), T0 + timedelta(minutes=3))
    assert bars(later)[0].ts == T0 + timedelta(minutes=3)
    # A bar again (the rotation's overlap): neither a gap nor a step back.
    assert gaps(session.receive(kline(T0 + timedelta(minutes=1)))) == []
    assert gaps(session.receive(kline(T0 + timedelta(minutes=4)))) == []


def test_the_sequence_carries_over_a_reconnect() -> None:
    last_closed: dict[SeriesKey, datetime] = {}
    BINANCE.session([BTC_1M], last_closed=last_closed).receive(kline(T0))
    # The next connection's first bar is checked against the last one before it.
    after = BINANCE.session([BTC_1M], last_closed=last_closed).receive(
        kline(T0 + timedelta(minutes=5))
    )
    assert gaps(after) == [Gap(BTC_1M, T0 + timedelta(minutes=1), T0 + timedelta(minutes=5))]
    # A session of its own knows nothing before its first bar.
    alone = BINANCE.session([BTC_1M]).receive(kline(T0 + timedelta(minutes=5)))
    assert gaps(alone) == [Gap(BTC_1M, None, T0 + timedelta(minutes=5))]


# --- Kraken: no closed flag, a bar is final when the next opens --------------------


def ohlc(*entries: tuple[SeriesKey, datetime, float], kind: str = "update") -> str:
    """The recorded update frame with one entry per (series, open, close price)."""
    frame = fixture("kraken", "ws_ohlc_update.json")
    template = frame["data"][0]
    frame["type"], frame["data"] = kind, []
    for series, ts, close in entries:
        entry = copy.deepcopy(template)
        entry.update(symbol=series.symbol, interval_begin=ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     close=close, high=max(close, entry["high"]))  # fmt: skip
        frame["data"].append(entry)
    return json.dumps(frame)


K0 = datetime(2023, 10, 4, 16, 25, tzinfo=UTC)
K1, K2 = K0 + timedelta(minutes=5), K0 + timedelta(minutes=10)


def kraken_session(*keys: SeriesKey) -> Any:
    session = KRAKEN.session()
    session.subscribe(keys)
    return session


def test_a_bar_is_final_with_its_last_values_when_the_next_one_opens() -> None:
    session = kraken_session(MATIC_5M)
    assert session.receive(ohlc((MATIC_5M, K0, 0.5627))) == [Heartbeat()]
    assert session.receive(ohlc((MATIC_5M, K0, 0.5631))) == [Heartbeat()]  # still forming
    events = session.receive(ohlc((MATIC_5M, K1, 0.5640)))
    (closed,) = bars(events)
    assert (closed.ts, closed.close) == (K0, 0.5631)  # the last update's values
    # A late update of the bar already closed changes nothing.
    assert session.receive(ohlc((MATIC_5M, K0, 0.9999))) == [Heartbeat()]
    (closed,) = bars(session.receive(ohlc((MATIC_5M, K2, 0.5650))))
    assert (closed.ts, closed.close) == (K1, 0.5640)


def test_forming_bars_are_per_series_and_per_session() -> None:
    session = kraken_session(MATIC_5M, ALGO_5M)
    session.receive(ohlc((MATIC_5M, K0, 1.0), (ALGO_5M, K0, 2.0)))
    # ALGO's next bar closes ALGO's, not MATIC's.
    assert [(c.series, c.ts) for c in bars(session.receive(ohlc((ALGO_5M, K1, 2.1))))] == [
        (ALGO_5M, K0)
    ]
    # Another connection holds nothing from this one: its first bar closes none.
    assert bars(kraken_session(MATIC_5M).receive(ohlc((MATIC_5M, K1, 1.1)))) == []


def test_a_snapshot_closes_all_but_its_newest_bar() -> None:
    session = kraken_session(ALGO_5M)
    events = session.receive(json.dumps(fixture("kraken", "ws_ohlc_snapshot.json")))
    begin = datetime(2023, 10, 4, 15, 25, tzinfo=UTC)
    assert [c.ts for c in bars(events)] == [begin]
    assert gaps(events) == [Gap(ALGO_5M, None, begin)]


def test_unsubscribing_forgets_the_bar_forming() -> None:
    session = kraken_session(MATIC_5M)
    session.receive(ohlc((MATIC_5M, K0, 1.0)))
    session.unsubscribe([MATIC_5M])
    assert session.receive(ohlc((MATIC_5M, K1, 1.1))) == [Foreign(1)]
    session.subscribe([MATIC_5M])
    # Subscribed again: the old bar's values are stale, and never sent as final.
    assert session.receive(ohlc((MATIC_5M, K2, 1.2))) == [Heartbeat()]


def test_a_frame_of_pairs_not_carried_and_ours_forwards_ours() -> None:
    session = kraken_session(MATIC_5M)
    session.receive(ohlc((MATIC_5M, K0, 1.0)))
    events = session.receive(ohlc((ALGO_5M, K1, 2.0), (MATIC_5M, K1, 1.1)))
    assert events[0] == Foreign(1) and [c.series for c in bars(events)] == [MATIC_5M]


def test_skipped_bars_on_a_sparse_venue_are_no_gap() -> None:
    session = kraken_session(MATIC_5M)
    session.receive(ohlc((MATIC_5M, K0, 1.0)))
    first = session.receive(ohlc((MATIC_5M, K1, 1.1)))
    assert gaps(first) == [Gap(MATIC_5M, None, K0)]
    # 16:30 closed, then nothing traded until 16:45: the heal cycle judges 16:35-16:40.
    session.receive(ohlc((MATIC_5M, K0 + timedelta(minutes=20), 1.2)))
    assert gaps(session.receive(ohlc((MATIC_5M, K0 + timedelta(minutes=25), 1.3)))) == []


def test_every_symbol_ack_answers_the_one_request() -> None:
    session = kraken_session(ALGO_5M, MATIC_5M)
    ack = json.dumps(fixture("kraken", "ws_subscribe_ack.json"))
    assert session.receive(ack) == [Reply(1)] and session.awaiting == frozenset()
    assert session.receive(ack) == [Reply(1)]  # the second symbol's ack: nothing left to await


# --- Alpaca: a login, answers without ids, errors that decide ----------------------


def alpaca_frame(name: str) -> str:
    return (FIXTURES / "alpaca" / name).read_text()


def test_the_login_comes_first_and_its_answer_logs_in() -> None:
    session = ALPACA.session()
    assert not session.logged_in
    (auth,) = session.login()
    assert json.loads(auth)["action"] == "auth"
    assert session.receive(alpaca_frame("stream_connected.json")) == []
    assert not session.logged_in
    assert session.receive(alpaca_frame("stream_authenticated.json")) == [LoggedIn()]
    assert session.logged_in


def test_subscriptions_await_no_id_and_are_confirmed() -> None:
    session = ALPACA.session()
    session.subscribe([SPY_1M])
    assert session.awaiting == frozenset()
    assert session.receive(alpaca_frame("stream_subscription.json")) == [Subscribed()]
    session.receive(alpaca_frame("stream_bar.json"))
    assert session.ready


def test_the_gravest_error_of_a_frame_is_the_refusal() -> None:
    frame = json.dumps([{"T": "error", "code": 406, "msg": "connection limit exceeded"},
                        {"T": "error", "code": 402, "msg": "auth failed"}])  # fmt: skip
    (refusal,) = ALPACA.session().receive(frame)
    assert isinstance(refusal, Refusal) and refusal.error.fault is StreamFault.KEY_REFUSED


def test_a_skipped_minute_is_no_gap_on_alpaca() -> None:
    session = ALPACA.session()
    session.subscribe([SPY_1M])
    bar = json.loads(alpaca_frame("stream_bar.json"))
    first = session.receive(json.dumps(bar))
    assert gaps(first) == [Gap(SPY_1M, None, datetime(2021, 2, 22, 19, 15, tzinfo=UTC))]
    bar[0]["t"] = "2021-02-22T19:20:00Z"  # minutes without trades have no bar
    assert gaps(session.receive(json.dumps(bar))) == []


@pytest.mark.parametrize("stream", [BINANCE, KRAKEN, ALPACA], ids=lambda s: s.venue)
def test_text_that_is_no_frame_never_raises(stream: Any) -> None:
    session = stream.session()
    for text in ("", "\x00", "[" * 10_000, '{"a": ' * 2000, "null", "[]", "{}"):
        assert isinstance(session.receive(text), list)
