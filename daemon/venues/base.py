"""The venue codec interface: sans-I/O translation between a venue's wire format and `Candle`s.

A codec builds requests and subscribe messages and parses what comes back; it
never opens a socket or reads a clock (callers pass `now`). The shared I/O
drivers (HTTP fetcher, WebSocket collector) hold one codec per venue, so that
adding a venue means adding one codec module and one registry entry.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import EPOCH, require_utc


class CodecError(ValueError):
    """A payload that does not have the shape the venue documents."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key (and secret, where the venue has one); never shown in logs or reprs."""

    key: str
    secret: str = ""

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


class VenueError(Exception):
    """The venue answered a request with an error (non-2xx), e.g. an unknown symbol."""

    def __init__(self, status: int, code: int | None, msg: str) -> None:
        super().__init__(f"venue answered {status} (code {code}): {msg}")
        self.status = status
        self.code = code
        self.msg = msg


class RateLimitedAnswer(VenueError):
    """An ordinary answer whose body says the request was refused for the
    venue's rate limit (Kraken: HTTP 200 with "EGeneral:Too many requests")."""

    def __init__(self, status: int, msg: str, retry_after_s: float | None = None) -> None:
        super().__init__(status, None, msg)
        self.retry_after_s = retry_after_s


class CredentialsRefused(VenueError):
    """The venue refused the configured credentials: a wrong, revoked or
    unentitled key. Asking again with the same key cannot succeed, so the
    drivers fail at once, say which settings to fix, and ask again only rarely.
    The message holds the venue's words and the config keys, never the key."""

    def __init__(self, venue: str, status: int, answer: str, *, needs_secret: bool) -> None:
        """`answer`: the venue's words; `status`: the HTTP status (0: none, a stream's)."""
        super().__init__(status, None, answer)
        self.venue = venue
        settings = "api_key_env or api_key_file" + (
            " and api_secret_env or api_secret_file" if needs_secret else ""
        )
        said = f"HTTP {status}: {answer}" if status else answer
        self.args = (
            f'venue "{venue}" refused its credentials ({said}): fix the key that'
            f" {settings} of this venue provide, then reload or restart",
        )


@dataclass(frozen=True, slots=True)
class VenueLimits:
    """What a venue allows; the drivers size pages, buckets and connections from it."""

    page_size: int  # most candles one history request returns
    request_weight: int  # weight one history request costs against the venue's budget
    streams_per_connection: int
    max_connection_age_s: float  # the venue drops a stream connection after this long
    exact_genesis: bool  # the venue can answer "first candle at or after t"
    sparse: bool  # no bar at all for periods without trades
    max_ws_messages_per_s: float  # incoming (client to venue) messages per connection
    rate_capacity: int = 6000  # default budget (weight) per `rate_period_s` for the throttle
    rate_period_s: float = 60.0
    # "stream": closed bars come over the WebSocket; "poll": the venue has no
    # usable candle stream, so live bars are fetched over REST after each close.
    live: Literal["stream", "poll"] = "stream"
    # Only the newest this-many bars are served: older history is unreachable.
    history_horizon_bars: int | None = None
    # Stream bars carry no closed flag: a bar is final when a later one opens.
    final_on_next: bool = False
    # Stream names go in the connect URL (else every stream is subscribed by message).
    subscribe_in_url: bool = True
    # The venue answers each subscribe message with a reply carrying its id.
    acknowledges_requests: bool = True
    needs_credentials: bool = False  # REST and streams need the config's api key
    needs_secret: bool = False  # ... and its api secret
    # Timeframes the stream carries (None: every supported one); live series of
    # other timeframes are polled.
    stream_timeframes: frozenset[str] | None = None
    # A healthy stream may stay silent for long (no heartbeat, nothing while the
    # market is closed): no idle detection; WebSocket pings still find a dead link.
    quiet_stream: bool = False
    # Seconds after a bar's close before the venue's answer about it is final
    # (a stream's close frame, OANDA's `complete`, Kraken's committed entry):
    # a range that ends later than this before now is "not yet", never "empty".
    settling_s: float = 30.0

    def oldest_served(self, tf: Timeframe, now: datetime) -> datetime | None:
        """Open time of the oldest bar the venue still serves at `now` (None: all)."""
        if self.history_horizon_bars is None:
            return None
        return tf.add(tf.floor(now), -self.history_horizon_bars)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request relative to the venue's `rest_url`; the fetcher adds the base URL."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. credentials


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """What one history answer carried."""

    candles: list[Candle]  # closed candles, oldest first (as `parse_history`)
    # The venue cut the answer short and says how to go on (Alpaca's
    # `next_page_token`): the request for the rest of the same window, which
    # the drivers send the same way. None: the answer holds all it will.
    next: HttpRequest | None = None
    # Open time of the first bar the venue has not finalised yet (OANDA's
    # `complete: false` after the bar's close): from there the answer says
    # "not yet", never "no bar". None: final as far as it goes.
    not_final: datetime | None = None


