"""Load and validate `config.toml` into typed, comparable objects.

Every error names the key path (`series[1].profile: ...`) so that an operator
can fix the file without reading code. The objects are frozen dataclasses:
two configs compare equal when they mean the same thing, and `diff()` tells a
reload what changed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from candled.calendars import Overrides, load_overrides, validate_calendar
from candled.domain import DataProfile, SeriesKey, Timeframe
from candled.errors import CandledError
from candled.files import read_bounded
from candled.venues import Credentials, VenueCodec, VenueLimits, get_codec, known_kinds

EX_CONFIG = 78  # sysexits.h: configuration error
_DURATION = re.compile(r"^(\d+)(s|m|h|d|w)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# A century: more than any lookback or period needs, and short enough that
# "now - lookback" and every timer stay within what datetime and the loop hold.
MAX_DURATION = timedelta(days=36500)
# Files named by the config are read whole: past these sizes the path names
# something else (a log, /dev/zero), which would be read until memory runs out.
MAX_CONFIG_BYTES = 4 << 20
MAX_SECRET_BYTES = 64 << 10  # API keys and tokens are tens of bytes
# Counts (batch, rate_capacity, max_fills, ...): far above any real setting, and
# small enough for a float and a PostgreSQL integer to hold exactly.
MAX_COUNT = 1_000_000_000
# Symbols or timeframes in one [[series]]: each pair is a series with its own
# tasks and state; far more than a venue lists, few enough to check at once.
MAX_LIST = 10_000
# Venue names and symbols are stored with every candle and in the spool, and
# shown in logs and metrics; real symbols are under 20 characters.
MAX_NAME = 64
# A venue name: an identifier; ":" would make `VENUE:SYMBOL:TF` ambiguous.
_VENUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# A host name as RFC 1123 allows it: dot-separated labels of letters, digits
# and inner hyphens.
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
# Leases are renewed every third of their TTL: a second at least, and an
# instance stalled for an hour is not alive.
MIN_LEASE_TTL, MAX_LEASE_TTL = timedelta(seconds=3), timedelta(hours=1)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")

T = TypeVar("T")


class ConfigError(CandledError):
    """A config problem, located by its key path."""

    def __init__(self, path: str, reason: str) -> None:
        # The path holds key names from the file and the reason may quote a
        # value or a path: a megabyte-long key or one holding NUL, newlines or
        # terminal escapes still makes one printable line of bounded length.
        path, reason = _shorten(_printable(path), 200), _shorten(_printable(reason), 600)
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def parse_duration(text: str) -> timedelta:
    """Parse `"30s"`, `"15m"`, `"6h"`, `"200d"`, `"2w"`."""
    m = _DURATION.fullmatch(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(
            f'expected a duration like "30s", "15m", "6h" or "200d", got {_shorten(repr(text))}'
        )
    seconds = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    # Compared as integers: timedelta itself overflows on "999999999w".
    if seconds > MAX_DURATION.total_seconds():
        limit = format_duration(MAX_DURATION)
        raise ValueError(f'expected a duration of at most {limit}, got "{_shorten(text.strip())}"')
    return timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    """A duration as the config writes it (`"15m"`, `"2w"`), in the largest exact unit."""
    secs = int(td.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if secs % _DURATION_UNITS[unit] == 0:
            return f"{secs // _DURATION_UNITS[unit]}{unit}"
    return f"{secs}s"


def parse_hostport(text: str) -> tuple[str, int]:
    """`HOST:PORT` with HOST an IPv4 address, a host name or a bracketed IPv6
    address (`[::1]:8321`); the host is returned without brackets."""
    host, sep, port = text.rpartition(":")
    # isdigit() alone takes "²" and full-width digits, which int() then reads.
    if not sep or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(f'expected "HOST:PORT", got {_shorten(repr(text))}')
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{_shorten(repr(host))} is not an IPv6 address") from None
        return host[1:-1], int(port)
    if not host:
        raise ValueError(f'expected "HOST:PORT", got {_shorten(repr(text))}: the host is empty')
    if ":" in host:
        raise ValueError(
            f"an IPv6 address goes in brackets, as in [::1]:8321; got {_shorten(repr(text))}"
        )
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address") from None
    elif len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{_shorten(repr(host))} is not an IP address or host name")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether a listener on `host` is reachable from this machine only.
    Names other than localhost could resolve anywhere: they count as public."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DaemonConfig:
    """`[daemon]`: the health listener, logging, local state and shutdown bound."""

    health_listen: str = "127.0.0.1:8321"
    # /health and /metrics show every series, venue and error: serving them
    # beyond loopback (0.0.0.0, a LAN address) has to be asked for.
    health_public: bool = False
    log_level: str = "info"
    log_format: str = "json"
    state_dir: Path = Path("var")
    # SIGTERM: stop intake, flush, exit within this bound.
    shutdown_timeout: timedelta = timedelta(seconds=10)

    @property
    def health_addr(self) -> tuple[str, int]:
        """Where the health server binds, from `health_listen`."""
        return parse_hostport(self.health_listen)

    @property
    def health_is_public(self) -> bool:
        """Whether the health server would be reachable beyond this machine."""
        return not is_loopback(self.health_addr[0])


@dataclass(frozen=True)
class DatabaseConfig:
    """`[database]`: the PostgreSQL to use, or the embedded one."""

    dsn: str = ""  # empty: embedded PostgreSQL under state_dir


@dataclass(frozen=True)
class HealingConfig:
    """`[healing]`: how often and how far back the healer audits and repairs."""

    interval: timedelta = timedelta(minutes=15)
    # Every so often an audit scans each series' whole history, whatever the
    # incremental audits saw: a hole can arise anywhere (a dropped chunk, a
    # restored backup).
    full_audit_interval: timedelta = timedelta(hours=24)
    lookback: timedelta = timedelta(days=200)
    max_fills: int = 10
    # Empty answers after which a range is confirmed empty and never asked again.
    confirm_empty_after: int = 3
    # Local calendar corrections (closed days, early closes); "" for none.
    calendar_overrides: Path | None = None

    def overrides(self) -> Overrides | None:
        """The override file's contents (read now, so a reload picks up edits)."""
        if self.calendar_overrides is None:
            return None
        # Checked when the config was read, but the file may have changed since.
        return _read_overrides(self.calendar_overrides, "healing.calendar_overrides")


