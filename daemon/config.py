"""Load and validate `config.toml` into typed, comparable objects.

Every error names the key path (`series[1].profile: ...`) so that an operator
can fix the file without reading code. The objects are frozen dataclasses:
two configs compare equal when they mean the same thing, and `diff()` tells a
reload what changed.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from daemon.calendars import Overrides, load_overrides, validate_calendar
from daemon.domain import DataProfile, SeriesKey, Timeframe
from daemon.venues import Credentials, VenueCodec, get_codec, known_kinds

EX_CONFIG = 78  # sysexits.h: configuration error
_DURATION = re.compile(r"^(\d+)(s|m|h|d|w)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# A century: more than any lookback or period needs, and short enough that
# "now - lookback" and every timer stay within what datetime and the loop hold.
MAX_DURATION = timedelta(days=36500)
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, located by its key path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def parse_duration(text: str) -> timedelta:
    """Parse `"30s"`, `"15m"`, `"6h"`, `"200d"`, `"2w"`."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f'expected a duration like "30s", "15m", "6h" or "200d", got {text!r}')
    seconds = int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    # Compared as integers: timedelta itself overflows on "999999999w".
    if seconds > MAX_DURATION.total_seconds():
        limit = format_duration(MAX_DURATION)
        raise ValueError(f'expected a duration of at most {limit}, got "{text.strip()}"')
    return timedelta(seconds=seconds)


def format_duration(td: timedelta) -> str:
    secs = int(td.total_seconds())
    for unit in ("w", "d", "h", "m"):
        if secs % _DURATION_UNITS[unit] == 0:
            return f"{secs // _DURATION_UNITS[unit]}{unit}"
    return f"{secs}s"


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'expected "HOST:PORT", got {text!r}')
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class DaemonConfig:
    health_listen: str = "127.0.0.1:8321"
    log_level: str = "info"
    log_format: str = "json"
    state_dir: Path = Path("var")
    # SIGTERM: stop intake, flush, exit within this bound.
    shutdown_timeout: timedelta = timedelta(seconds=10)

    @property
    def health_addr(self) -> tuple[str, int]:
        return parse_hostport(self.health_listen)


@dataclass(frozen=True)
class DatabaseConfig:
    dsn: str = ""  # empty: embedded PostgreSQL under state_dir


@dataclass(frozen=True)
class HealingConfig:
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
        return load_overrides(self.calendar_overrides) if self.calendar_overrides else None


@dataclass(frozen=True)
class VenueConfig:
    name: str
    kind: str
    rest_url: str
    ws_url: str
    batch: int = 5
    rate_capacity: int = 6000
    rate_period: timedelta = timedelta(seconds=60)
    # A stream connection with no data frame for this long is reconnected.
    idle_timeout: timedelta = timedelta(seconds=30)
    # Venues polled for live bars: ask this long after each bar's close.
    poll_delay: timedelta = timedelta(seconds=2)
    options: tuple[tuple[str, str], ...] = ()  # the codec's own settings, e.g. OANDA's price
    # Where the API key and secret come from (environment variable or file).
    api_key_env: str = ""
    api_key_file: str = ""
    api_secret_env: str = ""
    api_secret_file: str = ""
    # Resolved from the four above when the config is read; never printed.
    credentials: Credentials | None = field(default=None, repr=False)

    def codec(self) -> VenueCodec:
        return get_codec(self.kind, self.name, self.credentials, dict(self.options))


@dataclass(frozen=True)
class SeriesConfig:
    venue: str
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    profile: DataProfile = DataProfile.CRYPTO
    calendar: str = ""
    live: bool = True
    lookback: timedelta | None = None  # None: [healing].lookback

    def series_keys(self) -> list[SeriesKey]:
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
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    healing: HealingConfig = field(default_factory=HealingConfig)
    venues: tuple[VenueConfig, ...] = ()
    series: tuple[SeriesConfig, ...] = ()
    source: Path | None = field(default=None, compare=False)

    def venue(self, name: str) -> VenueConfig:
        for v in self.venues:
            if v.name == name:
                return v
        raise KeyError(name)

    def series_specs(self) -> dict[SeriesKey, SeriesSpec]:
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
        )


