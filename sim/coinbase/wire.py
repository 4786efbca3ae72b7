"""Coinbase Exchange's JSON shapes, written by the simulated exchange.

Kept apart from the codec on purpose: the sim encodes from the documentation
(https://docs.cdp.coinbase.com/api-reference/exchange-api/rest-api/products/get-product-candles,
https://docs.cdp.coinbase.com/exchange/rest-api/requests), the codec decodes
from it, and the tests check that the two meet.
"""

from __future__ import annotations

from typing import Any

from candled.domain import Candle
from candled_sim.encoding import epoch_s
from candled_sim.http import HttpError

# The only bucket sizes (seconds) Coinbase accepts, and the timeframe each is.
GRANULARITIES = {60: "1m", 300: "5m", 900: "15m", 3600: "1h", 21600: "6h", 86400: "1d"}
MAX_CANDLES = 300  # a request whose range holds more buckets is rejected

NOT_FOUND = "NotFound"
UNSUPPORTED_GRANULARITY = "Unsupported granularity"
TOO_MANY_BUCKETS = (
    "granularity too small for the requested time range. "
    f"Count of aggregations requested exceeds {MAX_CANDLES}"
)
RATE_LIMITED = "Public rate limit exceeded"


def candle_row(candle: Candle) -> list[Any]:
    """One bucket: `[time, low, high, open, close, volume]`, time in Unix seconds."""
    return [epoch_s(candle.ts), candle.low, candle.high, candle.open, candle.close, candle.volume]


def refusal(status: int, message: str) -> HttpError:
    """Coinbase's error answer: `{"message": ...}`."""
    return HttpError(status, {"message": message})
