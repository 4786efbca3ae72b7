"""OANDA v20's JSON shapes, written by the simulated exchange.

Kept apart from the codec on purpose: the sim encodes from the documentation
(https://developer.oanda.com/rest-live-v20/instrument-ep/,
https://developer.oanda.com/rest-live-v20/instrument-df/,
https://developer.oanda.com/rest-live-v20/troubleshooting-errors/), the codec
decodes from it, and the tests check that the two meet.

The truth's prices are mid prices; bid and ask lie half a spread below and
above. OANDA's `volume` is the number of prices in the interval, an integer:
the sim derives it from the truth's volume (`tick_volume`), so a store filled
from OANDA holds `as_published(bar)`, not the truth's bar itself.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from candled.domain import Candle
from candled_sim.encoding import decimal, rfc3339
from candled_sim.http import HttpError

# Every documented granularity; the sim serves those with a domain timeframe.
GRANULARITIES = (
    "S5", "S10", "S15", "S30", "M1", "M2", "M4", "M5", "M10", "M15", "M30",
    "H1", "H2", "H3", "H4", "H6", "H8", "H12", "D", "W", "M",
)  # fmt: skip
TIMEFRAMES = {
    "M1": "1m", "M5": "5m", "M15": "15m", "M30": "30m", "H1": "1h", "H2": "2h",
    "H4": "4h", "H6": "6h", "H8": "8h", "H12": "12h", "D": "1d", "W": "1w", "M": "1M",
}  # fmt: skip
# Aligned to the day that `dailyAlignment`/`alignmentTimezone` define (and W to
# `weeklyAlignment`); the others to the minute or hour (instrument-df, above).
DAY_ALIGNED = frozenset({"H2", "H3", "H4", "H6", "H8", "H12", "D", "W", "M"})
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DEFAULT_COUNT, MAX_COUNT = 500, 5000
COMPONENTS = {"M": "mid", "B": "bid", "A": "ask"}
HALF_SPREAD = 0.00005  # relative: a spread of one basis point around the mid

UNAUTHORIZED = "Insufficient authorization to perform request."
COUNT_EXCEEDED = "Maximum value for 'count' exceeded"
TO_IN_FUTURE = "Invalid value specified for 'to'. Time is in the future"
RATE_LIMITED = "Too many requests; slow down."


def invalid(name: str) -> str:
    """OANDA's message for a parameter with a bad value."""
    return f"Invalid value specified for '{name}'"


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> HttpError:
    """OANDA's error answer: `{"errorMessage": ...}`."""
    return HttpError(status, {"errorMessage": message}, headers)


def time_text(ts: datetime) -> str:
    """RFC 3339 with nine fractional digits: `2016-10-17T15:16:40.000000000Z`."""
    return rfc3339(ts, 9)


def tick_volume(candle: Candle) -> int:
    """Prices quoted in the bar: about one per 400 quote units traded, at least one."""
    return max(1, round(candle.volume * candle.close / 400.0))


def as_published(candle: Candle) -> Candle:
    """The truth's bar as OANDA's mid candles carry it: the volume is a tick count."""
    return dataclasses.replace(candle, volume=float(tick_volume(candle)))


def _quote(candle: Candle, factor: float) -> dict[str, str]:
    # Scaling by a positive factor keeps low <= open, close <= high.
    return {
        key: decimal(round(value * factor, 8))
        for key, value in (("o", candle.open), ("h", candle.high),
                           ("l", candle.low), ("c", candle.close))
    }  # fmt: skip


def candlestick(candle: Candle, complete: bool, components: str) -> dict[str, Any]:
    """One `Candlestick` with the requested price components (e.g. "M", "BA")."""
    factors = {"M": 1.0, "B": 1.0 - HALF_SPREAD, "A": 1.0 + HALF_SPREAD}
    row: dict[str, Any] = {"complete": complete, "volume": tick_volume(candle),
                           "time": time_text(candle.ts)}  # fmt: skip
    for component in components:
        row[COMPONENTS[component]] = _quote(candle, factors[component])
    return row


def candles_body(instrument: str, granularity: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The candles answer: the instrument, the granularity and the `Candlestick`s."""
    return {"instrument": instrument, "granularity": granularity, "candles": rows}