@dataclass(frozen=True)
class ConfigDiff:
    venues_added: tuple[str, ...] = ()
    venues_removed: tuple[str, ...] = ()
    venues_changed: tuple[str, ...] = ()
    series_added: tuple[SeriesKey, ...] = ()
    series_removed: tuple[SeriesKey, ...] = ()
    series_changed: tuple[SeriesKey, ...] = ()
    daemon_changed: bool = False
    database_changed: bool = False
    healing_changed: bool = False

    @property
    def empty(self) -> bool:
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
                self.key(name), f'expected one of {", ".join(choices)}, got "{value}"'
            )
        return value

    def positive(self, name: str, default: int | None = None) -> int:
        value = self.get(name, int, default)
        if value < 1:
            raise ConfigError(self.key(name), f"expected a positive integer, got {value}")
        return value

    def strings(self, name: str, check: Callable[[str], object] | None = None) -> tuple[str, ...]:
        items = self.get(name, list)
        if not items:
            raise ConfigError(self.key(name), "expected a non-empty list")
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
        if len(set(items)) != len(items):
            dup = next(x for x in items if items.count(x) > 1)
            raise ConfigError(self.key(name), f'duplicate entry "{dup}"')
        return tuple(items)

    def done(self) -> None:
        unknown = sorted(self.raw.keys() - self.seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


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
            return f"{name} ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _url(schemes: tuple[str, ...], optional: bool = False) -> Callable[[str], str]:
    def check(text: str) -> str:
        if optional and not text:
            return text
        if not text.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"expected a {' or '.join(schemes)} URL, got {text!r}")
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
    text = t.get("calendar_overrides", str, "")
    if not text:
        return None
    try:
        load_overrides(text)
    except OSError as e:
        raise ConfigError(
            t.key("calendar_overrides"), f"cannot read {text}: {e.strerror}"
        ) from None
    except ValueError as e:
        raise ConfigError(t.key("calendar_overrides"), str(e)) from None
    return Path(text)


def _secret(t: _Table, what: str, env: Mapping[str, str]) -> str:
    """The `api_<what>` from `api_<what>_env` or `api_<what>_file` ("" when neither is set)."""
    var, path = t.get(f"api_{what}_env", str, ""), t.get(f"api_{what}_file", str, "")
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
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(
                t.key(f"api_{what}_file"), f"cannot read {path}: {e.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise ConfigError(t.key(f"api_{what}_file"), f"{path} is not UTF-8 text") from None
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
                t.key(f"options.{name}"), f"expected a string, got {_describe(value)}"
            )
    return tuple(sorted(raw.items()))


def _parse_venue(t: _Table, kinds: tuple[str, ...], env: Mapping[str, str]) -> VenueConfig:
    kind = t.choice("kind", kinds)
    limits = get_codec(kind).limits
    key, secret = _secret(t, "key", env), _secret(t, "secret", env)
    v = VenueConfig(
        name=t.get("name", str),
        kind=kind,
        rest_url=t.convert("rest_url", _url(("http", "https"))),
        # Venues polled for live bars have no stream to connect to.
        ws_url=t.convert(
            "ws_url",
            _url(("ws", "wss"), optional=limits.live == "poll"),
            "" if limits.live == "poll" else None,
        ),
        batch=t.positive("batch", 5),
        rate_capacity=t.positive("rate_capacity", limits.rate_capacity),
        rate_period=t.convert(
            "rate_period", parse_duration, format_duration(timedelta(seconds=limits.rate_period_s))
        ),
        idle_timeout=t.convert("idle_timeout", parse_duration, "30s"),
        poll_delay=t.convert("poll_delay", parse_duration, "2s"),
        options=_options(t),
        api_key_env=t.get("api_key_env", str, ""),
        api_key_file=t.get("api_key_file", str, ""),
        api_secret_env=t.get("api_secret_env", str, ""),
        api_secret_file=t.get("api_secret_file", str, ""),
        credentials=Credentials(key, secret) if key else None,
    )
    t.done()
    if not v.name:
        raise ConfigError(t.key("name"), "must not be empty")
    if secret and not key:
        raise ConfigError(t.key("api_key_env"), "an api secret is set but no api key")
    if limits.needs_credentials and v.credentials is None:
        secret = " and api_secret_env or api_secret_file" if limits.needs_secret else ""
        raise ConfigError(
            t.path,
            f'venue "{v.name}" (kind {kind}) needs credentials: set api_key_env or api_key_file'
            + secret,
        )
    if limits.needs_secret and key and not secret:
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
        raise ConfigError(t.key("venue"), f'unknown venue "{venue}" (venues: {known})')
    lookback = t.convert("lookback", parse_duration, "") if "lookback" in t.raw else None
    s = SeriesConfig(
        venue=venue,
        symbols=t.strings("symbols"),
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
        log_level=d.choice("log_level", LOG_LEVELS, "info"),
        log_format=d.choice("log_format", LOG_FORMATS, "json"),
        state_dir=Path(d.get("state_dir", str, "var")),
        shutdown_timeout=d.convert("shutdown_timeout", parse_duration, "10s"),
    )
    try:
        daemon.health_addr  # noqa: B018 - validate now, not when the server binds
    except ValueError as e:
        raise ConfigError(d.key("health_listen"), str(e)) from None
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
    return Config(daemon, database, healing, tuple(venues.values()), tuple(series), source)


def _decode(path: Path, data: bytes) -> str:
    """The file's text; bytes that are not UTF-8 (TOML's only encoding) are
    a `ConfigError` naming the key whose value holds them, and the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        key = ""  # where the text is not TOML either, the line alone says where
        with suppress(tomllib.TOMLDecodeError):
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
        raw = tomllib.loads(_decode(path, path.read_bytes()))
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{path}: invalid TOML: {e}") from None
    config = parse_config(raw, source=path, env=env)
    if env.get("CANDLED_DATABASE_URL"):
        config = replace(config, database=DatabaseConfig(dsn=env["CANDLED_DATABASE_URL"]))
    return config
