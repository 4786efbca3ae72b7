"""Spool records with a valid checksum are still not trusted (issue 12 item 4).

A checksum only says the bytes are the ones written. Whatever a record holds,
replay must neither crash the writer (which replays the spool first, so a
crash there is a crash loop) nor let an insane candle, or a series name the
database refuses for ever, through. A record that does not decode is damage,
skipped and reported like any corruption (the heal cycle refills it); a candle
that decodes but fails validation is quarantined with its reason and counted,
while the good candles of the same record are written.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from candled import metrics
from candled.domain import Candle, SeriesKey
from candled.domain.timeframe import SUPPORTED
from candled.store.spool import MAGIC, MAX_NAME_BYTES, Spool, SpoolCorrupt, SpoolError
from candled.store.writer import CandleStore, CandleWriter
from candled.validate import problem
from tests.test_writer_loss import Proxy, until

T0 = datetime(2024, 1, 1, tzinfo=UTC)
KEY = SeriesKey("sim", "BTC-USD", "1m")
NAMES = (b"sim", b"BTC-USD", b"1m")
Row = tuple[int, int, float, float, float, float, float]


def us(ts: datetime) -> int:
    return (ts - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def row(minute: int, o: float = 100.0, h: float = 101.0, lo: float = 99.0, c: float = 100.5,
        v: float = 3.0, *, series: int = 0) -> Row:  # fmt: skip
    return (series, us(T0 + timedelta(minutes=minute)), o, h, lo, c, v)


def payload(rows: Sequence[Row], names: Sequence[bytes] = NAMES, *, count: int | None = None,
            version: int = 1) -> bytes:  # fmt: skip
    """A batch laid out by hand (see spool.py): anything the format can say."""
    table = b"".join(struct.pack("<H", len(s)) + s for s in names)
    n = len(rows) if count is None else count
    return (struct.pack("<BII", version, n, len(names) // 3) + table
            + b"".join(struct.pack("<Iq5d", *r) for r in rows))  # fmt: skip


def record(body: bytes) -> bytes:
    """`body` framed with a valid checksum."""
    length = struct.pack("<I", len(body))
    return MAGIC + length + struct.pack("<I", zlib.crc32(body, zlib.crc32(length))) + body


def candle(r: Row) -> Candle:
    return Candle(KEY, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=r[1]), *r[2:])


@dataclass
class Case:
    hostile: bytes
    stored: list[Row] = field(default_factory=list)  # good candles of the hostile record
    quarantined: list[tuple[Row, str]] = field(default_factory=list)
    corrupt: str | None = None  # what the skipped record's reason says


GOOD = row(100)
RANDOM_NAME = bytes(random.Random(4).choices(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=60_000))
CASES = {
    # Rows the validator refuses: quarantined, the good row beside them stored.
    **{
        name: Case(record(payload([GOOD, bad])), stored=[GOOD], quarantined=[(bad, reason)])
        for name, bad, reason in [
            ("nan open", row(101, o=math.nan), "price not finite and positive"),
            ("negative close", row(101, c=-1.0), "price not finite and positive"),
            ("inf high", row(101, h=math.inf), "price not finite and positive"),
            ("high below low", row(101, h=90.0, lo=95.0), "high below open or close"),
            ("negative volume", row(101, v=-5.0), "volume not finite and non-negative"),
            ("nan volume", row(101, v=math.nan), "volume not finite and non-negative"),
            (
                "ts not aligned",
                (0, us(T0) + 1, 100.0, 101.0, 99.0, 100.5, 3.0),
                "ts not aligned to 1m",
            ),
            ("bar in the future", row(60 * 24 * 365 * 5000), "bar closes in the future"),
        ]
    },
    "all rows bad": Case(
        record(payload([row(101, o=math.nan), row(102, lo=-3.0)])),
        quarantined=[
            (row(101, o=math.nan), "price not finite and positive"),
            (row(102, lo=-3.0), "price not finite and positive"),
        ],
    ),
    # Records that do not decode: skipped as corruption, good row and all.
    "ts 2**62": Case(
        record(payload([GOOD, (0, 2**62, 1.0, 1.0, 1.0, 1.0, 1.0)])),
        corrupt="outside the datetime range",
    ),
    "ts -2**63": Case(
        record(payload([GOOD, (0, -(2**63), 1.0, 1.0, 1.0, 1.0, 1.0)])),
        corrupt="outside the datetime range",
    ),
    "row names no series": Case(record(payload([GOOD, row(101, series=7)])), corrupt="series"),
    "bad utf-8 symbol": Case(
        record(payload([GOOD], [b"sim", b"BTC\xff\xfe", b"1m"])), corrupt="utf-8"
    ),
    "NUL in symbol": Case(record(payload([GOOD], [b"sim", b"BTC\0USD", b"1m"])), corrupt="NUL"),
    "unknown timeframe": Case(
        record(payload([GOOD], [b"sim", b"BTC", b"7x"])), corrupt="timeframe"
    ),
    "string length past the payload": Case(
        record(
            struct.pack("<BII", 1, 0, 1)
            + struct.pack("<H", 3)
            + b"sim"
            + struct.pack("<H", 65_535)
            + b"BTC"
        ),
        corrupt="truncated",
    ),
    "60,000-byte symbol": Case(
        record(payload([GOOD], [b"sim", RANDOM_NAME, b"1m"])), corrupt="series name of 60000 bytes"
    ),
    "truncated payload, checksum recomputed": Case(
        record(payload([GOOD, row(101)])[:-9]), corrupt="row section"
    ),
    "count larger than the rows": Case(
        record(payload([GOOD], count=2**32 - 1)), corrupt="row section"
    ),
    "unknown version": Case(record(payload([GOOD], version=9)), corrupt="version"),
}
BEFORE = [row(m) for m in range(3)]
AFTER = [row(m) for m in range(3, 6)]


def spool_dir(base: Path, *records: bytes) -> Path:
    """A spool directory holding `records` in one file, as a crashed daemon left it."""
    d = base / "spool"
    d.mkdir(mode=0o700)
    (d / "spool-0000000001.bin").write_bytes(b"".join(records))
    return d


async def contents(dsn: str) -> tuple[set[Row], list[tuple[Row, str, str]]]:
    """(stored rows, quarantined rows with reason and source) of KEY."""
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetch("SELECT ts, open, high, low, close, volume FROM candles")
        quarantined = await conn.fetch(
            "SELECT venue, symbol, timeframe, ts, reason, payload FROM quarantine ORDER BY id"
        )
    finally:
        await conn.close()
    out = []
    for q in quarantined:
        assert (q["venue"], q["symbol"], q["timeframe"]) == (KEY.venue, KEY.symbol, KEY.timeframe)
        p = json.loads(q["payload"])
        values = tuple(float(p[k]) for k in ("open", "high", "low", "close", "volume"))
        out.append(((0, us(q["ts"]), *values), q["reason"], p["source"]))
    return {(0, us(r["ts"]), *r[1:]) for r in stored}, out


def same(a: Row, b: Row) -> bool:
    """Rows equal, NaN included."""
    return a[:2] == b[:2] and all(x == y or (math.isnan(x) and math.isnan(y))
                                  for x, y in zip(a[2:], b[2:], strict=True))  # fmt: skip


def rejected(reason: str) -> float:
    labels = {"venue": KEY.venue, "reason": reason}
    return metrics.REGISTRY.get_sample_value("candled_candles_rejected_total", labels) or 0.0


def writer_for(pool: asyncpg.Pool, spool: Spool) -> CandleWriter:
    return CandleWriter(CandleStore(pool, timeout_s=5.0), batch_size=50, max_age=0.01,
                        capacity=200, retry_cap_s=0.2, spool=spool)  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_a_hostile_record_is_quarantined_or_skipped_and_the_writer_goes_on(
    migrated: str, tmp_path: Path, case: Case
) -> None:
    d = spool_dir(tmp_path, record(payload(BEFORE)), case.hostile, record(payload(AFTER)))
    reasons = {reason for _, reason in case.quarantined}
    counted = {reason: rejected(reason) for reason in reasons}
    pool = await asyncpg.create_pool(migrated, min_size=0, max_size=4)
    spool = Spool(d)
    try:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await until(lambda: spool.pending_batches == 0 or runner.done(), within=20)
            assert not runner.done(), "the writer stopped"
            # Still writing: a live candle put now goes through.
            await writer.put([candle(row(200))])
            await writer.drain()
            runner.cancel()
        stored, quarantined = await contents(migrated)
        assert stored == {*BEFORE, *AFTER, *case.stored, row(200)}
        assert len(quarantined) == len(case.quarantined)
        for (got, reason, source), (want, want_reason) in zip(
            quarantined, case.quarantined, strict=True
        ):
            assert same(got, want) and (reason, source) == (want_reason, "spool")
        for reason in reasons:
            n = sum(r == reason for _, r in case.quarantined)
            assert rejected(reason) == counted[reason] + n
        if case.corrupt is None:
            assert spool.corruptions == []
        else:
            [corruption] = spool.corruptions
            assert case.corrupt in corruption.reason
        assert spool.files == 0 and not list(d.glob("spool-*.bin"))
    finally:
        spool.close()
        await pool.close()


@pytest.fixture
async def proxy(migrated: str) -> AsyncIterator[Proxy]:
    async with Proxy(migrated) as p:
        yield p


async def test_a_failed_quarantine_keeps_the_record_in_the_spool(
    proxy: Proxy, migrated: str, tmp_path: Path
) -> None:
    """The database is down when replay finds a bad candle: the evidence is
    not lost, the record stays unacked and is quarantined once it is back."""
    bad = row(1, o=math.nan)
    d = spool_dir(tmp_path, record(payload([bad, row(2)])), record(payload([row(3)])))
    proxy.down()
    pool = await asyncpg.create_pool(proxy.dsn, min_size=0, max_size=4)
    spool = Spool(d)
    try:
        writer = writer_for(pool, spool)
        async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            await until(lambda: writer.failures >= 3, within=20)
            assert spool.pending_batches == 2 and len(list(d.glob("spool-*.bin"))) == 1
            proxy.up()
            await until(lambda: spool.pending_batches == 0, within=20)
            assert writer.failing is None
            runner.cancel()
        stored, quarantined = await contents(migrated)
        assert stored == {row(2), row(3)}
        [(got, reason, source)] = quarantined
        assert same(got, bad) and (reason, source) == ("price not finite and positive", "spool")
    finally:
        spool.close()
        await pool.close()


# --- fuzz: the reader over any bytes --------------------------------------------

# A bounded run in `make test`, unless a profile with more (HYPOTHESIS_PROFILE=fuzz) is loaded.
FUZZ = settings(
    max_examples=max(200, settings.default.max_examples),
    deadline=None,  # a shared, busy machine: slow is not wrong
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
GOOD_NAMES = st.sampled_from([b"sim", b"BTC-USD", b""]) | st.text(max_size=6).map(str.encode)
BAD_NAMES = st.one_of(
    st.sampled_from([b"\xff", b"a\0b", b"x" * (MAX_NAME_BYTES + 1), b"7x"]),
    st.binary(max_size=12),
)
TIMEFRAMES = st.sampled_from([tf.encode() for tf in SUPPORTED])
DATETIME_US = (us(datetime.min.replace(tzinfo=UTC)), us(datetime.max.replace(tzinfo=UTC)))
I64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**62, -(2**63), 2**63 - 1, DATETIME_US[0] - 1, DATETIME_US[1] + 1]),
    st.integers(*DATETIME_US),
    st.integers(0, 10**6).map(lambda m: us(T0) + 60_000_000 * m),
)
FLOAT = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    """A payload in the batch layout, every field anything it can hold; one
    in six has a count, version, string length, row's series or name that lies."""
    lie = draw(st.integers(0, 29))
    names = BAD_NAMES | GOOD_NAMES if lie == 4 else GOOD_NAMES
    key = st.tuples(names, names, TIMEFRAMES | names if lie == 4 else TIMEFRAMES)
    series = draw(st.lists(key, min_size=1, max_size=3))
    index = st.integers(0, 2**32 - 1) if lie == 3 else st.integers(0, len(series) - 1)
    rows = draw(st.lists(st.tuples(index, I64, FLOAT, FLOAT, FLOAT, FLOAT, FLOAT), max_size=6))
    count = draw(st.integers(0, 2**32 - 1)) if lie == 0 else None
    version = draw(st.integers(0, 255)) if lie == 1 else 1
    body = payload(rows, [name for k in series for name in k], count=count, version=version)
    if lie == 2:
        body = body[:9] + struct.pack("<H", draw(st.integers(0, 65_535))) + body[11:]
    return body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid records (hand-built, so checksums hold), then damaged: bytes
    flipped, cut, inserted; records re-framed after their payload was cut."""
    records = [record(draw(batches())) for _ in range(draw(st.integers(1, 4)))]
    data = bytearray(b"".join(records))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "reframe"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(max_size=32) | st.just(MAGIC))
        else:
            body = draw(batches())
            data += record(body[: draw(st.integers(0, len(body)))])
    return bytes(data)


SPOOL_FILES = st.lists(st.binary(max_size=400) | batches().map(record) | mutated(),
                       min_size=1, max_size=3)  # fmt: skip


def read_all(d: Path, strict: bool) -> list[Candle]:
    """Open and replay the spool in `d`, acking as the writer does."""
    with Spool(d, strict=strict) as s:
        out: list[Candle] = []
        last = None
        for pos, batch in s.replay():
            assert all(isinstance(c, Candle) for c in batch)
            out += batch
            last = pos
        if last is not None:
            s.ack(last)
        assert s.pending_batches == 0
        return out


@FUZZ
@given(files=SPOOL_FILES, strict=st.booleans())
@example(files=[record(payload([row(0), (0, 2**62, 1.0, 1.0, 1.0, 1.0, 1.0)])) + record(b"")],
         strict=False)  # fmt: skip
def test_the_reader_answers_any_bytes_with_records_or_its_own_corruption(
    files: list[bytes], strict: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for i, data in enumerate(files, 1):
            (d / f"spool-{i:010d}.bin").write_bytes(data)
        try:
            candles = read_all(d, strict)
        except SpoolCorrupt:
            assert strict
            return
        except SpoolError as e:  # no other spool error can come from reading
            raise AssertionError(f"unexpected {e!r}") from e
        for c in candles:
            # What replay yields is a candle the validator can judge (and the
            # writer then stores or quarantines).
            assert c.ts.tzinfo is UTC and isinstance(c.series, SeriesKey)
            assert "\0" not in c.series.venue + c.series.symbol
            problem(c, NOW)
