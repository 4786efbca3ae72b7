"""Config loading: every kind of error names its key path; check-config exits 78."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config, parse_config
from daemon.domain import DataProfile, SeriesKey

REPO = Path(__file__).resolve().parents[1]

GOOD = """
[daemon]
health_listen = "127.0.0.1:8321"
log_level = "info"
log_format = "json"
state_dir = "var"

[database]
dsn = ""

[healing]
interval = "15m"
lookback = "200d"
max_fills = 10

[[venues]]
name = "binance"
kind = "binance"
rest_url = "https://data-api.binance.vision"
ws_url = "wss://data-stream.binance.vision"
batch = 5
rate_capacity = 6000
rate_period = "60s"

[[series]]
venue = "binance"
symbols = ["BTCUSDT", "ETHUSDT"]
timeframes = ["1m"]
profile = "CRYPTO"
calendar = ""
live = true
lookback = "200d"

[[series]]
venue = "binance"
symbols = ["SOLUSDT"]
timeframes = ["1m", "1h"]
profile = "CRYPTO"
live = false
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_design_example_loads(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, GOOD), env={})
    assert c.healing.interval == timedelta(minutes=15)
    assert c.healing.lookback == timedelta(days=200)
    assert c.venues[0].rate_period == timedelta(seconds=60)
    specs = c.series_specs()
    assert set(specs) == {
        SeriesKey("binance", "BTCUSDT", "1m"),
        SeriesKey("binance", "ETHUSDT", "1m"),
        SeriesKey("binance", "SOLUSDT", "1m"),
        SeriesKey("binance", "SOLUSDT", "1h"),
    }
    assert specs[SeriesKey("binance", "SOLUSDT", "1h")].live is False
    assert specs[SeriesKey("binance", "BTCUSDT", "1m")].profile is DataProfile.CRYPTO


def test_shipped_config_is_valid() -> None:
    c = load_config(REPO / "config.toml", env={})
    assert c.venues and c.series


def test_defaults_apply_when_sections_are_absent() -> None:
    c = parse_config({})
    assert c.daemon.health_listen == "127.0.0.1:8321"
    assert c.healing.max_fills == 10
    assert c.database.dsn == ""


def replace_line(old: str, new: str, nth: int = 0) -> str:
    parts = GOOD.split(old)
    assert len(parts) > nth + 1, old
    return old.join(parts[: nth + 1]) + new + old.join(parts[nth + 1 :])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            replace_line('profile = "CRYPTO"', 'profile = "CRYPT"', 1),
            'series[1].profile: expected one of CRYPTO, EQUITY, FUTURES, FOREX, got "CRYPT"',
        ),
        (GOOD + "\n[extra]\nx = 1\n", "extra: unknown key"),
        (
            replace_line("max_fills = 10", "max_fills = 10\nmax_filz = 3"),
            "healing.max_filz: unknown key",
        ),
        (
            replace_line("batch = 5", 'batch = "5"'),
            "venues[0].batch: expected an integer, got a string ('5')",
        ),
        (
            replace_line("batch = 5", "batch = 0"),
            "venues[0].batch: expected a positive integer, got 0",
        ),
        (replace_line("live = true", 'live = "yes"'), "series[0].live: expected true or false"),
        (
            replace_line('interval = "15m"', 'interval = "15 minutes"'),
            "healing.interval: expected a duration",
        ),
        (
            replace_line('log_level = "info"', 'log_level = "loud"'),
            'daemon.log_level: expected one of debug, info, warning, error, got "loud"',
        ),
        (replace_line('kind = "binance"', 'kind = "binanse"'), "venues[0].kind: expected one of"),
        (
            replace_line('ws_url = "wss', 'ws_url = "https'),
            "venues[0].ws_url: expected a ws or wss URL",
        ),
        (
            replace_line('health_listen = "127.0.0.1:8321"', 'health_listen = "8321"'),
            'daemon.health_listen: expected "HOST:PORT"',
        ),
        (
            replace_line('timeframes = ["1m"]', 'timeframes = ["1m", "7m"]'),
            "series[0].timeframes[1]: unknown timeframe '7m'",
        ),
        (
            replace_line('symbols = ["BTCUSDT", "ETHUSDT"]', "symbols = []"),
            "series[0].symbols: expected a non-empty list",
        ),
        (
            replace_line('venue = "binance"', 'venue = "kraken"', 1),
            'series[1].venue: unknown venue "kraken"',
        ),
        (
            GOOD
            + '\n[[venues]]\nname = "binance"\nkind = "binance"\nrest_url = "http://x"\nws_url = "ws://x"\n',
            'venues[1].name: duplicate venue name "binance"',
        ),
        (
            GOOD + '\n[[series]]\nvenue = "binance"\nsymbols = ["BTCUSDT"]\ntimeframes = ["1m"]\n',
            "series[2]: series binance:BTCUSDT:1m is already configured in series[0]",
        ),
        (
            replace_line('rest_url = "https://data-api.binance.vision"\n', ""),
            "venues[0].rest_url: required key is missing",
        ),
        ("[daemon\n", "invalid TOML"),
        (
            replace_line(
                'profile = "CRYPTO"\ncalendar = ""', 'profile = "EQUITY"\ncalendar = "NOPE"'
            ),
            "series[0].calendar: unknown calendar 'NOPE'",
        ),
        (
            replace_line('calendar = ""', 'calendar = "XNYS"'),
            "series[0].calendar: calendar 'XNYS': CRYPTO series",
        ),
        (
            replace_line(
                "max_fills = 10", 'max_fills = 10\ncalendar_overrides = "/nonexistent.toml"'
            ),
            "healing.calendar_overrides: cannot read /nonexistent.toml",
        ),
        (
            replace_line("batch = 5", 'batch = 5\noptions = { price = "B" }'),
            "venues[0].options: binance takes no options, got price",
        ),
        (
            replace_line("batch = 5", 'batch = 5\napi_key_env = "CANDLED_TEST_UNSET_KEY"'),
            "venues[0].api_key_env: environment variable CANDLED_TEST_UNSET_KEY is not set",
        ),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert message in str(e.value)


