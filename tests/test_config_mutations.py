"""Mutating valid configs: whatever the file holds, `candled check-config`
exits 0 or 78 with a message naming the key, never with a traceback.

The seeds are the shipped `config.toml`, its commented-out venue examples
(uncommented), the design example from tests/test_config.py, and a config that
reads its credentials and calendar overrides from files. Hypothesis replaces
values with other types, huge and negative numbers, bad and out-of-range
durations, strings with NUL, control and non-ASCII characters, long strings,
deeply nested arrays and tables; removes keys and adds unknown ones; mutates
the overrides file; and splices non-UTF-8 and arbitrary bytes into the file.

Most examples run `load_config` in-process (anything but a `ConfigError` is a
failure); a few run the real `python -m candled check-config` and assert its exit
code and that stderr holds no traceback. `make test` runs a bounded number of
examples; the `fuzz` profile (tests/conftest.py) many more.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from candled.config import EX_CONFIG, ConfigError, load_config
from tests.test_config import GOOD

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "config.toml").read_text()
OVERRIDES = (REPO / "tests" / "fixtures" / "calendar_overrides.toml").read_bytes()
ENV = {"ALPACA_KEY_ID": "key", "ALPACA_SECRET_KEY": "secret", "OANDA_TOKEN": "token"}

# A bounded run in `make test`, unless a profile with more (HYPOTHESIS_PROFILE=fuzz) is loaded.
FUZZ = settings(
    max_examples=max(200, settings.default.max_examples),
    deadline=None,  # a shared, busy machine: slow is not wrong
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# A process per example: a handful in `make test`, a hundredth as many as the
# in-process tests under the fuzz profile.
FUZZ_CLI = settings(FUZZ, max_examples=max(4, settings.default.max_examples // 100))


def uncommented_examples() -> str:
    """config.toml's commented-out venues and series, as a config of their own."""
    lines = SHIPPED[SHIPPED.index("# [[venues]]") :].splitlines()
    return "\n".join(line[2:] for line in lines if line.startswith("# ")) + (
        '\n[[series]]\nvenue = "oanda"\nsymbols = ["EUR_USD"]\ntimeframes = ["1m"]\n'
        'profile = "FOREX"\n'
        '\n[[series]]\nvenue = "coinbase"\nsymbols = ["BTC-USD"]\ntimeframes = ["1m"]\n'
    )


FILES_SEED = """
[healing]
calendar_overrides = "{dir}/overrides.toml"

[[venues]]
name = "alpaca"
kind = "alpaca"
rest_url = "https://data.alpaca.markets"
ws_url = "wss://stream.data.alpaca.markets"
api_key_file = "{dir}/key"
api_secret_file = "{dir}/secret"
options = {{ feed = "iex" }}

[[series]]
venue = "alpaca"
symbols = ["AAPL", "BRK.B"]
timeframes = ["1m", "1d"]
profile = "EQUITY"
calendar = "XNYS"
lookback = "30d"
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each example writes its files (module-scoped: hypothesis runs many
    examples per test function, and each rewrites what it uses)."""
    d = tmp_path_factory.mktemp("mutations")
    (d / "key").write_text("key\n")
    (d / "secret").write_text("secret\n")
    (d / "overrides.toml").write_bytes(OVERRIDES)
    return d


def seeds(workdir: Path) -> list[str]:
    return [SHIPPED, uncommented_examples(), GOOD, FILES_SEED.format(dir=workdir)]


def test_the_seeds_are_valid(workdir: Path) -> None:
    """Mutations start from configs that load: an error is then the mutation's."""
    for i, text in enumerate(seeds(workdir)):
        path = workdir / f"seed{i}.toml"
        path.write_text(text)
        assert load_config(path, env=ENV).series


