"""Fuzzing the simulator's scenario loader: any file, any table, a Scenario or a
ScenarioError naming the bad key, never another exception (OverflowError from
`listed = "-99999999999d"`, RecursionError from arrays nested 5,000 deep,
UnicodeDecodeError from a file that is not UTF-8)."""

from __future__ import annotations

import copy
import math
import re
import tomllib
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from candled_sim import scenario as scenario_module
from candled_sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario

FUZZ = settings(
    max_examples=max(200, settings.default.max_examples),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
NOWS = st.sampled_from([NOW, datetime(1, 1, 1, 0, 5, tzinfo=UTC),
                        datetime(9999, 12, 31, 23, 55, tzinfo=UTC)])  # fmt: skip
_EXAMPLE = re.search(r"```toml\n(.*?)```", scenario_module.__doc__ or "", re.S)
assert _EXAMPLE is not None
EXAMPLE_TEXT = _EXAMPLE.group(1)
EXAMPLE = tomllib.loads(EXAMPLE_TEXT)

# What TOML can hold, with the edges: integers of any size, non-finite floats,
# datetimes at the ends of the range with and without an offset.
EDGE_VALUES: list[object] = [
    0, -1, 10**18, 10**400, -(10**400), math.nan, math.inf, -math.inf, 1e308, -0.0,
    True, "", "0s", "-1s", "1e9s", "9" * 400 + "d", "+" + "9" * 400 + "d", "-" + "9" * 400 + "d",
    "-99999999999d", "+99999999999d", "+1d", "-0s", "1.5.5s", "nan", "inf", "+infs",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z", "XNYS", "EQUITY", "FOREX",
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
    datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))),
    datetime(2024, 1, 1), date(2024, 1, 1), time(12, 0),
    [], {}, [1, "a"], {"every": 1}, {"probability": 0.5},
]  # fmt: skip
SCALARS = st.one_of(
    st.booleans(), st.integers(), st.integers(-(10**400), 10**400), st.floats(),
    st.text(max_size=12), st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(), st.times(), st.sampled_from(EDGE_VALUES),
)  # fmt: skip
KEYS = st.text(max_size=6) | st.sampled_from(
    ["seed", "rest", "ws", "faults", "symbols", "maintenance", "symbol", "listed", "profile",
     "calendar", "illiquid", "start", "end", "every", "probability", "burst", "status",
     "delay", "after", "duration", "pings", "statuses", "size", "ban", "max_ban",
     "update_interval", "ping_interval", "max_connection_age", "max_incoming_per_s",
     "weight_per_minute", "http_errors", "ws_idle", "ws_drop", "http_storm"]
)  # fmt: skip
TOML_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=20,
)


def check_parse(data: Any, now: datetime) -> None:
    try:
        scenario = parse_scenario(data, now)
    except ScenarioError:
        return
    check_scenario(scenario)


def check_scenario(scenario: Scenario) -> None:
    """What the simulator relies on: finite, positive durations and aware times."""
    assert isinstance(scenario, Scenario)
    durations = (scenario.ban_s, scenario.max_ban_s, scenario.update_interval_s,
                 scenario.ping_interval_s, scenario.max_connection_age_s,
                 scenario.faults.slow_delay_s, scenario.faults.ws_idle_duration_s,
                 scenario.faults.storm_duration_s)  # fmt: skip
    assert all(math.isfinite(d) and d > 0 for d in durations)
    for optional in (scenario.faults.ws_drop_after_s, scenario.faults.ws_idle_after_s):
        assert optional is None or (math.isfinite(optional) and optional > 0)
    for ts in (*scenario.listings.values(), scenario.faults.storm_start):
        assert ts is None or ts.utcoffset() == timedelta(0)
    for window in scenario.maintenance:
        assert window.start.utcoffset() == window.end.utcoffset() == timedelta(0)


def places(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a TOML document, the root's children first."""
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += places(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += places(value, (*prefix, index))
    return found


def replaced(doc: Any, path: tuple[Any, ...], value: object) -> Any:
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


@FUZZ
@given(data=st.dictionaries(KEYS, TOML_VALUES, max_size=6), now=NOWS)
def test_parse_of_arbitrary_tables(data: dict[str, Any], now: datetime) -> None:
    check_parse(data, now)


@FUZZ
@given(data=st.data(), now=NOWS)
def test_parse_of_the_example_with_values_mutated(data: st.DataObject, now: datetime) -> None:
    doc = EXAMPLE
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(places(doc)))
        doc = replaced(doc, path, data.draw(st.sampled_from(EDGE_VALUES) | TOML_VALUES))
    check_parse(doc, now)


@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
def test_parse_with_each_edge_value_in_each_place(value: object) -> None:
    for path in places(EXAMPLE):
        for now in (NOW, datetime(9999, 12, 31, 23, 55, tzinfo=UTC)):
            check_parse(replaced(EXAMPLE, path, value), now)


def check_load(tmp: Path, text: bytes, now: datetime = NOW) -> None:
    path = tmp / "scenario.toml"
    path.write_bytes(text)
    try:
        scenario = load_scenario(path, now)
    except ScenarioError:
        return
    check_scenario(scenario)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scenario")


@FUZZ
@given(data=st.data())
def test_load_of_truncated_and_damaged_files(tmp: Path, data: st.DataObject) -> None:
    raw = EXAMPLE_TEXT.encode()
    if data.draw(st.booleans()):
        text = raw[: data.draw(st.integers(0, len(raw)))]
    else:
        at = data.draw(st.integers(0, len(raw)))
        text = raw[:at] + data.draw(st.binary(min_size=1, max_size=6)) + raw[at:]
    check_load(tmp, text, data.draw(NOWS))


@FUZZ
@given(text=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_load_of_raw_bytes(tmp: Path, text: bytes) -> None:
    check_load(tmp, text)


HOSTILE_FILES = [
    b"\xff\xfe",
    b"seed = 1\n\xc3(",
    b"a = " + b"[" * 5000 + b"]" * 5000,
    b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000,
    b"seed = " + b"9" * 5000,
    b"seed = " + b"9" * 400,
    b'[rest]\nban = "' + b"9" * 400 + b's"',
    b'[[symbols]]\nsymbol = "X"\nlisted = "-99999999999d"',
    b'[[symbols]]\nsymbol = "X"\nlisted = 0001-01-01T00:00:00+01:00',
    b'[[symbols]]\nsymbol = "X"\nilliquid = ' + b"9" * 400,
    b"[ws]\nupdate_interval = inf",
    b"[ws]\nupdate_interval = nan",
    b"[faults.http_errors]\nprobability = " + b"9" * 400,
]


@pytest.mark.parametrize("text", HOSTILE_FILES, ids=lambda t: repr(t[:30]))
def test_load_of_hostile_files(tmp: Path, text: bytes) -> None:
    check_load(tmp, text)
