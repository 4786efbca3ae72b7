"""Scale-out operations: the [cluster] config, a venue's shared budget and
bans, and `candled status` over the real lease tables."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from candled.config import ClusterConfig, ConfigError, SeriesSpec, parse_config
from candled.domain import DataProfile, SeriesKey
from candled.store import leases
from candled.store.database import Database
from candled.store.writer import CandleStore, CandleWriter
from candled.venue_runtime import VenueRuntime
from tests.daemon_proc import REPO, series_toml, venue_toml, write_config

VENUE = {"name": "binance", "kind": "binance", "rest_url": "http://127.0.0.1:1",
         "ws_url": "ws://127.0.0.1:1"}  # fmt: skip


def test_clustering_is_off_unless_asked_for() -> None:
    config = parse_config({})
    assert config.cluster == ClusterConfig()
    assert not config.cluster.enabled and config.cluster.lease_ttl == timedelta(seconds=30)
    on = parse_config({"cluster": {"enabled": True, "lease_ttl": "10s", "instance": "a-1"}})
    assert on.cluster == ClusterConfig(True, timedelta(seconds=10), "a-1")
    assert on.cluster.instance_id(Path("var")) == "a-1"


def test_the_default_instance_id_is_stable_per_state_directory(tmp_path: Path) -> None:
    c = ClusterConfig(enabled=True)
    a, b = tmp_path / "a", tmp_path / "b"
    assert c.instance_id(a) == c.instance_id(a)
    assert c.instance_id(a) != c.instance_id(b)


@pytest.mark.parametrize("bad", ["", "has space", "x" * 101, "semi;colon"])
def test_a_bad_instance_id_names_the_key(bad: str) -> None:
    if bad == "":
        assert parse_config({"cluster": {"instance": bad}}).cluster.instance == ""
        return
    with pytest.raises(ConfigError, match=r"^cluster\.instance: "):
        parse_config({"cluster": {"instance": bad}})


def test_unknown_cluster_keys_are_errors() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.ttl"):
        parse_config({"cluster": {"ttl": "30s"}})


async def test_a_shared_budget_is_split_over_the_live_members(migrated: str) -> None:
    config = parse_config({"venues": [{**VENUE, "shared_budget": True, "rate_capacity": 6000},
                                      {**VENUE, "name": "solo", "rate_capacity": 6000}]})  # fmt: skip
    db = await Database.connect(migrated, min_size=0)
    try:
        writer = CandleWriter(CandleStore(db.pool))
        spec = SeriesSpec(SeriesKey("binance", "BTCUSDT", "1m"), DataProfile.CRYPTO, "", True,
                          timedelta(hours=1))  # fmt: skip
        shared = VenueRuntime(config.venue("binance"), [spec], db, writer)
        solo = VenueRuntime(config.venue("solo"), [], db, writer)
        for members, capacity in [(3, 2000), (2, 3000), (1, 6000), (4, 1500)]:
            shared.set_share(members)
            solo.set_share(members)
            assert shared.throttle.capacity == capacity
            assert solo.throttle.capacity == 6000
        # A reload keeps the share: the new capacity is split too.
        shared.configure(parse_config({"venues": [{**VENUE, "shared_budget": True,
                                                   "rate_capacity": 1200}]}).venues[0])  # fmt: skip
        assert shared.throttle.capacity == 300
        # A ban another instance recorded holds here too; an earlier one changes nothing.
        until = datetime.now(UTC) + timedelta(minutes=5)
        shared.honour_ban(until)
        assert shared.throttle.banned and shared.throttle.banned_until == until.timestamp()
        shared.honour_ban(until - timedelta(minutes=1))
        assert shared.throttle.banned_until == until.timestamp()
    finally:
        await db.close()


async def candled_status(config: Path, dsn: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "candled", "status", "--config", str(config), *args,
        cwd=REPO, env={**os.environ, "CANDLED_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None, err.decode()
    return proc.returncode, out.decode()  # the logs go to stderr


async def test_status_prints_members_and_owners(migrated: str, tmp_path: Path) -> None:
    body = venue_toml("binance", 1) + series_toml("binance", ["AAAUSDT", "BBBUSDT"], ["1m"])
    config = write_config(tmp_path, body + "\n[cluster]\nenabled = true\n")
    conn = await asyncpg.connect(migrated)
    try:
        for name in ("alpha", "beta"):
            await leases.heartbeat(conn, leases.Identity(name, "h1", 42, "127.0.0.1:9", "1"), 30)
        await leases.claim(conn, "alpha", ["binance:AAAUSDT:1m"], 30)
        code, out = await candled_status(config, migrated)
        assert code == 1, out  # BBBUSDT has no owner
        assert "members: 2 live, 0 dead" in out
        lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
        assert lines["binance:AAAUSDT:1m"][1] == "alpha"
        assert lines["binance:BBBUSDT:1m"][1] == "(none)"
        assert lines["beta"][1:4] == ["h1", "42", "127.0.0.1:9"]

        await leases.claim(conn, "beta", ["binance:BBBUSDT:1m"], 30)
        await conn.execute("UPDATE cluster_members SET expires_at = now() WHERE instance = 'alpha'")
        code, out = await candled_status(config, migrated, "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert [(m["instance"], m["live"]) for m in doc["members"]] == [
            ("alpha", False), ("beta", True),
        ]  # fmt: skip
        assert {s["series"]: s["owner"] for s in doc["series"]} == {
            "binance:AAAUSDT:1m": "alpha", "binance:BBBUSDT:1m": "beta",
        }  # fmt: skip
    finally:
        await conn.close()
