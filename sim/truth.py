"""The simulated exchange's ground truth: deterministic candles from a seed.

Every value is a pure function of (seed, symbol, timeframe, bar open time), so
any bar can be computed in O(1) without walking from the listing, and tests can
use `Truth.candles` as the oracle for what the exchange serves.

The price is one continuous path per symbol, log P(t) = log base + value noise
at several periods (5 s to 30 d, amplitude growing like a random walk's). A bar
opens at P(open) and closes at P(close), so each bar opens where the previous
one closed, on every timeframe. Wicks and volume are hashed per bar.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from candled.domain import Candle, DataProfile, SeriesKey, Timeframe
from candled.domain.timeframe import EPOCH, require_utc
from candled_sim import sessions

_MASK = (1 << 64) - 1
_SIGMA = 1e-4  # relative volatility per sqrt(second)
_OCTAVES = tuple(
    (period, _SIGMA * math.sqrt(period)) for period in (5, 60, 3_600, 86_400, 2_592_000)
)
_BAR_CACHE = 1 << 15  # bars memoised per truth: more than the streams a sim serves
_DECIMALS = 8  # Binance sends eight decimals; truth holds exactly what the wire can carry
# The venue of series inside the simulator: only symbol and timeframe matter.
SIM_VENUE = "sim"


@dataclass(frozen=True, slots=True)
class Maintenance:
    """A window without bars: a bar lying wholly inside it is not published."""

    start: datetime
    end: datetime
    symbols: frozenset[str] = frozenset()  # empty: every symbol

    def covers(self, symbol: str, start: datetime, end: datetime) -> bool:
        """Whether the window hides the bar of `symbol` spanning [start, end)."""
        applies = not self.symbols or symbol in self.symbols
        return applies and self.start <= start and end <= self.end


@dataclass(frozen=True, slots=True)
class Market:
    """When a symbol trades: its calendar, and how often a bar has no trade at all."""

    profile: DataProfile = DataProfile.CRYPTO
    calendar: str = ""  # "" : the profile's default
    illiquid: float = 0.0  # fraction of bars without trades (sparse venues publish none)

    def has_bar(self, tf: Timeframe, open_ts: datetime) -> bool:
        """A bar is published iff it overlaps a session (the healer's rule too).

        Sessions come from the simulator's hand-checked table, never from the
        daemon's calendars, so a calendar bug shows up as a difference.
        """
        name = sessions.calendar_name(self.profile, self.calendar)
        return sessions.has_bar(name, tf, open_ts)


_ALWAYS = Market()


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=1 << 16)
def _key(*parts: object) -> int:
    # Python's hash() of a str is salted per process; blake2b is stable.
    # Cached: a stream asks for the same few keys of each symbol many times a second.
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _unit(key: int, n: int) -> float:
    """Uniform in [0, 1), determined by (key, n)."""
    return (_mix(key ^ _mix(n & _MASK)) >> 11) / float(1 << 53)


# The value noise of one octave of the price path at its k-th knot: the same
# knots serve every price asked for inside an octave's period (memoised: a
# stream asks for each symbol's price every second).
_knot = functools.lru_cache(maxsize=1 << 18)(_unit)


def _seconds(ts: datetime) -> float:
    return (ts - EPOCH).total_seconds()


class Truth:
    """Every bar the exchange has, as a pure function of the seed: what each
    personality serves, and the oracle tests compare a store with."""

    def __init__(
        self,
        seed: int,
        listings: Mapping[str, datetime],
        maintenance: Sequence[Maintenance] = (),
        markets: Mapping[str, Market] | None = None,  # default: every symbol trades 24/7
    ) -> None:
        self._seed = seed
        self._listings = {symbol: require_utc(ts) for symbol, ts in listings.items()}
        self._maintenance = tuple(maintenance)
        self._markets = dict(markets or {})
        # A stream asks for the bar forming on every update and again for its
        # closing frame: the newest bars are memoised (they are immutable).
        self._bars = functools.lru_cache(maxsize=_BAR_CACHE)(self._compute_bar)
        self._genesis = functools.lru_cache(maxsize=_BAR_CACHE)(self._first_open)

    def market(self, symbol: str) -> Market:
        """When `symbol` trades (24/7 and liquid unless the scenario says otherwise)."""
        return self._markets.get(symbol, _ALWAYS)

    @property
    def symbols(self) -> list[str]:
        """The listed symbols, sorted."""
        return sorted(self._listings)

    def listing(self, symbol: str) -> datetime | None:
        """When `symbol` was listed; None for a symbol the exchange does not have."""
        return self._listings.get(symbol)

    def listed_by(self, symbol: str, now: datetime) -> bool:
        """Whether `symbol` exists and has been listed at `now`."""
        listed = self._listings.get(symbol)
        return listed is not None and listed <= now

    def genesis(self, series: SeriesKey) -> datetime | None:
        """Open time of the series' first bar: the bar in which the symbol was listed."""
        return self._genesis(series.symbol, series.timeframe)

    def _first_open(self, symbol: str, timeframe: str) -> datetime | None:
        listed = self._listings.get(symbol)
        return None if listed is None else Timeframe.parse(timeframe).floor(listed)

    def exists(self, series: SeriesKey, open_ts: datetime) -> bool:
        """Whether the bar opening at `open_ts` is published: at or after the
        series' genesis, outside maintenance, inside the market's sessions."""
        genesis = self.genesis(series)
        if genesis is None or open_ts < genesis:
            return False
        return self._maintained(series, open_ts) is None and self._in_session(series, open_ts)

    def traded(self, series: SeriesKey, open_ts: datetime) -> bool:
        """Whether the bar saw a trade: venues that publish sparse bars skip the others."""
        illiquid = self.market(series.symbol).illiquid
        key = _key(self._seed, series.symbol, series.timeframe, "traded")
        return illiquid <= 0 or _unit(key, int(_seconds(open_ts))) >= illiquid

    def _in_session(self, series: SeriesKey, open_ts: datetime) -> bool:
        return self.market(series.symbol).has_bar(series.tf, open_ts)

    def _maintained(self, series: SeriesKey, open_ts: datetime) -> Maintenance | None:
        if not self._maintenance:
            return None
        close = series.tf.close_time(open_ts)
        for window in self._maintenance:
            if window.covers(series.symbol, open_ts, close):
                return window
        return None

    def opens(self, series: SeriesKey, start: datetime, end: datetime) -> Iterator[datetime]:
        """Open times of the published bars with start <= open < end, oldest first."""
        genesis = self.genesis(series)
        if genesis is None:
            return
        tf = series.tf
        ts = tf.ceil(max(require_utc(start), genesis))
        end = require_utc(end)
        while ts < end:
            window = self._maintained(series, ts)
            if window is None:
                if self._in_session(series, ts):
                    yield ts
                ts = tf.add(ts, 1)
            else:  # skip the window in one step; the bar holding its end is published
                ts = max(tf.add(ts, 1), tf.floor(window.end))

    def opens_before(self, series: SeriesKey, end: datetime) -> Iterator[datetime]:
        """Open times of the published bars with open < end, newest first."""
        genesis = self.genesis(series)
        if genesis is None:
            return
        tf = series.tf
        ts = tf.add(tf.ceil(require_utc(end)), -1)
        while ts >= genesis:
            window = self._maintained(series, ts)
            if window is None:
                if self._in_session(series, ts):
                    yield ts
                ts = tf.add(ts, -1)
            else:  # the bar before the one holding the window's start is published
                ts = min(tf.add(ts, -1), tf.add(tf.ceil(window.start), -1))

    def candles(
        self,
        series: SeriesKey,
        start: datetime,
        end: datetime,
        now: datetime,
        *,
        sparse: bool = False,
    ) -> list[Candle]:
        """The closed bars with start <= open < end as of `now`: the test oracle.

        `sparse`: as a venue that publishes no bar without trades serves them.
        """
        closed_before = series.tf.floor(now)  # a bar opening before this has closed by now
        end = min(require_utc(end), closed_before)
        return [
            self.bar(series, ts)
            for ts in self.opens(series, start, end)
            if not sparse or self.traded(series, ts)
        ]

    def price(self, symbol: str, ts: datetime) -> float:
        """The continuous price path P(t)."""
        key = _key(self._seed, symbol, "path")
        t = _seconds(ts)
        log_p = _unit(key, -1) * math.log(50_000.0)  # a base price from 1 to 50k
        for period, amplitude in _OCTAVES:
            position = t / period
            k = math.floor(position)
            f = position - k
            smooth = f * f * (3.0 - 2.0 * f)
            octave_key = key ^ _mix(period)
            a = 2.0 * _knot(octave_key, k) - 1.0
            b = 2.0 * _knot(octave_key, k + 1) - 1.0
            log_p += amplitude * (a + (b - a) * smooth)
        return math.exp(log_p)

    def bar(self, series: SeriesKey, open_ts: datetime) -> Candle:
        """The final values of the bar opening at `open_ts` (published or not)."""
        return self._bars(series, open_ts)

    def _compute_bar(self, series: SeriesKey, open_ts: datetime) -> Candle:
        tf = series.tf
        close_ts = tf.close_time(open_ts)
        length = _seconds(close_ts) - _seconds(open_ts)
        o = self.price(series.symbol, open_ts)
        c = self.price(series.symbol, close_ts)
        key = _key(self._seed, series.symbol, series.timeframe, "bar")
        n = int(_seconds(open_ts))
        wick = _SIGMA * math.sqrt(length)
        high = max(o, c) * (1.0 + wick * _unit(key, 3 * n))
        low = min(o, c) * (1.0 - min(0.5, wick * _unit(key, 3 * n + 1)))
        # Around 50k quote currency traded a minute, whatever the price level.
        volume = 50_000.0 / 60.0 * length / o * (0.2 + 1.8 * _unit(key, 3 * n + 2))
        return self._candle(series, open_ts, o, high, low, c, volume)

    def partial(self, series: SeriesKey, open_ts: datetime, at: datetime) -> Candle:
        """The bar opening at `open_ts` as it stands at `at`, before it closes.

        Close follows the price path (kept inside the final range); high, low and
        volume grow towards their final values, so the closing frame never
        shows a range narrower than an earlier update.
        """
        final = self.bar(series, open_ts)
        length = _seconds(series.tf.close_time(open_ts)) - _seconds(open_ts)
        frac = min(1.0, max(0.0, (_seconds(at) - _seconds(open_ts)) / length))
        close = min(final.high, max(final.low, round(self.price(series.symbol, at), _DECIMALS)))
        top, bottom = max(final.open, close), min(final.open, close)
        return self._candle(
            series,
            open_ts,
            final.open,
            top + (final.high - top) * frac,
            bottom - (bottom - final.low) * frac,
            close,
            final.volume * frac,
        )

    @staticmethod
    def _candle(
        series: SeriesKey, ts: datetime, o: float, h: float, low: float, c: float, v: float
    ) -> Candle:
        # Rounding is monotone, so low <= min(open, close) and high >= max(...) survive it.
        o, h, low, c, v = (round(x, _DECIMALS) for x in (o, h, low, c, v))
        return Candle(series, ts, o, h, low, c, v)
