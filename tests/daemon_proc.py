"""Run `candled` as a real child process, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def venue_toml(name: str, port: int, *, batch: int = 5, rate_capacity: int = 6000) -> str:
    return f"""
[[venues]]
name = "{name}"
kind = "binance"
rest_url = "http://127.0.0.1:{port}"
ws_url = "ws://127.0.0.1:{port}"
batch = {batch}
rate_capacity = {rate_capacity}
rate_period = "60s"
"""


def series_toml(venue: str, symbols: Sequence[str], timeframes: Sequence[str], **extra: str) -> str:
    lines = [
        "[[series]]",
        f'venue = "{venue}"',
        "symbols = [" + ", ".join(f'"{s}"' for s in symbols) + "]",
        "timeframes = [" + ", ".join(f'"{t}"' for t in timeframes) + "]",
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def write_config(tmp: Path, body: str, *, health_port: int = 0) -> Path:
    path = tmp / "config.toml"
    path.write_text(
        f"""
[daemon]
health_listen = "127.0.0.1:{health_port}"
log_level = "info"
log_format = "json"
state_dir = "{tmp / "state"}"
{body}"""
    )
    return path


@asynccontextmanager
async def running_daemon(
    config: Path, dsn: str, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start `python -m daemon run`; on exit, make sure it is gone."""
    env = {**os.environ, "CANDLED_DATABASE_URL": dsn}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "run", "--config", str(config),
            cwd=REPO, env=env, stdout=out, stderr=out,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()


async def stop(proc: asyncio.subprocess.Process, within: float = 30.0) -> int:
    """SIGTERM, then the exit code (a hang past `within` seconds fails the test)."""
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(within):
        return await proc.wait()