@dataclass(frozen=True)
class ClusterConfig:
    """`[cluster]`: instances sharing one database share the series by leases."""

    enabled: bool = False
    # A lease not renewed for this long is taken over; renewed every third of it.
    lease_ttl: timedelta = timedelta(seconds=30)
    instance: str = ""  # "" : this host's name and a hash of the state directory

    def instance_id(self, state_dir: Path) -> str:
        """This instance's id: `instance`, else stable across restarts of the
        same installation (host and state directory), so a restarted instance
        renews its own leases at once instead of waiting for them to expire.
        Two instances never share a state directory (its spool is locked)."""
        if self.instance:
            return self.instance
        digest = hashlib.blake2b(str(state_dir.resolve()).encode(), digest_size=3).hexdigest()
        return f"{socket.gethostname()}-{digest}"


@dataclass(frozen=True)
class VenueConfig:
    """One `[[venues]]` entry: where a venue is, how hard to ask it, and its keys."""

    name: str
    kind: str
    rest_url: str
    ws_url: str
    batch: int = 5
    rate_capacity: int = 6000
    rate_period: timedelta = timedelta(seconds=60)
    # A stream connection with no data frame for this long is reconnected.
    idle_timeout: timedelta = timedelta(seconds=30)
    # Venues polled for live bars: ask this long after each bar's close (a bar
    # the venue says is not final yet is asked for again until it settles).
    # Read from the config, else `default_poll_delay` of the venue's limits.
    poll_delay: timedelta = timedelta(seconds=2)
    # Instances behind one public IP share the venue's budget: each live
    # member of the cluster takes its fraction of rate_capacity.
    shared_budget: bool = False
    options: tuple[tuple[str, str], ...] = ()  # the codec's own settings, e.g. OANDA's price
    # Where the API key and secret come from (environment variable or file).
    api_key_env: str = ""
    api_key_file: str = ""
    api_secret_env: str = ""
    api_secret_file: str = ""
    # Resolved from the four above when the config is read; never printed.
    credentials: Credentials | None = field(default=None, repr=False)

    def codec(self) -> VenueCodec:
        """A fresh codec for this venue, with its credentials and options."""
        return get_codec(self.kind, self.name, self.credentials, dict(self.options))


