"""The real daemon meets Alpaca's stream refusals (issue 17 item 5).

Two Alpaca venues on two simulators, both with the right key: on one the key's
only `iex` connection is already taken (another program holds it: 406 connection
limit exceeded), on the other the key's plan has no `sip` feed (409 insufficient
subscription, at login). Their REST requests work. The daemon keeps running,
says each refusal once per attempt in a log line naming the venue and the
variables the key comes from, shows both in /health, and does not reconnect in
a loop (every code, and the spacing of the attempts: test_alpaca_stream_errors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from unittest.mock import patch

import aiohttp
import pytest
from websockets.asyncio.client import connect

from candled import clock
from candled_sim import SimExchange, parse_scenario
from candled_sim.alpaca import SIM_KEY, SIM_SECRET, AlpacaPersonality
from tests.daemon_proc import log_events, running_daemon, stop, tail, wait_until
from tests.pg import free_port

KEY_VARS = 'api_key_env = "CANDLED_TEST_ALPACA_KEY", api_secret_env = "CANDLED_TEST_ALPACA_SECRET"'


def config(tmp_path: Path, iex_port: int, sip_port: int, health_port: int) -> Path:
    venues = "".join(
        f"""
[[venues]]
name = "{name}"
kind = "alpaca"
rest_url = "http://127.0.0.1:{port}"
ws_url = "ws://127.0.0.1:{port}"
options = {{ feed = "{feed}" }}
api_key_env = "CANDLED_TEST_ALPACA_KEY"
api_secret_env = "CANDLED_TEST_ALPACA_SECRET"

[[series]]
venue = "{name}"
symbols = ["AAPL"]
timeframes = ["1m"]
profile = "CRYPTO"
lookback = "1d"
"""
        for name, port, feed in (("us-iex", iex_port, "iex"), ("us-sip", sip_port, "sip"))
    )
    path = tmp_path / "config.toml"
    path.write_text(f"""
[daemon]
health_listen = "127.0.0.1:{health_port}"
log_level = "info"
log_format = "json"
state_dir = "{tmp_path / "state"}"
{venues}""")
    return path


@pytest.mark.timeout(120)
async def test_the_daemon_reports_a_taken_connection_and_a_plan_without_the_feed(
    tmp_path: Path, tsdb_dsn: str
) -> None:
    scenario = parse_scenario({"symbols": [{"symbol": "AAPL", "listed": "-3d"}]}, clock.now())
    sims = {name: SimExchange(scenario, protocol="alpaca") for name in ("us-iex", "us-sip")}
    ports = {name: (await sim.start("127.0.0.1", 0))[1] for name, sim in sims.items()}
    sip_plan = sims["us-sip"].personality
    assert isinstance(sip_plan, AlpacaPersonality)
    sip_plan.feeds = {"iex"}
    # Another program holds the key's iex connection.
    held = await connect(f"ws://127.0.0.1:{ports['us-iex']}/v2/iex")
    await held.recv()
    await held.send(json.dumps({"action": "auth", "key": SIM_KEY, "secret": SIM_SECRET}))
    assert json.loads(await held.recv()) == [{"T": "success", "msg": "authenticated"}]

    health_port = free_port()
    env = {"CANDLED_TEST_ALPACA_KEY": SIM_KEY, "CANDLED_TEST_ALPACA_SECRET": SIM_SECRET}
    log = tmp_path / "daemon.log"
    try:
        with patch.dict(os.environ, env):
            path = config(tmp_path, ports["us-iex"], ports["us-sip"], health_port)
            async with running_daemon(path, tsdb_dsn, log) as proc:

                async def both_refused() -> dict[str, Any] | None:
                    if proc.returncode is not None:
                        raise AssertionError(f"the daemon exited: {tail(log)}")
                    try:
                        async with (
                            aiohttp.ClientSession() as http,
                            http.get(f"http://127.0.0.1:{health_port}/health") as r,
                        ):
                            doc: dict[str, Any] = await r.json()
                    except aiohttp.ClientError:
                        return None  # not serving yet
                    venues = {v["name"]: v for v in doc["venues"]}
                    refused = all(venues.get(n, {}).get("stream_refused") for n in sims)
                    return doc if refused else None

                health = await wait_until(both_refused, 90)
                assert proc.returncode is None
                assert await stop(proc) == 0, tail(log)
    finally:
        await held.close()
        for sim in sims.values():
            await sim.stop()

    venues = {v["name"]: v for v in health["venues"]}
    iex, sip = venues["us-iex"]["stream_refused"], venues["us-sip"]["stream_refused"]
    assert '"us-iex"' in iex and "406 connection limit exceeded" in iex and KEY_VARS in iex
    assert "another connection" in iex
    assert '"us-sip"' in sip and "409 insufficient subscription" in sip and KEY_VARS in sip
    assert '"sip" feed' in sip and 'feed = "iex"' in sip
    assert health["status"] == "degraded" and iex in health["reasons"] and sip in health["reasons"]
    assert not venues["us-iex"]["ws_connected"] and not venues["us-sip"]["ws_connected"]

    events = log_events(log)
    busy = [e for e in events if e.get("event") == "another connection uses the venue's key;"
            " backing off"]  # fmt: skip
    plan = [e for e in events if e.get("event") == "venue refused the stream under the key's"
            " plan; reconnecting rarely"]  # fmt: skip
    assert busy and all(e["venue"] == "us-iex" and KEY_VARS in e["error"] for e in busy), tail(log)
    assert plan and all(e["venue"] == "us-sip" and KEY_VARS in e["error"] for e in plan), tail(log)
    # Long pauses, not the usual backoff: 30 s for the taken connection, 5 min for the plan.
    assert busy[0]["retry_in_s"] == 30.0 and plan[0]["retry_in_s"] == 300.0
    assert len(busy) == 1 and len(plan) == 1
    # One attempt each (besides the held connection), no catch-up on a refused stream.
    assert sims["us-iex"].counters.ws_connections == 2
    assert sims["us-sip"].counters.ws_connections == 1
    assert not [e for e in events if e.get("event") == "stream connected"], tail(log)
    text = log.read_text()
    assert SIM_SECRET not in text
