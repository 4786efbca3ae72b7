"""Supervisor restarts, sd_notify datagrams, and the health document."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from candled import sdnotify
from candled.health import HealthFacts, SeriesHealth, VenueHealth, assess
from candled.sdnotify import Notifier
from candled.supervisor import Supervisor


async def test_crashing_component_restarts_and_others_keep_running() -> None:
    runs = {"crashy": 0, "steady": 0}
    steady_alive = asyncio.Event()

    async def crashy() -> None:
        runs["crashy"] += 1
        raise RuntimeError("boom")

    async def steady() -> None:
        runs["steady"] += 1
        steady_alive.set()
        await asyncio.Event().wait()

    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        sup = Supervisor(tg, backoff_base_s=0.01, backoff_cap_s=0.05, crash_loop_count=3)
        sup.start("crashy", crashy)
        sup.start("steady", steady)
        while runs["crashy"] < 4:
            await asyncio.sleep(0.01)
        await steady_alive.wait()
        assert sup.components["crashy"].restarts >= 3
        assert sup.components["crashy"].last_error == "RuntimeError('boom')"
        assert sup.crash_looping() == ["crashy"]
        assert sup.components["steady"].state == "running" and runs["steady"] == 1
        await sup.stop_all()
    assert sup.components == {}


async def test_component_that_returns_is_done_not_restarted() -> None:
    calls = 0

    async def once() -> None:
        nonlocal calls
        calls += 1

    async with asyncio.TaskGroup() as tg:
        sup = Supervisor(tg, backoff_base_s=0.01)
        component = sup.start("once", once)
    assert calls == 1 and component.state == "done"


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    return sock


def test_notifier_sends_ready_reloading_stopping(notify_socket: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
    assert n.ready("2 venues")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=2 venues"
    assert n.reloading()
    fields = notify_socket.recv(4096).decode().split("\n")
    assert fields[0] == "RELOADING=1" and fields[1].startswith("MONOTONIC_USEC=")
    assert int(fields[1].split("=")[1]) > 0
    assert n.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


@pytest.mark.timeout(20)
def test_a_reader_that_falls_behind_never_blocks_the_notifier(
    notify_socket: socket.socket,
) -> None:
    # The kernel queues a few datagrams for an unread socket; past them a
    # blocking send would stall the daemon's event loop until systemd reads.
    n = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname()})
    sent = [n.send("WATCHDOG=1") for _ in range(200)]
    assert sent[0] and not sent[-1], "the queue never filled: the test proves nothing"
    assert notify_socket.recv(4096) == b"WATCHDOG=1"  # what was queued is delivered
    assert n.send("STATUS=caught up")  # room again


def test_notifier_abstract_namespace() -> None:
    name = f"candled-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert sock.recv(100) == b"STATUS=hello"


def test_notifier_without_systemd_is_a_noop() -> None:
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and n.watchdog_interval_s is None


async def test_watchdog_pings_at_half_the_interval(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000",
           "WATCHDOG_PID": str(os.getpid())}  # fmt: skip
    n = Notifier(env)
    assert n.watchdog_interval_s == pytest.approx(0.1)
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    # The loop's own sleeps, recorded: how long it waits between pings does
    # not depend on how busy the machine is; how long it took, only upwards.
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(sdnotify, "asyncio", SimpleNamespace(sleep=sleep))
    began = time.monotonic()
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:  # only stops a hang
        task = tg.create_task(n.watchdog())
        while n.sent.count("WATCHDOG=1") < 4:
            await real_sleep(0.005)
        task.cancel()
    assert time.monotonic() - began >= 3 * 0.1 - 0.01  # never faster
    assert n.sent.count("WATCHDOG=1") == 4 and len(waits) == 3 + 1  # ping, wait, ...
    assert waits == pytest.approx([0.1] * 4)


def facts(**overrides: object) -> HealthFacts:
    base: dict[str, object] = dict(
        uptime_s=12.0, database_ok=True, database_error=None, timescaledb="2.19.3",
        license="apache", config_loaded_at=datetime(2026, 1, 1, tzinfo=UTC), last_reload="ok",
        venues=[VenueHealth("binance", True, 5410, None, "running")],
        series=[SeriesHealth("binance", "BTCUSDT", "1m", "OK", None, 41.2, 0)],
        crash_looping=[],
    )  # fmt: skip
    base.update(overrides)
    return HealthFacts(**base)  # type: ignore[arg-type]


def test_health_ok_degraded_failing() -> None:
    doc = assess(facts())
    assert doc["status"] == "ok" and doc["reasons"] == []
    assert doc["database"] == {"ok": True, "timescaledb": "2.19.3", "license": "apache"}
    assert doc["venues"][0]["rate_tokens"] == 5410
    assert doc["series"][0]["lag_s"] == 41.2
    assert assess(facts(last_reload="series[0].profile: bad"))["status"] == "degraded"
    assert assess(facts(crash_looping=["venue:binance"]))["status"] == "degraded"
    stale = [SeriesHealth("binance", "BTCUSDT", "1m", "STALE", None, 900.0, 0)]
    assert assess(facts(series=stale))["status"] == "degraded"
    down = assess(facts(database_ok=False, database_error="ConnectionRefusedError()"))
    assert down["status"] == "failing" and "database unreachable" in down["reasons"][0]


async def test_a_blocked_event_loop_stops_the_watchdog_pings(notify_socket: socket.socket) -> None:
    """Pings come from the event loop itself, not a thread: if the loop hangs,
    systemd stops hearing from us and restarts the service."""
    n = Notifier({"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "100000"})
    async with asyncio.timeout(5), asyncio.TaskGroup() as tg:
        task = tg.create_task(n.watchdog())
        await asyncio.sleep(0.2)
        before = n.sent.count("WATCHDOG=1")
        time.sleep(0.5)  # noqa: ASYNC251 - the point: the loop is blocked for ten intervals
        assert n.sent.count("WATCHDOG=1") == before
        await asyncio.sleep(0.2)
        assert n.sent.count("WATCHDOG=1") > before  # and they resume with the loop
        task.cancel()