@dataclass(frozen=True, slots=True)
class RateFacts:
    """What one HTTP response says about the venue's rate limit."""

    used_weight: int | None  # weight used in the venue's current window, if reported
    retry_after_s: float | None  # how long the venue asks us to wait, if it says
    rate_limited: bool  # over budget (429): wait `retry_after_s`, then go on
    banned: bool  # IP ban (418): nothing may be sent to the venue until it ends


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What one WebSocket text frame carried."""

    candles: tuple[Candle, ...] = ()  # closed bars only
    # Bars still forming, for venues whose stream has no closed flag
    # (`limits.final_on_next`): the collector finalises one when a later bar opens.
    forming: tuple[Candle, ...] = ()
    is_data: bool = False  # a candle update, closed or not: the stream is alive
    malformed: bool = False  # not the documented shape; count it, never crash on it
    stream: str | None = None  # the stream a data frame belongs to (None: see the candles')
    reply_id: int | None = None  # the id of a method message this frame answers
    error: str | None = None  # the venue's error answer to a method message
    # An error that decides what becomes of the connection (venues whose errors
    # say so: Alpaca's codes); the collector acts on its `fault`.
    stream_error: StreamError | None = None
    logged_in: bool = False  # the venue accepted the login messages
    # The venue confirmed a (un)subscription without an id to match (Alpaca's
    # `subscription` message): the connection's subscribe went through.
    subscribed: bool = False


class StreamFault(StrEnum):
    """What a stream error means for the connection, and so what the collector does."""

    KEY_REFUSED = "key_refused"  # a wrong or revoked key: fix it; retried only rarely
    NOT_ENTITLED = "not_entitled"  # the key's plan refuses the feed or the symbols: rarely
    CONNECTION_LIMIT = "connection_limit"  # another connection holds the key: long backoff
    REJECTED = "rejected"  # the venue refused a message candled sent: a bug; rarely
    VENUE_FAULT = "venue_fault"  # the venue's trouble or a slow link: reconnect as usual
    HARMLESS = "harmless"  # refused, but the connection is as it was: carry on


@dataclass(frozen=True, slots=True)
class StreamError:
    """A stream error answer, classified by the codec."""

    fault: StreamFault
    code: int | None  # the venue's code, when it is one the codec knows the type of
    said: str  # the venue's code and words, bounded in length
    fix: str = ""  # what an operator changes, naming the settings (never a key)


class VenueCodec(Protocol):
    """One venue's wire format. Implementations are pure and stateless."""

    @property
    def venue(self) -> str:
        """The venue name stored with every candle this codec produces."""
        ...

    @property
    def limits(self) -> VenueLimits: ...

    def timeframe_supported(self, timeframe: str) -> bool: ...

    def history_request(
        self, series: SeriesKey, start: datetime, end: datetime, limit: int
    ) -> HttpRequest:
        """Request the bars with open time in [start, end), oldest first, at most `limit`."""
        ...

    def genesis_request(self, series: SeriesKey) -> HttpRequest:
        """Request the first bar at or after t=0 (only where `limits.exact_genesis`)."""
        ...

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        """Closed candles of a history response, oldest first.

        Bars still open at `now` are left out. Raises `RateLimitedAnswer` for a
        rate-limit refusal that the status does not show, `VenueError` for
        another error answer and `CodecError` for a malformed one.
        """
        ...

    def parse_history_page(
        self, series: SeriesKey, request: HttpRequest, status: int, body: bytes, now: datetime
    ) -> HistoryPage:
        """`parse_history` of the answer to `request`, with the request that
        continues it where the venue cut it short (`HistoryPage.next`)."""
        ...

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts: ...

    def refused_credentials(self, status: int, body: bytes) -> CredentialsRefused | None:
        """The venue's refusal of the configured key, if this answer (of any
        request) is one; None for every other answer, including a CDN's or
        firewall's refusal, which passes and is retried."""
        ...

    def stream_name(self, series: SeriesKey) -> str: ...

    def stream_path(self, series: Sequence[SeriesKey]) -> str:
        """Path (with query) to open a connection already subscribed to `series`."""
        ...

    def login_messages(self) -> list[str]:
        """Messages to send right after connecting, before any subscribe (authentication)."""
        ...

    def subscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str:
        """Subscribe `series`, all of one timeframe (the collector groups them)."""
        ...

    def unsubscribe_message(self, series: Sequence[SeriesKey], request_id: int) -> str: ...

    def parse_frame(self, text: str) -> FrameResult:
        """Parse one text frame; malformed frames are flagged, never raised."""
        ...


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


