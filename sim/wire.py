"""Binance's JSON shapes, written by the simulated exchange.

Kept apart from the codec on purpose: the sim encodes from the documentation,
the codec decodes from it, and the tests check that the two meet.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import EPOCH, SUPPORTED

_STREAM = re.compile(r"^([a-z0-9]+)@kline_([0-9]+[smhdwM])$")
SIM_VENUE = "sim"  # venue name of series inside the sim; only symbol and timeframe matter


def ms(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(milliseconds=1)


def _dec(x: float) -> str:
    return f"{x:.8f}"


def _close_ms(candle: Candle) -> int:
    # Binance's close time is the last millisecond inside the bar.
    return ms(candle.series.tf.close_time(candle.ts)) - 1


def _trades(candle: Candle) -> int:
    return int(candle.volume * candle.close / 40.0)  # about one trade per 40 quote units


def kline_row(candle: Candle) -> list[Any]:
    """One row of `GET /api/v3/klines`."""
    quote = candle.volume * (candle.open + candle.close) / 2.0
    return [
        ms(candle.ts),
        _dec(candle.open),
        _dec(candle.high),
        _dec(candle.low),
        _dec(candle.close),
        _dec(candle.volume),
        _close_ms(candle),
        _dec(quote),
        _trades(candle),
        _dec(candle.volume / 2.0),
        _dec(quote / 2.0),
        "0",
    ]


def kline_event(candle: Candle, closed: bool, event_time: datetime) -> dict[str, Any]:
    """A `<symbol>@kline_<interval>` stream event."""
    quote = candle.volume * (candle.open + candle.close) / 2.0
    symbol = candle.series.symbol
    trades = _trades(candle)
    return {
        "e": "kline",
        "E": ms(event_time),
        "s": symbol,
        "k": {
            "t": ms(candle.ts),
            "T": _close_ms(candle),
            "s": symbol,
            "i": candle.series.timeframe,
            "f": 100 if trades else -1,  # -1: no trades in the bar
            "L": 99 + trades if trades else -1,
            "o": _dec(candle.open),
            "c": _dec(candle.close),
            "h": _dec(candle.high),
            "l": _dec(candle.low),
            "v": _dec(candle.volume),
            "n": trades,
            "x": closed,
            "q": _dec(quote),
            "V": _dec(candle.volume / 2.0),
            "Q": _dec(quote / 2.0),
            "B": "0",
        },
    }


def error_body(code: int, msg: str) -> dict[str, Any]:
    return {"code": code, "msg": msg}


def stream_series(name: str) -> SeriesKey | None:
    """The series of a kline stream name such as `btcusdt@kline_1m`, if it is one."""
    m = _STREAM.match(name)
    if m is None or m.group(2) not in SUPPORTED:
        return None
    return SeriesKey(SIM_VENUE, m.group(1).upper(), m.group(2))