# --- writing TOML -------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string; control characters and DEL escaped (TOML forbids them raw)."""
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def dumps(doc: dict[str, Any]) -> str:
    """The document as top-level `key = value` lines, tables inline: any tree
    of TOML values, including ones no `[table]` header could hold."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in doc.items())


class Deep:
    """A marker for a value nested `depth` deep, written as text: building it
    as a Python list would itself recurse when written."""

    def __init__(self, depth: int, table: bool) -> None:
        self.depth, self.table = depth, table

    def text(self) -> str:
        if self.table:
            return "{a = " * self.depth + "1" + "}" * self.depth
        return "[" * self.depth + "]" * self.depth


def dumps_with_deep(doc: dict[str, Any], deep: Deep | None) -> str:
    text = dumps(doc)
    if deep is None:
        return text
    return text.replace(toml_string("\x00DEEP\x00"), deep.text(), 1)


# --- mutations -----------------------------------------------------------------


def paths(value: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every place in the tree: keys of tables and items of lists."""
    items: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for k, v in items:
        yield (*prefix, k)
        yield from paths(v, (*prefix, k))


DURATIONS = st.sampled_from(
    ["0s", "-5m", "1.5h", "5", "5 m", "5M", "99999999999999999999w", "36501d", "36500d",
     "1y", "", " ", "\uff11\uff15m", "15m\x00", "P1D"]
) | st.integers(1, 2000).map(lambda n: "10s " * n)  # fmt: skip
INTEGERS = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, -(2**63), 2**64]),
    st.integers(20, 4299).map(lambda n: 10**n),  # str() and tomllib stop at 4300 digits
)
STRINGS = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(max_codepoint=0x3F), max_size=30),  # controls, NUL, punctuation
    st.sampled_from(
        ["", " ", "\x00", "a\x00b", "BTC USDT", "\u200b", "\ufeff", "../../etc/passwd",
         "/dev/zero", "/dev/stdin", "/proc/self/mem", "/", ".", "[]:8321", "0.0.0.0:8321",
         "http://", "ws://\x00", "XNYS", "FOREX", "EQUITY", "1m"]
    ),
    st.tuples(st.sampled_from("xé\x00 "), st.integers(60, 200_000)).map(lambda c: c[0] * c[1]),
    DURATIONS,
)  # fmt: skip
SCALARS = st.one_of(
    st.booleans(), INTEGERS, st.floats(), STRINGS, st.dates(), st.datetimes(), st.times()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=8), STRINGS), inner, max_size=4)
    ),
    max_leaves=12,
)
DEEP = st.builds(Deep, st.integers(1, 3000), st.booleans())


@st.composite
def mutated(draw: st.DrawFn, workdir: Path) -> tuple[str, Deep | None]:
    """A seed config with a few mutations; its TOML text and any deep value."""
    import tomllib

    doc: dict[str, Any] = tomllib.loads(draw(st.sampled_from(seeds(workdir))))
    deep = None
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths(doc))
        place = draw(st.sampled_from(places)) if places else ()
        parent: Any = doc
        for step in place[:-1]:
            parent = parent[step]
        op = draw(st.sampled_from(["replace", "replace", "remove", "add", "deep", "duration"]))
        last = place[-1] if place else None
        if op == "add" or last is None:
            target = parent if isinstance(parent, dict) else doc
            target[draw(st.one_of(st.text(max_size=8), STRINGS))] = draw(VALUES)
        elif op == "remove":
            parent.pop(last)
        elif op == "deep" and deep is None:
            deep = draw(DEEP)
            parent[last] = "\x00DEEP\x00"
        elif op == "duration":
            parent[last] = draw(DURATIONS)
        else:
            parent[last] = draw(VALUES)
    return dumps_with_deep(doc, deep), deep


