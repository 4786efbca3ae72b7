"""Kraken's JSON shapes, written by the simulated exchange.

Kept apart from the codec on purpose: the sim encodes from the documentation
(https://docs.kraken.com/api-reference/market-data/get-ohlc-data,
https://docs.kraken.com/api/docs/websocket-v2/ohlc, .../heartbeat, .../status),
the codec decodes from it, and the tests check that the two meet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from candled.domain import Candle
from candled_sim.encoding import decimal, epoch_s, rfc3339, typical_price
from candled_sim.http import HttpError

# Kraken interval (minutes) -> the truth's timeframe. Kraken's 21600 (15 days)
# has no timeframe in the domain, so the sim cannot serve it.
TIMEFRAMES = {1: "1m", 5: "5m", 15: "15m", 30: "30m", 60: "1h", 240: "4h", 1440: "1d", 10080: "1w"}
MINUTES = {tf: minutes for minutes, tf in TIMEFRAMES.items()}
HEARTBEAT = {"channel": "heartbeat"}
INVALID_ARGUMENTS = "EGeneral:Invalid arguments"
UNKNOWN_PAIR = "EQuery:Unknown asset pair"
TOO_MANY_REQUESTS = "EGeneral:Too many requests"


def time_text(ts: datetime, nanoseconds: bool = False) -> str:
    """Kraken's RFC 3339 UTC times: microseconds, or nanoseconds for `interval_begin`."""
    return rfc3339(ts, 9 if nanoseconds else 6)


def _vwap(candle: Candle) -> float:
    return typical_price(candle, 8)


def _trades(candle: Candle) -> int:
    return 1 + int(candle.volume * candle.close / 100.0)  # a trade per ~100 quote units


def ohlc_row(candle: Candle) -> list[Any]:
    """One row of `GET /0/public/OHLC`: decimals as strings, volume after the vwap."""
    prices = (candle.open, candle.high, candle.low, candle.close, _vwap(candle), candle.volume)
    return [epoch_s(candle.ts), *(decimal(x) for x in prices), _trades(candle)]


def ohlc_answer(pair: str, candles: list[Candle], last: int) -> dict[str, Any]:
    """`GET /0/public/OHLC`: the pair's rows and `last`, the cursor for the next poll."""
    return {"error": [], "result": {pair: [ohlc_row(c) for c in candles], "last": last}}


def refusal(error: str) -> HttpError:
    """Kraken's failure: HTTP 200 all the same, the reason in the `error` array."""
    return HttpError(200, {"error": [error]})


def ohlc_entry(candle: Candle) -> dict[str, Any]:
    """One candle of the v2 `ohlc` channel: numbers, not strings."""
    tf = candle.series.tf
    return {
        "symbol": candle.series.symbol,
        "open": candle.open,
        "high": candle.high,
        "low": candle.low,
        "close": candle.close,
        "trades": _trades(candle),
        "volume": candle.volume,
        "vwap": _vwap(candle),
        "interval_begin": time_text(candle.ts, nanoseconds=True),
        "interval": MINUTES[candle.series.timeframe],
        # Deprecated; the documented example shows the interval's end here.
        "timestamp": time_text(tf.close_time(candle.ts)),
    }


def ohlc_frame(kind: str, candles: list[Candle], now: datetime) -> dict[str, Any]:
    """A `snapshot` or `update` message of the `ohlc` channel."""
    return {
        "channel": "ohlc",
        "type": kind,
        "timestamp": time_text(now, nanoseconds=True),
        "data": [ohlc_entry(c) for c in candles],
    }


def status_frame(connection_id: int) -> dict[str, Any]:
    """Sent once a connection is up."""
    data = {"api_version": "v2", "connection_id": connection_id, "system": "online",
            "version": "2.0.0"}  # fmt: skip
    return {"channel": "status", "data": [data], "type": "update"}


def method_ack(
    method: str, result: dict[str, Any], req_id: object, time_in: datetime, time_out: datetime
) -> dict[str, Any]:
    """A successful answer to `subscribe` / `unsubscribe` (one per symbol)."""
    answer = {"method": method, "result": result, "success": True,
              "time_in": time_text(time_in), "time_out": time_text(time_out)}  # fmt: skip
    return answer if req_id is None else {**answer, "req_id": req_id}


def method_error(
    method: object, error: str, req_id: object, time_in: datetime, time_out: datetime,
    symbol: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A refused request: `success: false` and the reason in `error`."""
    answer: dict[str, Any] = {
        "error": error, "success": False, "time_in": time_text(time_in),
        "time_out": time_text(time_out),
    }  # fmt: skip
    if isinstance(method, str):
        answer["method"] = method
    if symbol is not None:
        answer["symbol"] = symbol
    return answer if req_id is None else {**answer, "req_id": req_id}
