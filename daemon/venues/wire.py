"""Wire helpers every codec shares: the values venues send, read strictly.

Each reader takes what a JSON parser or a header produced and returns the
value the codec means, or raises `CodecError` (never another exception: the
drivers count and skip exactly that). Here are JSON numbers and decimal
strings, epoch timestamps and RFC 3339 times as aligned bar open times,
header counts and seconds, bounded quotations of what arrived, and the
header mapping that keeps credentials out of every repr.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from candled.domain import Candle, Timeframe
from candled.domain.timeframe import EPOCH, require_utc
from candled.venues.base import CodecError, CredentialsRefused

# --- JSON and quotations -------------------------------------------------------


def json_or_none(body: bytes | str) -> Any:
    """The JSON in `body`, or None where there is none."""
    try:
        return json.loads(body)
    # ValueError: not JSON, not UTF-8 (UnicodeDecodeError), an integer past
    # Python's digit limit. RecursionError: nesting deeper than the interpreter's
    # recursion limit, which no venue payload comes near.
    except (ValueError, RecursionError):
        return None  # the caller decides: an error status, or a malformed body


# Error messages quote what arrived, bounded: a value may be megabytes long or
# nested a thousand deep (a plain repr would then raise RecursionError).
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60


def shown(value: object) -> str:
    """A short repr of `value` for an error message, whatever its size or depth."""
    return _SHOWN.repr(value)


def venue_words(value: object) -> str:
    """A venue's error message as text, bounded in length (it gets logged)."""
    return value[:200] if isinstance(value, str) else shown(value)


def json_array(payload: Any, what: str) -> list[Any]:
    """`payload` if it is a JSON array; CodecError naming `what` otherwise."""
    if not isinstance(payload, list):
        raise CodecError(f"{what}: expected a JSON array, got {type(payload).__name__}")
    return payload


# --- numbers -------------------------------------------------------------------


def decimal_string(value: object) -> float:
    """A finite decimal sent as a string to keep its precision (Binance, Kraken, OANDA)."""
    if not isinstance(value, str):
        raise CodecError(f"{shown(value)} is not a decimal string")
    try:
        number = float(value)
    except ValueError:
        raise CodecError(f"{shown(value)} is not a decimal") from None
    if not math.isfinite(number):
        raise CodecError(f"{shown(value)} is not finite")
    return number


def json_number(value: object) -> float:
    """A finite JSON number (bool is an int subclass, and no number)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CodecError(f"{shown(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range, e.g. 10**400
        raise CodecError(f"{shown(value)} is not finite") from None
    if not math.isfinite(number):
        raise CodecError(f"{shown(value)} is not finite")
    return number


_MAX_COUNT = 2**63 - 1


def json_count(value: object) -> int:
    """A non-negative JSON integer within float's range (a count, e.g. OANDA's volume)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CodecError(f"{shown(value)} is not a count")
    if value > _MAX_COUNT:  # float(value) would overflow; no venue counts so far
        raise CodecError(f"{shown(value)} is past any count")
    return value


# --- times and bars ------------------------------------------------------------


