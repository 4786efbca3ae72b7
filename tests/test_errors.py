"""The error tree and the enums that name what goes to the database and /health.

Every exception class candled defines derives from `candled.errors.CandledError`;
the enums' values are the strings the database's CHECK constraints, `/health`
and the logs have always used.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import candled
from candled.backfill import JobReason
from candled.errors import CandledError
from candled.health import HealthStatus
from candled.store.healing import RepairOutcome, SeriesStatus
from candled.supervisor import ComponentState

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(candled.__path__, "candled."):
        if info.name == "candled.__main__":
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                found.append(value)
    return found


def test_every_exception_derives_from_candled_error() -> None:
    classes = _exception_classes()
    assert len(classes) >= 12  # the walk found them
    strays = [
        f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, CandledError)
    ]
    assert strays == []


def _check_values(migration: str, column: str) -> set[str]:
    sql = (MIGRATIONS / migration).read_text()
    m = re.search(rf"{column}\s+text NOT NULL CHECK \({column} IN \(([^)]*)\)\)", sql)
    assert m is not None, f"no CHECK on {column} in {migration}"
    return {v.strip().strip("'") for v in m.group(1).split(",")}


def test_database_enums_are_the_columns_values() -> None:
    assert {s.value for s in SeriesStatus} == _check_values("001_candles.sql", "status")
    assert {o.value for o in RepairOutcome} == _check_values("003_healing.sql", "outcome")


def test_enum_values_unchanged() -> None:
    assert [s.value for s in HealthStatus] == ["ok", "degraded", "failing"]
    assert {s.value for s in ComponentState} == {
        "starting", "running", "restarting", "stopped", "done",
    }  # fmt: skip
    assert {r.value for r in JobReason} == {
        "live-gap", "reconnect", "repair", "poll", "lookback", "backfill",
    }  # fmt: skip


def test_enums_serialise_as_their_values() -> None:
    doc = {"status": HealthStatus.FAILING, "component": ComponentState.RUNNING,
           "series": SeriesStatus.STALE}  # fmt: skip
    assert json.loads(json.dumps(doc)) == {
        "status": "failing", "component": "running", "series": "STALE",
    }  # fmt: skip
    assert f"{JobReason.LIVE_GAP}" == "live-gap" and str(RepairOutcome.EMPTY) == "empty"