@dataclass(frozen=True)
class SeriesConfig:
    """One `[[series]]` entry: symbols times timeframes on one venue."""

    venue: str
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    profile: DataProfile = DataProfile.CRYPTO
    calendar: str = ""
    live: bool = True
    lookback: timedelta | None = None  # None: [healing].lookback

    def series_keys(self) -> list[SeriesKey]:
        """Every series the entry names."""
        return [SeriesKey(self.venue, s, tf) for s in self.symbols for tf in self.timeframes]


@dataclass(frozen=True)
class SeriesSpec:
    """One configured series with the settings it inherits."""

    key: SeriesKey
    profile: DataProfile
    calendar: str
    live: bool
    lookback: timedelta


@dataclass(frozen=True)
class Config:
    """The whole validated config file; equal configs mean the same thing."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    healing: HealingConfig = field(default_factory=HealingConfig)
    venues: tuple[VenueConfig, ...] = ()
    series: tuple[SeriesConfig, ...] = ()
    source: Path | None = field(default=None, compare=False)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def venue(self, name: str) -> VenueConfig:
        """The venue called `name` (KeyError when none is)."""
        for v in self.venues:
            if v.name == name:
                return v
        raise KeyError(name)

    def series_specs(self) -> dict[SeriesKey, SeriesSpec]:
        """Every configured series with the lookback it inherits, by key."""
        return {
            key: SeriesSpec(key, s.profile, s.calendar, s.live, s.lookback or self.healing.lookback)
            for s in self.series
            for key in s.series_keys()
        }

    def diff(self, new: Config) -> ConfigDiff:
        """What a reload from `self` to `new` has to change."""
        old_v = {v.name: v for v in self.venues}
        new_v = {v.name: v for v in new.venues}
        old_s, new_s = self.series_specs(), new.series_specs()
        return ConfigDiff(
            venues_added=tuple(sorted(new_v.keys() - old_v.keys())),
            venues_removed=tuple(sorted(old_v.keys() - new_v.keys())),
            venues_changed=tuple(
                sorted(n for n in old_v.keys() & new_v.keys() if old_v[n] != new_v[n])
            ),
            series_added=tuple(sorted(new_s.keys() - old_s.keys())),
            series_removed=tuple(sorted(old_s.keys() - new_s.keys())),
            series_changed=tuple(
                sorted(k for k in old_s.keys() & new_s.keys() if old_s[k] != new_s[k])
            ),
            daemon_changed=self.daemon != new.daemon,
            database_changed=self.database != new.database,
            healing_changed=self.healing != new.healing,
            cluster_changed=self.cluster != new.cluster,
        )


@dataclass(frozen=True)
class ConfigDiff:
    """What changed between two configs: the work a SIGHUP reload has to do."""

    venues_added: tuple[str, ...] = ()
    venues_removed: tuple[str, ...] = ()
    venues_changed: tuple[str, ...] = ()
    series_added: tuple[SeriesKey, ...] = ()
    series_removed: tuple[SeriesKey, ...] = ()
    series_changed: tuple[SeriesKey, ...] = ()
    daemon_changed: bool = False
    database_changed: bool = False
    healing_changed: bool = False
    cluster_changed: bool = False

    @property
    def empty(self) -> bool:
        """Whether the reload has nothing to do."""
        return self == ConfigDiff()


# --- parsing -----------------------------------------------------------------


class _Table:
    """A TOML table being read: tracks the key path and rejects unknown keys."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(path, f"expected a table, got {_describe(raw)}")
        self.raw: dict[str, Any] = raw
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind: type[T], default: T | None = None) -> T:
        self.seen.add(name)
        if name not in self.raw:
            if default is None:
                raise ConfigError(self.key(name), "required key is missing")
            return default
        value = self.raw[name]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                self.key(name), f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}"
            )
        return value

    def convert(self, name: str, fn: Callable[[str], T], default: str | None = None) -> T:
        text = self.get(name, str, default)
        try:
            return fn(text)
        except ValueError as e:
            raise ConfigError(self.key(name), str(e)) from None

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.get(name, str, default)
        if value not in choices:
            raise ConfigError(
                self.key(name), f"expected one of {', '.join(choices)}, got {_quote(value)}"
            )
        return value

    def positive(self, name: str, default: int | None = None) -> int:
        value = self.get(name, int, default)
        if value < 1:
            raise ConfigError(self.key(name), f"expected a positive integer, got {_number(value)}")
        if value > MAX_COUNT:
            raise ConfigError(self.key(name), f"expected at most {MAX_COUNT}, got {_number(value)}")
        return value

    def strings(self, name: str, check: Callable[[str], object] | None = None) -> tuple[str, ...]:
        items = self.get(name, list)
        if not items:
            raise ConfigError(self.key(name), "expected a non-empty list")
        if len(items) > MAX_LIST:
            raise ConfigError(
                self.key(name), f"expected at most {MAX_LIST} entries, got {len(items)}"
            )
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise ConfigError(
                    f"{self.key(name)}[{i}]", f"expected a non-empty string, got {_describe(item)}"
                )
            if check is not None:
                try:
                    check(item)
                except ValueError as e:
                    raise ConfigError(f"{self.key(name)}[{i}]", str(e)) from None
        seen: set[str] = set()  # not items.count(): quadratic in a long list
        for item in items:
            if item in seen:
                raise ConfigError(self.key(name), f"duplicate entry {_quote(item)}")
            seen.add(item)
        return tuple(items)

    def done(self) -> None:
        unknown = sorted(self.raw.keys() - self.seen)
        if unknown:
            raise ConfigError(self.key(_show_key(unknown[0])), "unknown key")


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


