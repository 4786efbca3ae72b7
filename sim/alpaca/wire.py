"""Alpaca market data v2's JSON shapes, written by the simulated exchange.

Kept apart from the codec on purpose: the sim encodes from the documentation
(https://docs.alpaca.markets/reference/stockbars, the docs' source in
https://github.com/alpacahq/alpaca-docs: content/api-references/market-data-api/
stock-pricing-data/historical.md and realtime.md, and
https://docs.alpaca.markets/docs/real-time-stock-pricing-data), the codec decodes
from it, and the tests check that the two meet.

The truth's volumes are kept as they are (Alpaca's are whole shares), so that a
store filled from the sim can equal the truth value for value.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from candled.domain import Candle, Timeframe
from candled_sim.encoding import rfc3339, typical_price
from candled_sim.http import HttpError

# The one key pair the simulated Alpaca accepts: REST headers `APCA-API-KEY-ID` /
# `APCA-API-SECRET-KEY`, and the stream's auth message.
SIM_KEY, SIM_SECRET = "candled-sim-alpaca-key", "candled-sim-alpaca-secret"
NEW_YORK = ZoneInfo("America/New_York")
# `timeframe`: "flexible for Min, Hour, Day, Week and Month time window sizes with
# a maximum constraint on the values: 59Min, 23Hour, 1Day, 1Week, 12Month";
# alpaca-py also writes T, H, D, W, M.
TIMEFRAME = re.compile(r"^([0-9]{1,2})(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
MAX_AMOUNT = {"Min": 59, "T": 59, "Hour": 23, "H": 23, "Day": 1, "D": 1, "Week": 1, "W": 1,
              "Month": 12, "M": 12}  # fmt: skip
# The Alpaca timeframes the simulator serves, as the truth's timeframes: those
# whose bars fall on the domain's grid (daily bars: see `label`).
SERVED = {"1Min": "1m", "3Min": "3m", "5Min": "5m", "15Min": "15m", "30Min": "30m",
          "1Hour": "1h", "1Day": "1d"}  # fmt: skip
DEFAULT_LIMIT, MAX_LIMIT = 1000, 10_000
FEEDS = ("iex", "sip")
ADJUSTMENTS = ("raw", "split", "dividend", "all")

# Error codes as Alpaca writes them: 422 ... -> 422xxxxx, 400 ... -> 400xxxxx.
INVALID_VALUE, BAD_REQUEST = 42210000, 40010001
FORBIDDEN = "forbidden"
TOO_MANY_REQUESTS = "too many requests"

# Stream control messages (alpaca-docs' realtime.md).
CONNECTED = [{"T": "success", "msg": "connected"}]
AUTHENTICATED = [{"T": "success", "msg": "authenticated"}]
STREAM_ERRORS = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    500: "internal error",
}
CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars")
# Channels of Alpaca's other streams (crypto order books, news): 410 here.
OTHER_STREAMS_CHANNELS = ("orderbooks", "news")


def label(tf: Timeframe, ts: datetime) -> datetime:
    """Alpaca's timestamp of the bar opening at `ts` on the domain's grid.

    Alpaca labels daily bars at midnight New York time (the docs' example
    `"t": "2022-04-11T04:00:00Z"`); the truth's day of the same date is served
    under that label.
    """
    if tf.seconds != 86_400:
        return ts
    return datetime.combine(ts.date(), time(), NEW_YORK).astimezone(UTC)


def _trades(candle: Candle) -> int:
    return 1 + int(candle.volume * candle.close / 500.0)  # a trade per ~500 dollars


def _vwap(candle: Candle) -> float:
    return typical_price(candle, 6)


def bar(candle: Candle) -> dict[str, Any]:
    """One bar object of the REST answers (and the body of a stream bar)."""
    return {
        "t": rfc3339(label(candle.series.tf, candle.ts)),
        "o": candle.open,
        "h": candle.high,
        "l": candle.low,
        "c": candle.close,
        "v": candle.volume,
        "n": _trades(candle),
        "vw": _vwap(candle),
    }


def stream_bar(kind: str, candle: Candle) -> dict[str, Any]:
    """A minute bar (`"T": "b"`) or a corrected one (`"T": "u"`) of the stream."""
    return {"T": kind, "S": candle.series.symbol, **bar(candle)}


def page_token(symbol: str, tf: Timeframe, ts: datetime) -> str:
    """The documented token's form: base64 of "AAPL|M|2022-04-11T08:00:00.000000000Z"."""
    text = f"{symbol}|{tf.unit.upper()}|{ts.strftime('%Y-%m-%dT%H:%M:%S')}.000000000Z"
    return base64.b64encode(text.encode()).decode()


def read_page_token(token: str) -> tuple[str, datetime] | None:
    """The symbol and label of the last bar a page held; None for a foreign token."""
    try:
        symbol, _, stamp = base64.b64decode(token, validate=True).decode().split("|")
        return symbol, datetime.fromisoformat(stamp[:19]).replace(tzinfo=UTC)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None


def multi_bars_body(bars: dict[str, list[dict[str, Any]]], token: str | None) -> dict[str, Any]:
    """`GET /v2/stocks/bars`: bars keyed by symbol (symbols without bars left out)."""
    return {"bars": bars, "next_page_token": token}


def single_bars_body(symbol: str, bars: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """`GET /v2/stocks/{symbol}/bars`."""
    return {"bars": bars, "symbol": symbol, "next_page_token": token}


def refusal(status: int, message: str, headers: dict[str, str] | None = None) -> HttpError:
    """Alpaca's REST error answer: `{"code": ..., "message": ...}` for a bad request
    (400, 422: the code is the status and four digits), `{"message": ...}` else."""
    codes = {422: INVALID_VALUE, 400: BAD_REQUEST}
    body: dict[str, Any] = {"message": message}
    if status in codes:
        body = {"code": codes[status], **body}
    return HttpError(status, body, headers)


def stream_error(code: int) -> list[dict[str, Any]]:
    """The stream's error message with `code` and its documented text."""
    return [{"T": "error", "code": code, "msg": STREAM_ERRORS[code]}]


def subscription(channels: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The whole current subscription, sent after every (un)subscribe."""
    return [{"T": "subscription", **{name: channels.get(name, []) for name in CHANNELS}}]