@st.composite
def spliced(draw: st.DrawFn, text: str) -> bytes:
    """The text's bytes with non-UTF-8 or arbitrary bytes spliced in, or cut short."""
    data = text.encode("utf-8")
    at = draw(st.integers(0, len(data)))
    junk = draw(
        st.one_of(
            st.sampled_from([b"\xff", b"\xe9", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\r", b"\x1b"]),
            st.binary(max_size=16),
        )
    )
    if draw(st.booleans()):
        return data[:at] + junk + data[at:]
    return data[:at]


def check_loads(path: Path) -> None:
    """`load_config` answers with a config or a `ConfigError`, whose message is
    one printable line of bounded length (never a whole file quoted)."""
    try:
        load_config(path, env=ENV)
        event("loaded")
    except ConfigError as e:
        section = e.path.split("[")[0].split(".")[0]
        known = ("daemon", "database", "healing", "venues", "series")
        where = section if section in known else "(unknown key)" if section else "(file)"
        event(f"ConfigError at {where}")
        message = str(e)
        assert message and len(message) <= 1000, message[:2000]
        assert message.isprintable(), repr(message[:2000])


# --- in-process -----------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_configs_load_or_name_the_key(workdir: Path, data: st.DataObject) -> None:
    text, _ = data.draw(mutated(workdir))
    path = workdir / "mutated.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check_loads(path)


@FUZZ
@given(data=st.data())
def test_spliced_bytes_load_or_name_the_key(workdir: Path, data: st.DataObject) -> None:
    text = data.draw(st.sampled_from(seeds(workdir)))
    path = workdir / "spliced.toml"
    path.write_bytes(data.draw(spliced(text)))
    check_loads(path)


@FUZZ
@given(content=st.binary(max_size=2000))
@example(content=b"")
@example(content=b"\xff\xfe[\x00d\x00a\x00e\x00m\x00o\x00n\x00]\x00")  # UTF-16
@example(content=b"\xef\xbb\xbf[daemon]\n")  # UTF-8 byte-order mark
@example(content=b"a = " + b"[" * 10_000)
def test_arbitrary_bytes_load_or_name_the_key(workdir: Path, content: bytes) -> None:
    path = workdir / "bytes.toml"
    path.write_bytes(content)
    check_loads(path)


@FUZZ
@given(data=st.data())
def test_mutated_overrides_name_the_key(workdir: Path, data: st.DataObject) -> None:
    """The overrides file is read through the config: its errors name the key
    that points at it."""
    import tomllib

    doc = tomllib.loads(OVERRIDES.decode())
    for _ in range(data.draw(st.integers(1, 3))):
        places = list(paths(doc))
        place = data.draw(st.sampled_from(places))
        parent: Any = doc
        for step in place[:-1]:
            parent = parent[step]
        parent[place[-1]] = data.draw(VALUES)
    content = dumps(doc).encode("utf-8", errors="surrogatepass")
    if data.draw(st.booleans()):
        content = data.draw(spliced(content.decode("utf-8", errors="replace")))
    (workdir / "overrides.toml").write_bytes(content)
    path = workdir / "with-overrides.toml"
    path.write_text(FILES_SEED.format(dir=workdir))
    try:
        load_config(path, env=ENV)
    except ConfigError as e:
        assert e.path == "healing.calendar_overrides", str(e)
        assert len(str(e)) <= 1000 and str(e).isprintable(), repr(str(e)[:2000])
    finally:
        (workdir / "overrides.toml").write_bytes(OVERRIDES)


# --- the real command -------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "candled", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("CANDLED_")} | ENV,
        timeout=120,
    )


@FUZZ_CLI
@given(data=st.data())
def test_check_config_exits_0_or_78_without_a_traceback(workdir: Path, data: st.DataObject) -> None:
    path = workdir / "cli.toml"
    text, _ = data.draw(mutated(workdir))
    if data.draw(st.booleans()):
        path.write_bytes(data.draw(spliced(text)))
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    r = check_config(path)
    assert r.returncode in (0, EX_CONFIG), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    if r.returncode == EX_CONFIG:
        assert r.stderr.startswith("candled: config error: "), r.stderr[-3000:]
