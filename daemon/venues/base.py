"""The venue codec interface: sans-I/O translation between a venue's wire format and `Candle`s.

A venue is a history codec (`HistoryCodec`: REST requests and answers) plus,
where the venue streams closed candles, a stream codec (`codec.stream`, see
`candled.venues.stream`: a session per connection). A codec builds requests
and parses what comes back; it never opens a socket or reads a clock (callers
pass `now`). The drivers (HTTP fetcher, backfill, poller, WebSocket collector)
hold one codec per venue, so that adding a venue means adding one codec module
and one registry entry.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Protocol

from candled.domain import Candle, SeriesKey, Timeframe
from candled.domain.timeframe import require_utc
from candled.errors import CandledError

if TYPE_CHECKING:
    from candled.venues.stream import StreamCodec


class CodecError(CandledError):
    """A payload that does not have the shape the venue documents."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key (and secret, where the venue has one); never shown in logs or reprs."""

    key: str
    secret: str = ""

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"


class VenueError(CandledError):
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
    """What a venue's history allows and promises; the drivers size pages and
    buckets from it and judge answers by it. (A stream's limits are the stream
    codec's: `StreamLimits`.)"""

    page_size: int  # most candles one history request returns
    request_weight: int  # weight one history request costs against the venue's budget
    exact_genesis: bool  # the venue can answer "first candle at or after t"
    sparse: bool  # no bar at all for periods without trades
    rate_capacity: int = 6000  # default budget (weight) per `rate_period_s` for the throttle
    rate_period_s: float = 60.0
    # Only the newest this-many bars are served: older history is unreachable.
    history_horizon_bars: int | None = None
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


class HistoryCodec(Protocol):
    """A venue's history over HTTP: requests for a window of bars and what the
    answers mean. Implementations are pure and stateless."""

    @property
    def venue(self) -> str:
        """The venue name stored with every candle this codec produces."""
        ...

    @property
    def limits(self) -> VenueLimits:
        """Page size, request weight, rate budget, horizon and settling time."""
        ...

    def timeframe_supported(self, timeframe: str) -> bool:
        """Whether the venue serves bars of `timeframe` (a domain timeframe)."""
        ...

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

    def rate_facts(self, status: int, headers: Mapping[str, str]) -> RateFacts:
        """What an answer's status and headers say about the venue's rate limit."""
        ...

    def refused_credentials(self, status: int, body: bytes) -> CredentialsRefused | None:
        """The venue's refusal of the configured key, if this answer (of any
        request) is one; None for every other answer, including a CDN's or
        firewall's refusal, which passes and is retried."""
        ...


class VenueCodec(HistoryCodec, Protocol):
    """One venue: its history codec, what credentials it needs, and its
    candle stream if it has one."""

    @property
    def needs_credentials(self) -> bool:
        """REST (and the stream) need the config's API key."""
        ...

    @property
    def needs_secret(self) -> bool:
        """... and its API secret."""
        ...

    @property
    def stream(self) -> StreamCodec | None:
        """The venue's candle stream; None: live bars are polled over REST."""
        ...


class CodecBase:
    """What every codec shares: its venue name, `LIMITS`, `TIMEFRAMES` and
    credential needs, the checks of a history window, no stream. An
    implementation aid; `VenueCodec` is the interface."""

    LIMITS: ClassVar[VenueLimits]
    TIMEFRAMES: ClassVar[Collection[str]]  # the domain timeframes the venue serves
    NEEDS_CREDENTIALS: ClassVar[bool] = False
    NEEDS_SECRET: ClassVar[bool] = False

    def __init__(self, venue: str) -> None:
        self._venue = venue

    @property
    def venue(self) -> str:
        """The venue name stored with every candle this codec produces."""
        return self._venue

    @property
    def limits(self) -> VenueLimits:
        """The venue's `LIMITS`."""
        return self.LIMITS

    @property
    def needs_credentials(self) -> bool:
        """REST (and the stream) need the config's API key."""
        return self.NEEDS_CREDENTIALS

    @property
    def needs_secret(self) -> bool:
        """... and its API secret."""
        return self.NEEDS_SECRET

    @property
    def stream(self) -> StreamCodec | None:
        """No candle stream unless the venue's codec says otherwise."""
        return None

    def timeframe_supported(self, timeframe: str) -> bool:
        """Whether `timeframe` is one of the venue's `TIMEFRAMES`."""
        return timeframe in self.TIMEFRAMES

    def genesis_request(self, series: SeriesKey) -> HttpRequest:
        """Venues without `limits.exact_genesis` cannot be asked; the backfill never does."""
        raise NotImplementedError(
            f"{self._venue} cannot answer a series' first bar (limits.exact_genesis is false)"
        )

    def refused_credentials(self, status: int, body: bytes) -> CredentialsRefused | None:
        """Venues without credentials have none to refuse."""
        return None

    def parse_history(
        self, series: SeriesKey, status: int, body: bytes, now: datetime
    ) -> list[Candle]:
        """Each codec's own."""
        raise NotImplementedError

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
    """The error for a request window that holds no bar (a caller's mistake, not the venue's)."""
    return ValueError(f"empty window [{start.isoformat()}, {end.isoformat()})")
