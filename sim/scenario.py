"""Scenarios for the simulated exchange, read from TOML.

Every key is optional; unknown keys are an error. Durations are strings such as
`"250ms"`, `"30s"`, `"15m"`, `"6h"`, `"3d"`, or plain numbers of seconds. Times
are TOML datetimes with an offset, RFC 3339 strings (`"2024-01-01T00:00:00Z"`),
or offsets from the moment the scenario is loaded (`"-2h"`, `"+10m"`).

```toml
seed = 42                      # drives prices, volumes and random faults

[rest]
weight_per_minute = 6000       # request weight budget per client IP per minute
ban = "2m"                     # first IP ban (418); each further ban doubles it ...
max_ban = "3d"                 # ... up to this

[ws]
update_interval = "1s"         # period of the kline updates pushed per stream
ping_interval = "20s"          # period of the server's ping frames
max_connection_age = "24h"     # the server closes a connection this old
max_incoming_per_s = 5         # more client messages than this in a second: disconnect

[[symbols]]                    # default: BTCUSDT and ETHUSDT, listed 2017-08-17T04:00Z
symbol = "BTCUSDT"
listed = "-2h"                 # listing time (default 2017-08-17T04:00Z): the first bar
                               # of each timeframe is the one holding it
profile = "EQUITY"             # CRYPTO (default, 24/7), EQUITY, FUTURES or FOREX: bars
calendar = "XNYS"              # exist only where they overlap the calendar's sessions, taken
                               # from the simulator's own table (sim/sessions.py:
                               # XNYS or NYSE, CME_Equity; sessions dated 2023-2027)
illiquid = 0.1                 # fraction of bars without trades: sparse venues skip them

[[maintenance]]                # bars lying wholly inside the window are not published
start = "-30m"
end = "-20m"
symbols = ["BTCUSDT"]          # default: every symbol

# Faults. A trigger is `every = N` (the Nth, 2Nth, ... event) or
# `probability = p` (each event, drawn from `seed`); without either, it is off.
[faults.http_errors]           # 5xx bursts on /api/v3/klines
every = 10
burst = 3                      # consecutive requests answered with the error (default 1)
status = 503                   # default 503
[faults.connection_resets]     # /api/v3/klines: connection closed without an answer
probability = 0.05
[faults.slow_responses]        # /api/v3/klines answered late
every = 4
delay = "2s"                   # default "1s"
[faults.ws_drop]               # WebSocket connections dropped (no close frame) ...
every = "30s"                  # ... this long after they opened
[faults.ws_idle]               # a connection goes silent once ...
after = "10s"                  # ... this long after it opened ...
duration = "20s"               # ... for this long (default "30s")
pings = true                   # still send pings while silent (false: nothing at all)
[faults.lost_closing_frames]   # closing (`x: true`) kline frames never sent
every = 5
[faults.malformed_frames]      # a malformed frame sent before a kline frame
probability = 0.1
[faults.html_errors]           # /api/v3/klines: a CDN's HTML error page instead of an answer
every = 6
statuses = [502, 503, 403]     # used in turn (default [502]); 403 or 5xx
[faults.non_json]              # /api/v3/klines: 200 with a body that is not JSON, in turn
every = 9                      # an HTML page and a proxy's plain-text complaint
[faults.truncated_bodies]      # /api/v3/klines: 200 cut short, in turn: the JSON cut mid-array
every = 7                      # (a complete HTTP answer), and the connection closed mid-body
[faults.oversized_bodies]      # /api/v3/klines: 200 with a valid `[]` padded past a size bound
every = 11
size = 33555456                # bytes (default: 1 KiB past candled's default bound)
[faults.never_answers]         # /api/v3/klines: the request is read and never answered
every = 13                     # (until the client hangs up)
[faults.http_storm]            # every /api/v3/klines request inside the window gets a 5xx
start = "+1m"
duration = "3m"                # default "2m"
status = 502                   # default 503
[faults.foreign_frames]        # a closing kline frame of a stream the connection did not
every = 4                      # subscribe to, sent before a kline frame
[faults.ws_mute]               # the Nth, 2Nth, ... WebSocket connection is accepted, then
every = 3                      # nothing is ever sent on it: no data, replies, pings or close

# Venue personalities' knobs: only the personality named applies its table.
[alpaca]                       # the key's plan and the venue's quirks
page_bars = 100                # a page holds at most this many bars whatever `limit` asks,
                               # with a next_page_token (default: `limit` alone)
endless_pages = false          # true: every page carries a token, the last too, for ever
feeds = ["iex", "sip"]         # feeds the key's plan includes (default both; others: 409)
symbol_limit = 30              # symbols one stream connection may subscribe (default: any)
correction_delay = "30s"       # a corrected minute bar ("u") follows its bar this late
[oanda]
settle = "20s"                 # a closed candle is `complete` this long after its close
[kraken]                       # (default 0: at once)
settle = "20s"                 # OHLC's last entry stays uncommitted this long after its close
```
"""

