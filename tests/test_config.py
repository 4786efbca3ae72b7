"""Config loading: every kind of error names its key path; check-config exits 78."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from candled.config import ConfigError, load_config, parse_config
from candled.domain import DataProfile, SeriesKey

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
        [sys.executable, "-m", "candled", *args],
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


# --- issue 12 item 5: every bad input is a ConfigError naming the key --------

ALPACA = """
[[venues]]
name = "alpaca"
kind = "alpaca"
rest_url = "http://x"
ws_url = "ws://x"
api_key_file = "{key}"
api_secret_file = "{secret}"
"""


def run_cli_bounded(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`run_cli` in a child that may hold only 1 GiB and `timeout` seconds: a
    reader that never stops fails the test instead of the machine."""

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [sys.executable, "-m", "candled", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        preexec_fn=limit,
    )


def assert_exits_78(config: Path, key: str, reason: str) -> None:
    r = run_cli_bounded("check-config", "--config", str(config))
    assert (r.returncode, "Traceback" in r.stderr) == (78, False), r.stderr[-2000:]
    assert f"{key}: " in r.stderr and reason in r.stderr, r.stderr


@pytest.mark.parametrize("key", ["api_key_file", "api_secret_file"])
def test_an_endless_secret_file_is_refused(tmp_path: Path, key: str) -> None:
    paths = {"key": tmp_path / "key", "secret": tmp_path / "secret"}
    for p in paths.values():
        p.write_text("k\n")
    paths[key.split("_")[1]] = Path("/dev/zero")
    config = write(tmp_path, ALPACA.format(key=paths["key"], secret=paths["secret"]))
    assert_exits_78(config, f"venues[0].{key}", "/dev/zero is not a regular file")


def test_secret_files_are_small_regular_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    big = tmp_path / "big.key"
    big.write_text("k" * (64 * 1024 + 1))
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, ALPACA.format(key=big, secret=secret)), env={})
    assert (e.value.path, e.value.reason) == (
        "venues[0].api_key_file",
        f"{big} is larger than 64 KiB: not a key",
    )
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, ALPACA.format(key=tmp_path, secret=secret)), env={})
    assert (e.value.path, e.value.reason) == (
        "venues[0].api_key_file",
        f"{tmp_path} is not a regular file",
    )
    # Exactly the limit still loads.
    big.write_text("k" * (64 * 1024))
    c = load_config(write(tmp_path, ALPACA.format(key=big, secret=secret)), env={})
    assert c.venues[0].credentials is not None


def test_a_fifo_as_secret_file_does_not_block(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: refused without waiting."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    secret = tmp_path / "secret"
    secret.write_text("s\n")
    config = write(tmp_path, ALPACA.format(key=fifo, secret=secret))
    assert_exits_78(config, "venues[0].api_key_file", f"{fifo} is not a regular file")


def with_overrides(tmp_path: Path, path: Path | str) -> Path:
    return write(
        tmp_path, replace_line("max_fills = 10", f'max_fills = 10\ncalendar_overrides = "{path}"')
    )


def test_an_endless_overrides_file_is_refused(tmp_path: Path) -> None:
    config = with_overrides(tmp_path, "/dev/zero")
    assert_exits_78(config, "healing.calendar_overrides", "/dev/zero is not a regular file")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"# " + b"x" * (1 << 20) + b"\n", "is larger than 1 MiB"),
        (b"[XNYS]\nclosed = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
        (b'[XNYS]\nclosed = ["2025-01-09\xff"]\n', "line 2: not UTF-8 (byte 0xff)"),
        (b"[XNYS]\nclosed = [" + b"9" * 5000 + b"]\n", "invalid TOML"),
        (b"[XNYS]\nclosed = [2025-01-32]\n", "invalid TOML"),
        (b"[XNYS]\nclosed = [1]\n", "[XNYS].closed[0]: expected a date YYYY-MM-DD, got 1"),
        (b'[XNYS]\nopen = ["2025-01-09"]\n', "[XNYS].open: unknown key"),
        (b'["XN\\u0000YS"]\n', "unknown calendar 'XN\\x00YS'"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path: Path, content: bytes, reason: str) -> None:
    overrides = tmp_path / "overrides.toml"
    overrides.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(with_overrides(tmp_path, overrides), env={})
    assert e.value.path == "healing.calendar_overrides"
    assert reason in e.value.reason
    assert len(str(e.value)) < 1000  # the message quotes values, never whole files


@pytest.mark.parametrize(
    "content",
    [
        b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n",
        b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000 + b"\n",
    ],
)
def test_deep_nesting_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path, env={})
    # Where the file is also not UTF-8, finding the key must not recurse either.
    path.write_bytes(content + b'x = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env={})


def test_an_endless_config_file_is_refused(tmp_path: Path) -> None:
    r = run_cli_bounded("check-config", "--config", "/dev/zero")
    assert (r.returncode, "Traceback" in r.stderr) == (78, False), r.stderr[-2000:]
    assert "/dev/zero is not a regular file" in r.stderr
    big = tmp_path / "config.toml"
    big.write_bytes(b"# " + b"x" * (4 << 20) + b"\n")
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        load_config(big, env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            replace_line(
                'log_format = "json"', 'log_format = "json"\nshutdown_timeout = ' + "9" * 5000
            ),
            "invalid TOML",
        ),
        (
            replace_line("batch = 5", "batch = " + "9" * 4000),
            "venues[0].batch: expected at most 1000000000, got an integer of about 4000 digits",
        ),
        (
            replace_line("max_fills = 10", "max_fills = 9223372036854775807"),
            "healing.max_fills: expected at most 1000000000, got 9223372036854775807",
        ),
        (
            replace_line('profile = "CRYPTO"', 'profile = "' + "C" * 100000 + '"', 1),
            'series[1].profile: expected one of CRYPTO, EQUITY, FUTURES, FOREX, got "CCC',
        ),
    ],
)
def test_huge_values_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert message in str(e.value)
    assert len(str(e.value)) < 1000  # quoted values are shortened


