"""Venue credentials in the config: where they come from, the errors that name
the key to fix, and that the secret is never shown (reprs, messages, logs).
Alpaca is the venue kind that needs both a key and a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest

from candled import clock
from candled.config import ConfigError, load_config
from candled.venues import Credentials
from candled_sim import SimExchange, parse_scenario
from candled_sim.alpaca import SIM_KEY, SIM_SECRET
from tests.daemon_proc import REPO, running_daemon, stop
from tests.waiting import until

KEY, SECRET = "AKSIMKEY0000000000", "sim-secret-that-must-never-show"
ENV = {"ALPACA_KEY": KEY, "ALPACA_SECRET": SECRET}


def config(
    tmp_path: Path,
    credentials: str,
    log_level: str = "info",
    *,
    url: str = "data.alpaca.markets",
    lookback: str = "200d",
) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[daemon]
health_listen = "127.0.0.1:0"
log_level = "{log_level}"
state_dir = "{tmp_path / "state"}"

[[venues]]
name = "us-equities"
kind = "alpaca"
rest_url = "http://{url}"
ws_url = "ws://{url}"
{credentials}

[[series]]
venue = "us-equities"
symbols = ["AAPL"]
timeframes = ["1m"]
lookback = "{lookback}"
""")
    return path


def load_error(tmp_path: Path, credentials: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(config(tmp_path, credentials), env=ENV if env is None else env)
    assert SECRET not in str(caught.value)
    return str(caught.value)


def test_alpaca_without_credentials_names_the_venue_and_the_keys_to_set(tmp_path: Path) -> None:
    message = load_error(tmp_path, "")
    assert message.startswith("venues[0]: ")
    assert 'venue "us-equities" (kind alpaca) needs credentials' in message
    for key in ("api_key_env", "api_key_file", "api_secret_env", "api_secret_file"):
        assert key in message


def test_alpaca_with_a_key_and_no_secret_names_the_secret_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, 'api_key_env = "ALPACA_KEY"')
    assert message.startswith("venues[0].api_secret_env: ")
    assert "needs an API secret with its key" in message
    assert "api_secret_env or api_secret_file" in message


def test_check_config_refuses_alpaca_without_credentials(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "candled", "check-config", "--config", str(config(tmp_path, ""))],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ENV},
    )  # fmt: skip
    assert done.returncode == 78
    assert 'venues[0]: venue "us-equities" (kind alpaca) needs credentials' in done.stderr


def test_credentials_from_environment_variables(tmp_path: Path) -> None:
    loaded = load_config(
        config(tmp_path, 'api_key_env = "ALPACA_KEY"\napi_secret_env = "ALPACA_SECRET"'), env=ENV
    )
    (venue,) = loaded.venues
    assert venue.credentials == Credentials(KEY, SECRET)
    assert venue.codec().needs_credentials


def test_credentials_from_files_and_mixed(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(f"{KEY}\n")  # a trailing newline is no part of it
    (tmp_path / "secret").write_text(f"  {SECRET}\n")
    files = f'api_key_file = "{tmp_path / "key"}"\napi_secret_file = "{tmp_path / "secret"}"'
    (venue,) = load_config(config(tmp_path, files), env={}).venues
    assert venue.credentials == Credentials(KEY, SECRET)

    mixed = f'api_key_env = "ALPACA_KEY"\napi_secret_file = "{tmp_path / "secret"}"'
    (venue,) = load_config(config(tmp_path, mixed), env=ENV).venues
    assert venue.credentials == Credentials(KEY, SECRET)


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ('api_key_env = "ALPACA_KEY"\napi_secret_env = "UNSET_SECRET"',
         "venues[0].api_secret_env: environment variable UNSET_SECRET is not set"),
        ('api_key_env = "UNSET_KEY"\napi_secret_env = "ALPACA_SECRET"',
         "venues[0].api_key_env: environment variable UNSET_KEY is not set"),
        ('api_key_file = "/nonexistent/key"\napi_secret_env = "ALPACA_SECRET"',
         "venues[0].api_key_file: cannot read /nonexistent/key"),
        ('api_key_env = "ALPACA_KEY"\napi_key_file = "/nonexistent/key"',
         "venues[0].api_key_file: set api_key_env or api_key_file, not both"),
        ('api_secret_env = "ALPACA_SECRET"',
         "venues[0].api_key_env: an api secret is set but no api key"),
    ],
)  # fmt: skip
def test_resolution_errors_name_the_key(tmp_path: Path, credentials: str, message: str) -> None:
    assert message in load_error(tmp_path, credentials)


def test_an_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("\n")
    credentials = f'api_key_env = "ALPACA_KEY"\napi_secret_file = "{tmp_path / "secret"}"'
    assert f"venues[0].api_secret_file: {tmp_path / 'secret'} is empty" in load_error(
        tmp_path, credentials
    )


def test_the_secret_never_shows_in_reprs(tmp_path: Path) -> None:
    loaded = load_config(
        config(tmp_path, 'api_key_env = "ALPACA_KEY"\napi_secret_env = "ALPACA_SECRET"'), env=ENV
    )
    (venue,) = loaded.venues
    codec = venue.codec()
    shown = [repr(loaded), str(loaded), repr(venue), repr(venue.credentials), repr(codec)]
    for text in shown:
        assert SECRET not in text and KEY not in text
    assert "ALPACA_SECRET" in repr(venue)  # where it comes from may show


async def test_the_secret_never_shows_in_the_daemons_log(tmp_path: Path, tsdb_dsn: str) -> None:
    """The daemon at debug level against the Alpaca sim: it backfills and
    streams with the credentials, and no log line holds the secret."""
    sim = SimExchange(parse_scenario({"symbols": [{"symbol": "AAPL", "listed": "-3d"}]},
                                     clock.now()), protocol="alpaca")  # fmt: skip
    host, port = await sim.start("127.0.0.1", 0)
    try:
        path = config(
            tmp_path, 'api_key_env = "ALPACA_KEY"\napi_secret_env = "ALPACA_SECRET"', "debug",
            url=f"{host}:{port}", lookback="1d",
        )  # fmt: skip
        env = {"ALPACA_KEY": SIM_KEY, "ALPACA_SECRET": SIM_SECRET}
        with patch.dict(os.environ, env):
            async with running_daemon(path, tsdb_dsn, tmp_path / "daemon.log") as proc:
                log = tmp_path / "daemon.log"
                # Streaming and fetching, both with the credentials.
                await until(lambda: _logged(log, "stream connected")
                            and sim.counters.requests_by_status[200] > 0, 120,
                            "the stream connected and a request answered")  # fmt: skip
                assert await stop(proc) == 0
    finally:
        await sim.stop()
    lines = (tmp_path / "daemon.log").read_text().splitlines()
    assert not [line for line in lines if SIM_SECRET in line]


def _logged(log: Path, event: str) -> bool:
    return log.exists() and event in log.read_text()