class CodecBase:
    """What every codec shares: its venue name, `LIMITS` and `TIMEFRAMES`, the
    checks of a history window. An implementation aid; `VenueCodec` is the interface."""

    LIMITS: ClassVar[VenueLimits]
    TIMEFRAMES: ClassVar[Collection[str]]  # the domain timeframes the venue serves

    def __init__(self, venue: str) -> None:
        self._venue = venue

    @property
    def venue(self) -> str:
        return self._venue

    @property
    def limits(self) -> VenueLimits:
        return self.LIMITS

    def timeframe_supported(self, timeframe: str) -> bool:
        return timeframe in self.TIMEFRAMES

    def refused_credentials(self, status: int, body: bytes) -> CredentialsRefused | None:
        """Venues without credentials have none to refuse."""
        return None

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        raise NotImplementedError  # each codec's own

    def parse_history_page(
        self, series: SeriesKey, request: HttpRequest, status: int, body: bytes, now: datetime
    ) -> HistoryPage:
        """Venues that answer a request whole: never a continuation."""
        return HistoryPage(self.parse_history(series, status, body, now))

    def check_limit(self, limit: int) -> None:
        """ValueError unless one page may hold `limit` bars."""
        if not 1 <= limit <= self.LIMITS.page_size:
            raise ValueError(f"limit {limit} outside 1..{self.LIMITS.page_size}")

    def check_window(self, start: datetime, end: datetime, limit: int) -> None:
        """ValueError for a bad `limit` (`check_limit`) or an empty [start, end)."""
        self.check_limit(limit)
        if require_utc(end) <= require_utc(start):
            raise empty_window(start, end)


def no_options(kind: str, options: Mapping[str, str] | None, only: str | None = None) -> None:
    """ValueError naming what is left in `options` (a codec pops the `only` one it takes)."""
    if options:
        takes = f"only the option {only}" if only else "no options"
        raise ValueError(f"{kind} takes {takes}, got {', '.join(sorted(options))}")


def only_option(
    kind: str,
    options: Mapping[str, str] | None,
    name: str,
    default: str,
    choices: Collection[str],
    gloss: str = "",
) -> str:
    """The value of `name`, the one option the codec takes; ValueError for any
    other option or a value not in `choices` (`gloss` explains them)."""
    rest = dict(options or {})
    value = rest.pop(name, default)
    no_options(kind, rest, only=name)
    if value not in choices:
        raise ValueError(
            f"{kind} option {name}: expected one of {', '.join(choices)}{gloss}, got {value!r}"
        )
    return value


def empty_window(start: datetime, end: datetime) -> ValueError:
    return ValueError(f"empty window [{start.isoformat()}, {end.isoformat()})")


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


def decimal_string(value: object) -> float:
    """A finite decimal sent as a string to keep its precision (Binance, OANDA)."""
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


def json_count(value: object) -> int:
    """A non-negative JSON integer within float's range (a count, e.g. OANDA's volume)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CodecError(f"{shown(value)} is not a count")
    if value > _MAX_COUNT:  # float(value) would overflow; no venue counts so far
        raise CodecError(f"{shown(value)} is past any count")
    return value


_MAX_COUNT = 2**63 - 1
# A header's count: ASCII digits, at most 18. `str.isdigit` passes "²", which
# int() refuses; int() itself takes "1_000", other scripts' digits, and
# thousands of digits that no rate limit has.
_HEADER_COUNT = re.compile(r"[0-9]{1,18}")


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