from __future__ import annotations

import math
import re
import reprlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from candled.domain import DataProfile
from candled.domain.timeframe import require_utc
from candled_sim.sessions import calendar_name
from candled_sim.truth import Maintenance, Market

T = TypeVar("T")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0}
_BINANCE_LAUNCH = datetime(2017, 8, 17, 4, tzinfo=UTC)
_ALPACA_FEEDS = ("iex", "sip")  # Alpaca's stock stream feeds (`/v2/iex`, `/v2/sip`)


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the bad key."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """When a fault fires: every Nth event, or with a probability per event."""

    every: int = 0
    probability: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether the fault can fire at all."""
        return self.every > 0 or self.probability > 0


@dataclass(frozen=True, slots=True)
class Faults:
    """The scenario's `[faults]`: which faults fire when, and how they look."""

    http_errors: Trigger = Trigger()
    http_error_burst: int = 1
    http_error_status: int = 503
    connection_resets: Trigger = Trigger()
    slow_responses: Trigger = Trigger()
    slow_delay_s: float = 1.0
    ws_drop_after_s: float | None = None
    ws_idle_after_s: float | None = None
    ws_idle_duration_s: float = 30.0
    ws_idle_pings: bool = True
    lost_closing_frames: Trigger = Trigger()
    malformed_frames: Trigger = Trigger()
    html_errors: Trigger = Trigger()
    html_error_statuses: tuple[int, ...] = (502,)
    non_json: Trigger = Trigger()
    truncated_bodies: Trigger = Trigger()
    oversized_bodies: Trigger = Trigger()
    # Past the daemon's bound on a body (32 MiB, `candled.fetch.MAX_BODY`), which
    # a test asserts; the simulator does not import the daemon's drivers.
    oversized_size: int = 32 * 1024 * 1024 + 1024
    never_answers: Trigger = Trigger()
    storm_start: datetime | None = None  # None: no storm
    storm_duration_s: float = 120.0
    storm_status: int = 503
    foreign_frames: Trigger = Trigger()
    ws_mute: Trigger = Trigger()

    def storm_at(self, now: datetime) -> bool:
        """Whether `now` lies inside the 5xx storm."""
        if self.storm_start is None:
            return False
        return 0 <= (now - self.storm_start).total_seconds() < self.storm_duration_s


@dataclass(frozen=True, slots=True)
class AlpacaKnobs:
    """The Alpaca personality's key plan and quirks (`[alpaca]`)."""

    page_bars: int | None = None  # a page's most bars whatever `limit` asks (None: `limit`)
    endless_pages: bool = False  # every page carries a `next_page_token`, the last too
    feeds: tuple[str, ...] = _ALPACA_FEEDS  # feeds the key's plan includes (others: 409)
    symbol_limit: int | None = None  # symbols a stream connection may subscribe (405)
    correction_delay_s: float = 30.0  # corrected minute bars ("u") this long after the "b"