@pytest.mark.parametrize(
    "symbol", ["BTC-USD", "BTC/USD", "EUR_USD", "BRK.B", "XBT/USD", "ES=F", "币安人生USDT"]
)
def test_real_venue_symbols_load(tmp_path: Path, symbol: str) -> None:
    c = load_config(write(tmp_path, GOOD.replace('"SOLUSDT"', f'"{symbol}"')), env={})
    assert c.series[1].symbols == (symbol,)


@pytest.mark.parametrize(
    ("symbol", "reason"),
    [
        ("BTC\\u0000USDT", "control character"),
        ("BTC\\tUSDT", "control character"),
        ("BTC\\u007fUSDT", "control character"),
        ("BTC USDT", "whitespace"),
        ("BTC\\u00a0USDT", "whitespace"),
        (" BTCUSDT", "whitespace"),
        ("BTC:USDT", "':'"),
        ("BTC\\u200bUSDT", "control character"),
        ("X" * 65, "longer than 64 characters"),
    ],
)
def test_bad_symbols_name_the_key(tmp_path: Path, symbol: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, GOOD.replace('"ETHUSDT"', f'"{symbol}"')), env={})
    assert e.value.path == "series[0].symbols[1]"
    assert reason in e.value.reason


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bin\\u0000ance", "expected a venue name"),
        ("bin ance", "expected a venue name"),
        ("bin:ance", "expected a venue name"),
        ("n" * 65, "expected a venue name"),
    ],
)
def test_bad_venue_names_name_the_key(tmp_path: Path, name: str, reason: str) -> None:
    text = GOOD.replace('name = "binance"', f'name = "{name}"').replace(
        'venue = "binance"', f'venue = "{name}"'
    )
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert e.value.path == "venues[0].name"
    assert reason in e.value.reason


@pytest.mark.parametrize("name", ["binance", "us-equities", "fx", "Binance_US", "kraken.v2"])
def test_venue_names_in_use_load(tmp_path: Path, name: str) -> None:
    text = GOOD.replace('name = "binance"', f'name = "{name}"').replace(
        'venue = "binance"', f'venue = "{name}"'
    )
    assert load_config(write(tmp_path, text), env={}).venues[0].name == name


def listen(value: str, public: bool | None = None) -> str:
    line = f'health_listen = "{value}"'
    if public is not None:
        line += f"\nhealth_public = {str(public).lower()}"
    return replace_line('health_listen = "127.0.0.1:8321"', line)


@pytest.mark.parametrize("value", ["127.0.0.1:8321", "127.0.0.2:0", "localhost:8321", "[::1]:8321"])
def test_loopback_health_listen_needs_no_setting(tmp_path: Path, value: str) -> None:
    c = load_config(write(tmp_path, listen(value)), env={})
    assert c.daemon.health_public is False
    assert not c.daemon.health_is_public


@pytest.mark.parametrize(
    "value", ["0.0.0.0:8321", "[::]:8321", "192.0.2.7:8321", "[2001:db8::1]:8321", "myhost:8321"]
)
def test_a_public_health_listen_needs_health_public(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, listen(value)), env={})
    assert e.value.path == "daemon.health_listen"
    assert "set [daemon] health_public = true" in e.value.reason
    c = load_config(write(tmp_path, listen(value, public=True)), env={})
    assert c.daemon.health_public and c.daemon.health_is_public


@pytest.mark.parametrize(
    "value",
    ["[]:8321", ":8321", "[:8321", "::1:8321", "127.0.0.1:", "127.0.0.1:65536",
     "127.0.0.1:\\uff18\\uff13\\uff12\\uff11", "127.0.0.1:²", "bad host:8321", "a..b:8321", "127.0.0.1\\u0000:8321",
     "-x:8321", "[127.0.0.1]:8321"],
)  # fmt: skip
def test_malformed_health_listen_names_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, listen(value, public=True)), env={})
    assert e.value.path == "daemon.health_listen"


def test_long_lists_are_refused(tmp_path: Path) -> None:
    """Each symbol x timeframe is a series: a million-entry list is a mistake,
    and checking it would take minutes and gigabytes."""
    symbols = ", ".join(f'"S{i}"' for i in range(10_001))
    text = replace_line('symbols = ["SOLUSDT"]', f"symbols = [{symbols}]")
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert str(e.value) == "series[1].symbols: expected at most 10000 entries, got 10001"


def test_messages_show_unprintable_values_escaped(tmp_path: Path) -> None:
    """A NUL or newline in a value reaches the terminal as an escape, not raw."""
    text = replace_line('log_level = "info"', 'log_level = "info\\u0000\\n"')
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert str(e.value).endswith("got 'info\\x00\\n'")
    text = replace_line('venue = "binance"', 'venue = "bin\\u001b[2J"', 1)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    assert "unknown venue 'bin\\x1b[2J'" in str(e.value)