def to_ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime."""
    return (require_utc(ts) - EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    """The instant `ms` milliseconds after the epoch; CodecError past what a datetime holds."""
    try:
        return EPOCH + timedelta(milliseconds=ms)
    except OverflowError:  # e.g. 10**18 ms, some 31 million years on
        raise CodecError(f"{shown(ms)} ms is outside the datetime range") from None


def from_seconds(seconds: int) -> datetime:
    """The instant `seconds` after the epoch; CodecError past what a datetime holds."""
    try:
        return EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        raise CodecError(f"{shown(seconds)} s is outside the datetime range") from None


def bar_open(tf: Timeframe, ts: datetime) -> datetime:
    """`ts`, if a bar of `tf` opens then and closes at a time a datetime holds;
    else CodecError. The drivers compute every bar's close (and the next bar's
    open): a bar in the last minute of year 9999 would overflow there."""
    try:
        aligned = tf.is_aligned(ts)
        tf.close_time(ts)
    except (OverflowError, ValueError):  # the bar opens or closes outside years 1-9999
        raise CodecError(f"open time {ts.isoformat()} has no {tf} bar in range") from None
    if not aligned:
        raise CodecError(f"open time {ts.isoformat()} is not aligned to {tf}")
    return ts


def closed_by(candles: Iterable[Candle], now: datetime) -> list[Candle]:
    """The candles whose bar has closed by `now`, oldest first (an answer may
    hold the bar in progress, and come newest first)."""
    now = require_utc(now)
    return sorted((c for c in candles if c.series.tf.close_time(c.ts) <= now), key=lambda c: c.ts)


def _epoch_integer(value: object, unit: str) -> int:
    # bool is an int subclass; true is not a timestamp.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CodecError(f"time {shown(value)} is not a Unix timestamp in {unit}")
    return value


# Open times before this (year 9000) are checked by arithmetic on the
# milliseconds (a stream sends thousands a second); later ones, near the end
# of what a datetime holds, the general way.
FAST_MS_BEFORE = (datetime(9000, 1, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)


def bar_at_ms(tf: Timeframe, value: object) -> datetime:
    """The bar of `tf` opening `value` milliseconds after the epoch (Binance);
    CodecError for anything but a non-negative integer naming an aligned bar."""
    ms = _epoch_integer(value, "milliseconds")
    step_us = tf.step_us  # 0: monthly
    if ms < FAST_MS_BEFORE and step_us and not (ms * 1000 - tf.origin_us) % step_us:
        return EPOCH + timedelta(milliseconds=ms)  # aligned: the bar and its close fit a datetime
    return bar_open(tf, from_ms(ms))  # unaligned, monthly or far off: the general way


def bar_at_seconds(tf: Timeframe, value: object) -> datetime:
    """The bar of `tf` opening `value` seconds after the epoch (Coinbase, Kraken);
    CodecError for anything but a non-negative integer naming an aligned bar."""
    return bar_open(tf, from_seconds(_epoch_integer(value, "seconds")))


# RFC 3339 in UTC as venues write it: "2021-02-22T19:15:00Z", with up to nine
# fractional digits (Kraken, OANDA: "2016-10-17T15:16:40.000000000Z").
_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 UTC time; digits past the microsecond are dropped. CodecError
    for anything else, including a date that does not exist."""
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if m is None:
        raise CodecError(f"time {shown(value)} is not an RFC 3339 UTC time")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micros = int((m.group(7) or "0").ljust(9, "0")[:6])
    try:
        return datetime(year, month, day, hour, minute, second, micros, tzinfo=UTC)
    except ValueError:
        raise CodecError(f"time {shown(value)} is not a valid date") from None


def rfc3339(ts: datetime) -> str:
    """A UTC time to the second with a `Z` ("2024-03-01T15:00:00Z": Alpaca, Coinbase)."""
    return require_utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_nanos(ts: datetime) -> str:
    """A UTC time with nine fractional digits, as OANDA writes it."""
    ts = require_utc(ts)
    return ts.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts.microsecond:06d}000Z"


# --- headers -------------------------------------------------------------------

# A header's count: ASCII digits, at most 18. `str.isdigit` passes "²", which
# int() refuses; int() itself takes "1_000", other scripts' digits, and
# thousands of digits that no rate limit has.
_HEADER_COUNT = re.compile(r"[0-9]{1,18}")


def lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """`headers` by lower-case name: names are case-insensitive, a plain Mapping's are not."""
    return {name.lower(): value for name, value in headers.items()}


def header_count(text: str | None) -> int | None:
    """A header's non-negative integer (used weight, limits), or None."""
    if text is None or not _HEADER_COUNT.fullmatch(text := text.strip()):
        return None
    return int(text)


def seconds_or_none(text: str | None) -> float | None:
    """A header's finite, non-negative number of seconds (Retry-After), or None."""
    if text is None:
        return None
    try:
        seconds = float(text.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


class SecretHeaders(Mapping[str, str]):
    """Request headers that carry credentials (Alpaca's key and secret, OANDA's
    bearer token): a read-only mapping whose repr shows every value redacted,
    for requests get logged."""

    def __init__(self, headers: Mapping[str, str], shown_as: Mapping[str, str]) -> None:
        """`shown_as`: what the repr shows for each header, e.g. 'Bearer <redacted>'."""
        self._headers = dict(headers)
        self._repr = "{" + ", ".join(f"{k!r}: {v!r}" for k, v in shown_as.items()) + "}"

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)

    def __repr__(self) -> str:
        return self._repr


def key_refusal(
    venue: str, status: int, body: bytes, message_key: str, *, needs_secret: bool
) -> CredentialsRefused | None:
    """The venue's refusal of the configured key: a 401, or a 403 whose body is
    the venue's JSON error (its words under `message_key`); None for any other
    answer, a 403 from a CDN or firewall included (that one is retried)."""
    if status not in (401, 403):
        return None
    payload = json_or_none(body)
    if isinstance(payload, dict) and isinstance(payload.get(message_key), str):
        answer = payload[message_key][:200]
    elif status == 401:
        answer = "no error body"
    else:
        return None
    return CredentialsRefused(venue, status, answer, needs_secret=needs_secret)