def test_timeframes_the_venue_does_not_serve_are_refused(tmp_path: Path) -> None:
    text = GOOD + (
        '\n[[venues]]\nname = "cb"\nkind = "coinbase"\nrest_url = "http://x"\nws_url = "ws://x"\n'
        '\n[[series]]\nvenue = "cb"\nsymbols = ["BTC-USD"]\ntimeframes = ["1m", "4h"]\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert str(e.value) == 'series[2].timeframes[1]: venue "cb" (kind coinbase) serves no 4h bars'


def test_a_polled_venue_needs_no_stream_url(tmp_path: Path) -> None:
    polled = '\n[[venues]]\nname = "cb"\nkind = "coinbase"\nrest_url = "http://x"\n'
    assert load_config(write(tmp_path, GOOD + polled), env={}).venue("cb").ws_url == ""
    streamed = polled.replace("coinbase", "kraken")
    with pytest.raises(ConfigError, match=r"venues\[1\].ws_url: required key is missing"):
        load_config(write(tmp_path, GOOD + streamed), env={})


def test_environment_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    env = {"CANDLED_CONFIG": str(path), "CANDLED_DATABASE_URL": "postgresql://u@h/db"}
    c = load_config(None, env=env)
    assert c.source == path
    assert c.database.dsn == "postgresql://u@h/db"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(None, env={"CANDLED_CONFIG": str(tmp_path / "nope.toml")})


def test_configs_compare_and_diff(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, GOOD), env={})
    b = load_config(write(tmp_path, GOOD), env={})
    assert a == b and a.diff(b).empty
    changed = GOOD.replace('symbols = ["SOLUSDT"]', 'symbols = ["ADAUSDT"]').replace(
        "batch = 5", "batch = 2"
    )
    c = load_config(write(tmp_path, changed), env={})
    d = a.diff(c)
    assert a != c
    assert d.series_added == (
        SeriesKey("binance", "ADAUSDT", "1h"),
        SeriesKey("binance", "ADAUSDT", "1m"),
    )
    assert d.series_removed == (
        SeriesKey("binance", "SOLUSDT", "1h"),
        SeriesKey("binance", "SOLUSDT", "1m"),
    )
    assert d.venues_changed == ("binance",)
    assert not d.healing_changed and not d.daemon_changed


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_check_config_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("check-config", "--config", str(write(tmp_path, GOOD)))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(replace_line('profile = "CRYPTO"', 'profile = "CRYPT"', 1))
    r = run_cli("check-config", "--config", str(bad))
    assert r.returncode == 78
    assert (
        'series[1].profile: expected one of CRYPTO, EQUITY, FUTURES, FOREX, got "CRYPT"' in r.stderr
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            replace_line('interval = "15m"', 'interval = "999999999w"'),
            'healing.interval: expected a duration of at most 36500d, got "999999999w"',
        ),
        # Within timedelta's range, but "now - lookback" is before year 1.
        (
            replace_line('lookback = "200d"', 'lookback = "9999999d"', 1),
            'series[0].lookback: expected a duration of at most 36500d, got "9999999d"',
        ),
        (
            replace_line('rate_period = "60s"', 'rate_period = "99999999999999999999999s"'),
            "venues[0].rate_period: expected a duration of at most 36500d",
        ),
    ],
)
def test_out_of_range_durations_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert message in str(e.value)


def test_the_longest_duration_loads(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, replace_line('lookback = "200d"', 'lookback = "36500d"')),
                    env={})  # fmt: skip
    assert c.healing.lookback == timedelta(days=36500)


def test_a_file_that_is_not_utf8_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(GOOD.replace('"SOLUSDT"', '"SOL\xe9"').encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert e.value.path == "series[1].symbols[0]"
    assert "line 36: not UTF-8 (byte 0xe9)" in str(e.value)
    # In a comment no key holds the byte: the line still says where.
    path.write_bytes((GOOD + "# caf\xe9\n").encode("latin-1"))
    with pytest.raises(ConfigError, match="line 40: not UTF-8"):
        load_config(path, env={})


def test_check_config_names_the_key_of_an_unreadable_value(tmp_path: Path) -> None:
    """Never a traceback: exit 78 and the key, for bytes and for numbers."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(GOOD.replace('"SOLUSDT"', '"SOL\xe9"').encode("latin-1"))
    r = run_cli("check-config", "--config", str(bad))
    assert (r.returncode, "Traceback" in r.stderr) == (78, False), r.stderr
    assert "series[1].symbols[0]" in r.stderr
    bad.write_text(replace_line('interval = "15m"', 'interval = "999999999w"'))
    r = run_cli("check-config", "--config", str(bad))
    assert (r.returncode, "Traceback" in r.stderr) == (78, False), r.stderr
    assert "healing.interval" in r.stderr