def _describe(value: object) -> str:
    for kind, name in (
        (bool, "true or false"),
        (str, "a string"),
        (int, "an integer"),
        (float, "a float"),
    ):
        if isinstance(value, kind):
            shown = _number(value) if type(value) is int else _shorten(repr(value))
            return f"{name} ({shown})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _shorten(text: str, limit: int = 100) -> str:
    """A message quoting a value stays one readable line, however long the value."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _printable(text: str) -> str:
    """`text` with each unprintable character as its escape (NUL as \\x00)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _quote(value: str) -> str:
    """A string value in a message: in double quotes, or as Python shows it
    where it holds characters a terminal would not (NUL, escapes, newlines)."""
    return f'"{_shorten(value)}"' if value.isprintable() else _shorten(repr(value))


def _show_key(name: str) -> str:
    """A key from the file as a key path shows it: quoted where it is not plain text."""
    return name if name.isprintable() and len(name) <= MAX_NAME else _shorten(repr(name), MAX_NAME)


def _symbol(text: str) -> str:
    """A venue symbol: `BTCUSDT`, `BTC-USD`, `BTC/USD`, `EUR_USD`, `BRK.B`, and
    any letters (Binance lists some in Chinese), but nothing a URL, a log line,
    a file or `VENUE:SYMBOL:TF` would read differently."""
    if len(text) > MAX_NAME:
        raise ValueError(f"longer than {MAX_NAME} characters: {_shorten(repr(text), 40)}")
    for c in text:
        category = unicodedata.category(c)
        # Cc control, Cf format (zero-width), Cs surrogate, Co private, Cn unassigned.
        if category.startswith("C"):
            raise ValueError(f"contains a control character (U+{ord(c):04X}): {text!r}")
        if c.isspace() or category.startswith("Z"):
            raise ValueError(f"contains whitespace (U+{ord(c):04X}): {text!r}")
    if ":" in text:
        raise ValueError(f"contains ':', which separates VENUE:SYMBOL:TIMEFRAME: {text!r}")
    return text


def _instance(text: str) -> str:
    if text and not re.fullmatch(r"[A-Za-z0-9._:@-]{1,100}", text):
        raise ValueError(
            f"{_quote(text)}: up to 100 letters, digits and . _ : @ - (it names this instance"
            " in the lease tables and /health)"
        )
    return text


