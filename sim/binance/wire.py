"""Binance's JSON shapes, written by the simulated exchange.

Kept apart from the codec on purpose: the sim encodes from the documentation,
the codec decodes from it, and the tests check that the two meet.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import EPOCH, SUPPORTED
from candled_sim.encoding import decimal, epoch_ms
from candled_sim.http import HttpError
from candled_sim.truth import SIM_VENUE

_STREAM = re.compile(r"^([a-z0-9]+)@kline_([0-9]+[smhdwM])$")


def _close_ms(candle: Candle) -> int:
    # Binance's close time is the last millisecond inside the bar.
    return epoch_ms(candle.series.tf.close_time(candle.ts)) - 1


def _trades(candle: Candle) -> int:
    return int(candle.volume * candle.close / 40.0)  # about one trade per 40 quote units


def kline_row(candle: Candle) -> list[Any]:
    """One row of `GET /api/v3/klines`."""
    quote = candle.volume * (candle.open + candle.close) / 2.0
    return [
        epoch_ms(candle.ts),
        decimal(candle.open),
        decimal(candle.high),
        decimal(candle.low),
        decimal(candle.close),
        decimal(candle.volume),
        _close_ms(candle),
        decimal(quote),
        _trades(candle),
        decimal(candle.volume / 2.0),
        decimal(quote / 2.0),
        "0",
    ]


def kline_event(candle: Candle, closed: bool, event_time: datetime) -> dict[str, Any]:
    """A `<symbol>@kline_<interval>` stream event."""
    quote = candle.volume * (candle.open + candle.close) / 2.0
    symbol = candle.series.symbol
    trades = _trades(candle)
    return {
        "e": "kline",
        "E": epoch_ms(event_time),
        "s": symbol,
        "k": {
            "t": epoch_ms(candle.ts),
            "T": _close_ms(candle),
            "s": symbol,
            "i": candle.series.timeframe,
            "f": 100 if trades else -1,  # -1: no trades in the bar
            "L": 99 + trades if trades else -1,
            "o": decimal(candle.open),
            "c": decimal(candle.close),
            "h": decimal(candle.high),
            "l": decimal(candle.low),
            "v": decimal(candle.volume),
            "n": trades,
            "x": closed,
            "q": decimal(quote),
            "V": decimal(candle.volume / 2.0),
            "Q": decimal(quote / 2.0),
            "B": "0",
        },
    }


# Stands for the event time in a frame encoded ahead of it: no other value of
# a kline event is a negative number this long.
_EVENT_TIME_MARK = -(1 << 62) - 7


def kline_frame(candle: Candle, closed: bool, stream: str | None = None) -> tuple[str, str]:
    """A kline event's JSON text (in the combined wrapper when `stream` names
    it) encoded ahead of its event time, as the text before and after it:
    `head + str(epoch_ms(event_time)) + tail` is `json.dumps` of the event."""
    event = kline_event(candle, closed, EPOCH)
    event["E"] = _EVENT_TIME_MARK
    payload = event if stream is None else {"stream": stream, "data": event}
    head, tail = json.dumps(payload).split(str(_EVENT_TIME_MARK))
    return head, tail


def refusal(
    code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None
) -> HttpError:
    """Binance's error answer: `{"code": <negative code>, "msg": ...}`."""
    return HttpError(status, {"code": code, "msg": msg}, headers)


def stream_series(name: str) -> SeriesKey | None:
    """The series of a kline stream name such as `btcusdt@kline_1m`, if it is one."""
    m = _STREAM.match(name)
    if m is None or m.group(2) not in SUPPORTED:
        return None
    return SeriesKey(SIM_VENUE, m.group(1).upper(), m.group(2))
