"""Encodings that several venues' wire formats share: epoch numbers, RFC 3339
text, decimal strings and a stand-in for the volume-weighted price.

Each venue's own shapes live in its package's `wire.py`; what is here has no
venue in it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from candled.domain import Candle
from candled.domain.timeframe import EPOCH


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch (Binance's times)."""
    return (ts - EPOCH) // timedelta(milliseconds=1)


def epoch_s(ts: datetime) -> int:
    """Whole seconds since the Unix epoch (Kraken's and Coinbase's times)."""
    return (ts - EPOCH) // timedelta(seconds=1)


def rfc3339(ts: datetime, digits: int = 0) -> str:
    """A UTC time as RFC 3339 text with `digits` fractional digits: 0
    (`2024-01-02T03:04:05Z`), 6 (microseconds) or 9 (nanoseconds, the last three 0)."""
    text = ts.strftime("%Y-%m-%dT%H:%M:%S")
    if digits == 0:
        return text + "Z"
    if digits not in (6, 9):
        raise ValueError(f"rfc3339: 0, 6 or 9 fractional digits, not {digits}")
    return f"{text}.{ts.microsecond:06d}{'000' if digits == 9 else ''}Z"


def decimal(value: float, places: int = 8) -> str:
    """A price or volume as the decimal string venues send (eight places by default)."""
    return f"{value:.{places}f}"


def typical_price(candle: Candle, digits: int) -> float:
    """A stand-in for a bar's volume-weighted price: the truth has no trades to
    average, and any price inside the bar's range will do."""
    return round((candle.high + candle.low + candle.close) / 3.0, digits)