def _venue_name(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    if len(text) > MAX_NAME or not _VENUE_NAME.fullmatch(text):
        raise ValueError(
            f'expected a venue name: up to {MAX_NAME} letters, digits, ".", "_" or "-",'
            f" starting with a letter or digit; got {_shorten(repr(text), 80)}"
        )
    return text


def _path(text: str) -> str:
    """A file or directory path; a NUL would fail only when it is opened."""
    if "\0" in text:
        raise ValueError(f"a path cannot contain a NUL character: {_shorten(repr(text))}")
    return text


def _number(value: int) -> str:
    # TOML integers are unbounded, and str() refuses over 4300 digits.
    if -(10**30) < value < 10**30:
        return str(value)
    return f"an integer of about {round(value.bit_length() * 0.30103)} digits"


def _url(schemes: tuple[str, ...], optional: bool = False) -> Callable[[str], str]:
    def check(text: str) -> str:
        if optional and not text:
            return text
        if not text.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {_shorten(repr(text))}")
        return text.rstrip("/")

    return check


def _optional_table(root: _Table, name: str) -> _Table:
    root.seen.add(name)
    return _Table(root.raw.get(name, {}), name)


def _array_of_tables(root: _Table, name: str) -> list[_Table]:
    root.seen.add(name)
    items = root.raw.get(name, [])
    if not isinstance(items, list):
        raise ConfigError(name, f"expected an array of tables ([[{name}]]), got {_describe(items)}")
    return [_Table(item, f"{name}[{i}]") for i, item in enumerate(items)]


def _overrides_path(t: _Table) -> Path | None:
    text = t.convert("calendar_overrides", _path, "")
    if not text:
        return None
    _read_overrides(Path(text), t.key("calendar_overrides"))
    return Path(text)


def _read_overrides(path: Path, key: str) -> Overrides:
    """The override file's contents; any problem with it is a `ConfigError`
    naming `key`, the setting that points at it."""
    try:
        return load_overrides(path)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(key, str(e) or type(e).__name__) from None


def _secret(t: _Table, what: str, env: Mapping[str, str]) -> str:
    """The `api_<what>` from `api_<what>_env` or `api_<what>_file` ("" when neither is set)."""
    var = t.get(f"api_{what}_env", str, "")
    path = t.convert(f"api_{what}_file", _path, "")
    if var and path:
        raise ConfigError(
            t.key(f"api_{what}_file"), f"set api_{what}_env or api_{what}_file, not both"
        )
    if var:
        value = env.get(var, "").strip()
        if not value:
            raise ConfigError(t.key(f"api_{what}_env"), f"environment variable {var} is not set")
        return value
    if path:
        try:
            value = read_bounded(path, MAX_SECRET_BYTES, ": not a key").decode("utf-8").strip()
        except OSError as e:
            raise ConfigError(
                t.key(f"api_{what}_file"), f"cannot read {path}: {e.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(t.key(f"api_{what}_file"), f"{path} is not UTF-8 text") from None
        except ValueError as e:
            raise ConfigError(t.key(f"api_{what}_file"), str(e)) from None
        if not value:
            raise ConfigError(t.key(f"api_{what}_file"), f"{path} is empty")
        return value
    return ""


def _options(t: _Table) -> tuple[tuple[str, str], ...]:
    raw = t.get("options", dict, {}) if "options" in t.raw else {}
    t.seen.add("options")
    for name, value in raw.items():
        if not isinstance(value, str):
            raise ConfigError(
                t.key(f"options.{_show_key(name)}"), f"expected a string, got {_describe(value)}"
            )
    return tuple(sorted(raw.items()))


POLL_DELAY = timedelta(seconds=2)


def default_poll_delay(limits: VenueLimits) -> timedelta:
    """A venue's `poll_delay` where the config gives none: 2 s after the close,
    or the venue's settling time where that is shorter. Not the settling time
    itself where it is longer (OANDA: 120 s): a bar the venue still calls not
    final at the first poll is polled again until it settles (daemon/poller.py),
    so waiting longer for the first poll would only delay every live bar."""
    return min(POLL_DELAY, timedelta(seconds=limits.settling_s))


def _parse_venue(t: _Table, kinds: tuple[str, ...], env: Mapping[str, str]) -> VenueConfig:
    kind = t.choice("kind", kinds)
    codec = get_codec(kind)
    limits = codec.limits
    key, secret = _secret(t, "key", env), _secret(t, "secret", env)
    v = VenueConfig(
        name=t.convert("name", _venue_name),
        kind=kind,
        rest_url=t.convert("rest_url", _url(("http", "https"))),
        # Venues polled for live bars have no stream to connect to.
        ws_url=t.convert(
            "ws_url",
            _url(("ws", "wss"), optional=codec.stream is None),
            "" if codec.stream is None else None,
        ),
        batch=t.positive("batch", 5),
        rate_capacity=t.positive("rate_capacity", limits.rate_capacity),
        rate_period=t.convert(
            "rate_period", parse_duration, format_duration(timedelta(seconds=limits.rate_period_s))
        ),
        idle_timeout=t.convert("idle_timeout", parse_duration, "30s"),
        poll_delay=(
            t.convert("poll_delay", parse_duration)
            if "poll_delay" in t.raw
            else default_poll_delay(limits)
        ),
        shared_budget=t.get("shared_budget", bool, False),
        options=_options(t),
        api_key_env=t.get("api_key_env", str, ""),
        api_key_file=t.get("api_key_file", str, ""),
        api_secret_env=t.get("api_secret_env", str, ""),
        api_secret_file=t.get("api_secret_file", str, ""),
        credentials=Credentials(key, secret) if key else None,
    )
    t.done()
    if secret and not key:
        raise ConfigError(t.key("api_key_env"), "an api secret is set but no api key")
    if codec.needs_credentials and v.credentials is None:
        secret = " and api_secret_env or api_secret_file" if codec.needs_secret else ""
        raise ConfigError(
            t.path,
            f'venue "{v.name}" (kind {kind}) needs credentials: set api_key_env or api_key_file'
            + secret,
        )
    if codec.needs_secret and key and not secret:
        raise ConfigError(
            t.key("api_secret_env"),
            f'venue "{v.name}" (kind {kind}) needs an API secret with its key:'
            " set api_secret_env or api_secret_file",
        )
    try:
        v.codec()
    except ValueError as e:
        raise ConfigError(t.key("options"), str(e)) from None
    return v


def _parse_series(t: _Table, venues: Mapping[str, VenueConfig]) -> SeriesConfig:
    venue = t.get("venue", str)
    if venue not in venues:
        known = ", ".join(sorted(venues)) or "none configured"
        raise ConfigError(t.key("venue"), f"unknown venue {_quote(venue)} (venues: {known})")
    lookback = t.convert("lookback", parse_duration, "") if "lookback" in t.raw else None
    s = SeriesConfig(
        venue=venue,
        symbols=t.strings("symbols", _symbol),
        timeframes=t.strings("timeframes", Timeframe.parse),
        profile=DataProfile(t.choice("profile", tuple(DataProfile), "CRYPTO")),
        calendar=t.get("calendar", str, ""),
        live=t.get("live", bool, True),
        lookback=lookback,
    )
    try:
        validate_calendar(s.profile, s.calendar)
    except ValueError as e:
        raise ConfigError(t.key("calendar"), str(e)) from None
    codec = venues[venue].codec()
    for i, tf in enumerate(s.timeframes):
        if not codec.timeframe_supported(tf):
            raise ConfigError(
                f"{t.key('timeframes')}[{i}]",
                f'venue "{venue}" (kind {venues[venue].kind}) serves no {tf} bars',
            )
    t.done()
    return s


def parse_config(
    raw: Mapping[str, Any], source: Path | None = None, env: Mapping[str, str] = os.environ
) -> Config:
    """Build a `Config` from parsed TOML; raise `ConfigError` naming the bad key."""
    root = _Table(dict(raw), "")
    d = _optional_table(root, "daemon")
    daemon = DaemonConfig(
        health_listen=d.get("health_listen", str, DaemonConfig.health_listen),
        health_public=d.get("health_public", bool, False),
        log_level=d.choice("log_level", LOG_LEVELS, "info"),
        log_format=d.choice("log_format", LOG_FORMATS, "json"),
        state_dir=Path(d.convert("state_dir", _path, "var")),
        shutdown_timeout=d.convert("shutdown_timeout", parse_duration, "10s"),
    )
    try:
        public = daemon.health_is_public  # validated now, not when the server binds
    except ValueError as e:
        raise ConfigError(d.key("health_listen"), str(e)) from None
    if public and not daemon.health_public:
        raise ConfigError(
            d.key("health_listen"),
            f'"{daemon.health_listen}" serves /health and /metrics beyond this machine:'
            " set [daemon] health_public = true to allow it, or listen on 127.0.0.1",
        )
    d.done()

    db = _optional_table(root, "database")
    database = DatabaseConfig(dsn=db.get("dsn", str, ""))
    db.done()

    h = _optional_table(root, "healing")
    healing = HealingConfig(
        interval=h.convert("interval", parse_duration, "15m"),
        full_audit_interval=h.convert("full_audit_interval", parse_duration, "24h"),
        lookback=h.convert("lookback", parse_duration, "200d"),
        max_fills=h.positive("max_fills", 10),
        confirm_empty_after=h.positive("confirm_empty_after", 3),
        calendar_overrides=_overrides_path(h),
    )
    h.done()

    c = _optional_table(root, "cluster")
    cluster = ClusterConfig(
        enabled=c.get("enabled", bool, False),
        lease_ttl=c.convert("lease_ttl", parse_duration, "30s"),
        instance=c.convert("instance", _instance, ""),
    )
    if not MIN_LEASE_TTL <= cluster.lease_ttl <= MAX_LEASE_TTL:
        raise ConfigError(
            c.key("lease_ttl"),
            f"{format_duration(cluster.lease_ttl)} is out of range: between"
            f" {format_duration(MIN_LEASE_TTL)} and {format_duration(MAX_LEASE_TTL)}",
        )
    c.done()

    venues: dict[str, VenueConfig] = {}
    kinds = tuple(known_kinds())
    for t in _array_of_tables(root, "venues"):
        v = _parse_venue(t, kinds, env)
        if v.name in venues:
            raise ConfigError(t.key("name"), f'duplicate venue name "{v.name}"')
        venues[v.name] = v

    series: list[SeriesConfig] = []
    seen: dict[SeriesKey, str] = {}
    for t in _array_of_tables(root, "series"):
        s = _parse_series(t, venues)
        for key in s.series_keys():
            if key in seen:
                raise ConfigError(t.path, f"series {key} is already configured in {seen[key]}")
            seen[key] = t.path
        series.append(s)
    root.done()
    return Config(daemon, database, healing, tuple(venues.values()), tuple(series), source, cluster)


def _decode(path: Path, data: bytes) -> str:
    """The file's text; bytes that are not UTF-8 (TOML's only encoding) are
    a `ConfigError` naming the key whose value holds them, and the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        key = ""  # where the text is not TOML either, the line alone says where
        # ValueError: TOMLDecodeError, or an integer of over 4300 digits;
        # RecursionError: nesting deeper than tomllib (or _key_holding) recurses.
        with suppress(ValueError, RecursionError):
            key = _key_holding(tomllib.loads(data.decode("utf-8", errors="replace")), "\ufffd")
        reason = f"{path} line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save it as UTF-8"
        raise ConfigError(key, reason) from None


def _key_holding(value: object, text: str, path: str = "") -> str:
    """Path of the first key or string value containing `text` ("" for none)."""
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if text in k:
                return sub
            items.append((sub, v))
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, str) and text in value:
        return path
    for sub, v in items:
        if found := _key_holding(v, text, sub):
            return found
    return ""


def config_path(explicit: str | Path | None, env: Mapping[str, str] = os.environ) -> Path:
    """--config, else $CANDLED_CONFIG, else ./config.toml."""
    return Path(explicit or env.get("CANDLED_CONFIG") or "config.toml")


def load_config(explicit: str | Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Read the config file and apply environment overrides."""
    path = config_path(explicit, env)
    try:
        data = read_bounded(path, MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    except ValueError as e:
        raise ConfigError("", f"config file {e}") from None
    try:
        raw = tomllib.loads(_decode(path, data))
    except RecursionError:
        # tomllib recurses per nested array or inline table.
        raise ConfigError("", f"{path}: invalid TOML: nested too deeply") from None
    except ConfigError:
        raise
    except ValueError as e:
        # TOMLDecodeError, and ValueError for an integer of over 4300 digits.
        raise ConfigError("", f"{path}: invalid TOML: {e}") from None
    config = parse_config(raw, source=path, env=env)
    if env.get("CANDLED_DATABASE_URL"):
        config = replace(config, database=DatabaseConfig(dsn=env["CANDLED_DATABASE_URL"]))
    return config