@dataclass(frozen=True, slots=True)
class SettleKnobs:
    """A venue whose answer about a bar is final only `settle_s` after the bar's
    close (`[oanda]`, `[kraken]`; see `candled_sim.personality.Settling`)."""

    settle_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """What the simulated exchange serves and how it misbehaves: its symbols and
    their markets, maintenance, limits, stream timing, faults and venue knobs."""

    listings: Mapping[str, datetime] = field(
        default_factory=lambda: {"BTCUSDT": _BINANCE_LAUNCH, "ETHUSDT": _BINANCE_LAUNCH}
    )
    maintenance: tuple[Maintenance, ...] = ()
    markets: Mapping[str, Market] = field(default_factory=dict)  # default: 24/7, liquid
    seed: int = 0
    weight_per_minute: int = 6000
    ban_s: float = 120.0
    max_ban_s: float = 3 * 86_400.0
    update_interval_s: float = 1.0
    ping_interval_s: float = 20.0
    max_connection_age_s: float = 86_400.0
    max_incoming_per_s: int = 5
    faults: Faults = Faults()
    alpaca: AlpacaKnobs = AlpacaKnobs()
    oanda: SettleKnobs = SettleKnobs()
    kraken: SettleKnobs = SettleKnobs()


def load_scenario(path: Path, now: datetime) -> Scenario:
    """Read a scenario file; relative times are taken from `now`."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    # ValueError: TOMLDecodeError, a file that is not UTF-8 (UnicodeDecodeError),
    # an integer past Python's digit limit; RecursionError: arrays or inline
    # tables nested deeper than the interpreter's recursion limit.
    except (OSError, ValueError, RecursionError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    return parse_scenario(data, now)


def parse_scenario(data: Mapping[str, object], now: datetime) -> Scenario:
    """A scenario from a parsed TOML document; relative times are taken from `now`."""
    now = require_utc(now)
    root = _Table(data, "", now)
    rest, ws, faults = root.table("rest"), root.table("ws"), root.table("faults")
    alpaca, oanda, kraken = root.table("alpaca"), root.table("oanda"), root.table("kraken")
    defaults = Scenario()
    listings = dict(defaults.listings)
    markets: dict[str, Market] = {}
    if "symbols" in data:
        listings = {}
        for table in root.tables("symbols"):
            symbol = table.require("symbol", str)
            listings[symbol] = table.time("listed", _BINANCE_LAUNCH)
            markets[symbol] = _market(table)
            table.done()
        if not listings:
            raise ScenarioError("symbols: at least one symbol is needed")
    scenario = Scenario(
        listings=listings,
        markets=markets,
        maintenance=tuple(_maintenance(t) for t in root.tables("maintenance")),
        seed=root.get("seed", int, defaults.seed),
        weight_per_minute=rest.positive("weight_per_minute", defaults.weight_per_minute),
        ban_s=rest.duration("ban", defaults.ban_s),
        max_ban_s=rest.duration("max_ban", defaults.max_ban_s),
        update_interval_s=ws.duration("update_interval", defaults.update_interval_s),
        ping_interval_s=ws.duration("ping_interval", defaults.ping_interval_s),
        max_connection_age_s=ws.duration("max_connection_age", defaults.max_connection_age_s),
        max_incoming_per_s=ws.positive("max_incoming_per_s", defaults.max_incoming_per_s),
        faults=_faults(faults),
        alpaca=_alpaca(alpaca),
        oanda=SettleKnobs(oanda.duration("settle", 0.0, allow_zero=True)),
        kraken=SettleKnobs(kraken.duration("settle", 0.0, allow_zero=True)),
    )
    for table in (rest, ws, faults, alpaca, oanda, kraken, root):
        table.done()
    return scenario


def _alpaca(table: _Table) -> AlpacaKnobs:
    defaults = AlpacaKnobs()
    feeds = table.get("feeds", list, list(defaults.feeds))
    if not all(isinstance(feed, str) and feed in _ALPACA_FEEDS for feed in feeds):
        known = ", ".join(_ALPACA_FEEDS)
        raise ScenarioError(f"{table.path}feeds: expected a list of feeds ({known})")
    return AlpacaKnobs(
        page_bars=table.optional_positive("page_bars"),
        endless_pages=table.get("endless_pages", bool, defaults.endless_pages),
        feeds=tuple(feeds),
        symbol_limit=table.optional_positive("symbol_limit"),
        correction_delay_s=table.duration("correction_delay", defaults.correction_delay_s),
    )


def _market(table: _Table) -> Market:
    profile_name = table.get("profile", str, DataProfile.CRYPTO.value)
    calendar = table.get("calendar", str, "")
    illiquid = table.number("illiquid", 0.0)
    try:
        profile = DataProfile(profile_name)
        calendar_name(profile, calendar)  # only calendars the session table knows
    except ValueError as exc:
        raise ScenarioError(f"{table.path}: {exc}") from None
    if not 0.0 <= illiquid < 1.0:
        raise ScenarioError(f"{table.path}illiquid: expected a fraction in [0, 1)")
    return Market(profile, calendar, illiquid)


def _maintenance(table: _Table) -> Maintenance:
    start, end = table.require_time("start"), table.require_time("end")
    symbols = table.get("symbols", list, [])
    if not all(isinstance(s, str) for s in symbols):
        raise ScenarioError(f"{table.path}symbols: expected a list of symbols")
    if end <= start:
        raise ScenarioError(f"{table.path}end: must be after start")
    table.done()
    return Maintenance(start, end, frozenset(symbols))


def _faults(faults: _Table) -> Faults:
    http, resets, slow = (
        faults.table(k) for k in ("http_errors", "connection_resets", "slow_responses")
    )
    drop, idle = faults.table("ws_drop"), faults.table("ws_idle")
    lost, malformed = faults.table("lost_closing_frames"), faults.table("malformed_frames")
    html, non_json, truncated, oversized, hang, storm, foreign, mute = (
        faults.table(k)
        for k in ("html_errors", "non_json", "truncated_bodies", "oversized_bodies",
                  "never_answers", "http_storm", "foreign_frames", "ws_mute")
    )  # fmt: skip
    defaults = Faults()
    statuses = html.get("statuses", list, list(defaults.html_error_statuses))
    if not statuses or not all(
        isinstance(s, int) and (s == 403 or 500 <= s <= 599) for s in statuses
    ):
        raise ScenarioError(f"{html.path}statuses: expected a list of 403 or 5xx statuses")
    result = Faults(
        http_errors=http.trigger(),
        http_error_burst=http.positive("burst", defaults.http_error_burst),
        http_error_status=_status_5xx(http, defaults.http_error_status),
        connection_resets=resets.trigger(),
        slow_responses=slow.trigger(),
        slow_delay_s=slow.duration("delay", defaults.slow_delay_s),
        # An empty table is the fault switched off; a filled one needs its timing.
        ws_drop_after_s=drop.require_duration("every") if drop else None,
        ws_idle_after_s=idle.require_duration("after") if idle else None,
        ws_idle_duration_s=idle.duration("duration", defaults.ws_idle_duration_s),
        ws_idle_pings=idle.get("pings", bool, defaults.ws_idle_pings),
        lost_closing_frames=lost.trigger(),
        malformed_frames=malformed.trigger(),
        html_errors=html.trigger(),
        html_error_statuses=tuple(statuses),
        non_json=non_json.trigger(),
        truncated_bodies=truncated.trigger(),
        oversized_bodies=oversized.trigger(),
        oversized_size=oversized.positive("size", defaults.oversized_size),
        never_answers=hang.trigger(),
        storm_start=storm.require_time("start") if storm else None,
        storm_duration_s=storm.duration("duration", defaults.storm_duration_s),
        storm_status=_status_5xx(storm, defaults.storm_status),
        foreign_frames=foreign.trigger(),
        ws_mute=mute.trigger(),
    )
    for table in (http, resets, slow, drop, idle, lost, malformed, html, non_json, truncated,
                  oversized, hang, storm, foreign, mute):  # fmt: skip
        table.done()
    return result


def _status_5xx(table: _Table, default: int) -> int:
    status = table.get("status", int, default)
    if not 500 <= status <= 599:
        raise ScenarioError(f"{table.path}status: expected a 5xx status, got {status}")
    return status


class _Table:
    """Typed reads from one TOML table that remember which keys were used."""

    def __init__(self, data: Mapping[str, object], path: str, now: datetime) -> None:
        self._data = data
        self._unused = set(data)
        self.path = path
        self._now = now

    def _take(self, key: str) -> object:
        self._unused.discard(key)
        return self._data[key]

    def get(self, key: str, kind: type[T], default: T) -> T:
        if key not in self._data:
            return default
        value = self._take(key)
        # bool is an int subclass: `seed = true` is a mistake, not 1.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ScenarioError(f"{self.path}{key}: expected {kind.__name__}, got {_shown(value)}")
        return value

    def require(self, key: str, kind: type[T]) -> T:
        if key not in self._data:
            raise ScenarioError(f"{self.path}{key}: missing")
        return self.get(key, kind, kind())

    def number(self, key: str, default: float) -> float:
        if key not in self._data:
            return default
        value = self._take(key)
        number = _finite(value)
        if number is None:
            raise ScenarioError(f"{self.path}{key}: expected a finite number, got {_shown(value)}")
        return number

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value < 1:
            raise ScenarioError(f"{self.path}{key}: must be at least 1, got {value}")
        return value

    def optional_positive(self, key: str) -> int | None:
        return self.positive(key, 1) if key in self._data else None

    def __bool__(self) -> bool:
        return bool(self._data)

    def duration(self, key: str, default: float, *, allow_zero: bool = False) -> float:
        if key not in self._data:
            return default
        return self.require_duration(key, allow_zero=allow_zero)

    def require_duration(self, key: str, *, allow_zero: bool = False) -> float:
        if key not in self._data:
            raise ScenarioError(f"{self.path}{key}: missing")
        value = self._take(key)
        seconds = _duration_s(value)
        if seconds is None or seconds < 0 or (seconds == 0 and not allow_zero):
            kind = "a duration" if allow_zero else "a positive duration"
            raise ScenarioError(f"{self.path}{key}: expected {kind}, got {_shown(value)}")
        return seconds

    def time(self, key: str, default: datetime) -> datetime:
        return self.require_time(key) if key in self._data else default

    def require_time(self, key: str) -> datetime:
        if key not in self._data:
            raise ScenarioError(f"{self.path}{key}: missing")
        value = self._take(key)
        ts = _time(value, self._now)
        if ts is None:
            raise ScenarioError(
                f"{self.path}{key}: expected a time with offset or '-2h'/'+10m',"
                f" got {_shown(value)}"
            )
        return ts

    def trigger(self) -> Trigger:
        every = self.get("every", int, 0)
        probability = self.number("probability", 0.0)
        if every < 0 or not 0.0 <= probability <= 1.0:
            raise ScenarioError(f"{self.path}: every must be >= 0 and probability in [0, 1]")
        if every and probability:
            raise ScenarioError(f"{self.path}: give either every or probability, not both")
        return Trigger(every, probability)

    def table(self, key: str) -> _Table:
        value = self.get(key, dict, {})
        return _Table(value, f"{self.path}{key}.", self._now)

    def tables(self, key: str) -> list[_Table]:
        items = self.get(key, list, [])
        if not all(isinstance(item, dict) for item in items):
            raise ScenarioError(f"{self.path}{key}: expected an array of tables ([[{key}]])")
        return [_Table(item, f"{self.path}{key}[{i}].", self._now) for i, item in enumerate(items)]

    def done(self) -> None:
        if self._unused:
            keys = ", ".join(f"{self.path}{key}" for key in sorted(self._unused))
            raise ScenarioError(f"unknown key(s): {keys}")


def _finite(value: object) -> float | None:
    """`value` as a finite float, or None (bool, not a number, NaN, inf, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # TOML integers have no bound
        return None
    return number if math.isfinite(number) else None


def _duration_s(value: object) -> float | None:
    if isinstance(value, int | float):
        seconds = _finite(value)
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]  # "9999...9d" is inf
    else:
        return None
    # A timer of infinite (or NaN) seconds would never fire, or fire at once.
    return seconds if seconds is not None and math.isfinite(seconds) else None


def _time(value: object, now: datetime) -> datetime | None:
    """`value` as a UTC time, or None; None too where it lies outside years 1-9999
    (a datetime at 0001-01-01T00:00+01:00 is in year 0 in UTC)."""
    try:
        return _utc_time(value, now)
    except OverflowError:
        return None


def _utc_time(value: object, now: datetime) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo is not None else None
    if not isinstance(value, str) or not value:
        return None
    if value[0] in "+-":
        seconds = _duration_s(value[1:])
        if seconds is None:
            return None
        return now + timedelta(seconds=seconds if value[0] == "+" else -seconds)
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts.astimezone(UTC) if ts.tzinfo is not None else None


# Error messages quote the bad value, bounded: it may be long or deeply nested.
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60


def _shown(value: object) -> str:
    return _SHOWN.repr(value)
