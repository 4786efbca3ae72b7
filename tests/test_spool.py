"""The on-disk spool: real files in tmp_path, torn tails, corruption, acks, bounds."""

from __future__ import annotations

import errno
import math
import os
import random
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from candled.domain import Candle, SeriesKey
from candled.store import spool as spool_mod
from candled.store.spool import (
    MAGIC,
    Corruption,
    Spool,
    SpoolCorrupt,
    SpoolFull,
    SpoolLocked,
    SpoolPosition,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
KEYS = [SeriesKey("sim", f"SYM{i}", "1m") for i in range(3)]


def batch(b: int, n: int = 50) -> list[Candle]:
    """Batch number `b`: distinguishable from every other batch."""
    return [
        Candle(KEYS[i % 3], T0 + timedelta(minutes=b * n + i), 100.0 + b, 101.5 + i / 7,
               99.25, 100.5 - b / 3, float(i))
        for i in range(n)
    ]  # fmt: skip


def replayed(spool: Spool) -> list[list[Candle]]:
    return [b for _, b in spool.replay()]


def spool_files(d: Path) -> list[Path]:
    return sorted(d.glob("spool-*.bin"))


def write(d: Path, batches: list[list[Candle]]) -> list[int]:
    """Append batches in one session; returns each record's size."""
    with Spool(d) as s:
        return [s.append(b) for b in batches]


# --- round trips --------------------------------------------------------------


def test_round_trip_many_batches_across_files(tmp_path: Path) -> None:
    d = tmp_path / "spool"
    batches = [batch(b) for b in range(40)]
    with Spool(d, rotate_bytes=8 << 10) as s:
        sizes = [s.append(b) for b in batches]
        assert s.pending_batches == 40
        assert s.pending_candles == 40 * 50
        assert s.bytes == sum(sizes) == sum(p.stat().st_size for p in spool_files(d))
        assert replayed(s) == batches
        # Replaying without acking changes nothing.
        assert replayed(s) == batches
    files = spool_files(d)
    assert len(files) > 5
    assert all(p.stat().st_size <= 8 << 10 for p in files)


def test_values_come_back_exactly(tmp_path: Path) -> None:
    plus2 = timezone(timedelta(hours=2))
    odd = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2]
    key = SeriesKey("binance", "BTCUSDT", "1s")
    candles = [
        Candle(key, datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=plus2), *odd[:5]),
        Candle(KEYS[0], datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), *odd[2:]),
        Candle(key, datetime(9999, 12, 31, 23, 59, tzinfo=UTC), *odd[1:6]),
    ]
    with Spool(tmp_path) as s:
        s.append(candles)
        [back] = replayed(s)

    def bits(c: Candle) -> bytes:
        return struct.pack("<5d", c.open, c.high, c.low, c.close, c.volume)

    assert [bits(c) for c in back] == [bits(c) for c in candles]
    assert [c.ts for c in back] == [c.ts for c in candles]
    assert all(c.ts.tzinfo is UTC for c in back)
    assert back[0].ts.hour == 10  # 12:00+02:00
    assert [c.series for c in back] == [c.series for c in candles]
    assert back[0].series is back[2].series  # one key object per series in a batch


def test_empty_append_writes_nothing(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        assert s.append([]) == 0
        assert spool_files(tmp_path) == []
        assert replayed(s) == []


def test_restart_continues_in_a_new_file(tmp_path: Path) -> None:
    write(tmp_path, [batch(b) for b in range(5)])
    [first] = spool_files(tmp_path)
    with Spool(tmp_path) as s:
        assert (s.pending_batches, s.pending_candles) == (5, 250)
        for b in range(5, 8):
            s.append(batch(b))
        assert replayed(s) == [batch(b) for b in range(8)]
    files = spool_files(tmp_path)
    assert len(files) == 2 and files[0] == first
    assert files[1].name > first.name
    with Spool(tmp_path) as s:
        assert replayed(s) == [batch(b) for b in range(8)]


def test_directory_and_file_permissions(tmp_path: Path) -> None:
    d = tmp_path / "state" / "spool"
    write(d, [batch(0)])
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(spool_files(d)[0].stat().st_mode) == 0o600


def test_second_open_is_refused_while_locked(tmp_path: Path) -> None:
    with Spool(tmp_path), pytest.raises(SpoolLocked):
        Spool(tmp_path)
    Spool(tmp_path).close()  # released on close (and by the kernel on kill -9)


# --- torn tails ---------------------------------------------------------------


def _check_recovered(d: Path, complete: int) -> None:
    """After a torn tail: the complete batches replay, appending works, and
    the next restart finds a clean spool."""
    with Spool(d) as s:
        assert replayed(s) == [batch(b) for b in range(complete)]
        assert s.corruptions == []
        s.append(batch(99))
    with Spool(d, strict=True) as s:
        assert replayed(s) == [*(batch(b) for b in range(complete)), batch(99)]
        assert s.corruptions == []


@pytest.mark.parametrize("keep", [0, 1, 4, 11, 12, 13, 100, -1])
def test_torn_last_record_is_truncated_never_replayed(tmp_path: Path, keep: int) -> None:
    sizes = write(tmp_path, [batch(b) for b in range(5)])
    [path] = spool_files(tmp_path)
    last_start = sum(sizes[:-1])
    cut = last_start + (keep if keep >= 0 else sizes[-1] + keep)
    os.truncate(path, cut)
    with Spool(tmp_path) as s:
        assert path.stat().st_size == last_start  # the torn bytes are gone
        assert (s.pending_batches, s.bytes) == (4, last_start)
    _check_recovered(tmp_path, 4)


def _frame(payload: bytes, crc_delta: int = 0) -> bytes:
    length = struct.pack("<I", len(payload))
    crc = zlib.crc32(payload, zlib.crc32(length)) ^ crc_delta
    return MAGIC + length + struct.pack("<I", crc) + payload


GARBAGE = {
    "zeros": b"\0" * 100,
    "three bytes": b"\xff\xff\xff",
    "random": random.Random(6).randbytes(5000),
    "magic only": MAGIC,
    "length past eof": MAGIC + struct.pack("<II", 1 << 20, 0) + b"x" * 50,
    "bad crc at eof": _frame(b"\x01" + b"y" * 60, crc_delta=1),
    "crc ok but not a batch": _frame(b"not a batch at all"),
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_after_the_last_record_is_a_torn_tail(tmp_path: Path, garbage: bytes) -> None:
    sizes = write(tmp_path, [batch(b) for b in range(5)])
    [path] = spool_files(tmp_path)
    with path.open("ab") as f:
        f.write(garbage)
    with Spool(tmp_path) as s:
        assert path.stat().st_size == sum(sizes)
        assert s.corruptions == []
    _check_recovered(tmp_path, 5)


def test_torn_tail_in_the_newest_of_several_files(tmp_path: Path) -> None:
    write(tmp_path, [batch(b) for b in range(3)])
    sizes = write(tmp_path, [batch(b) for b in range(3, 6)])
    newest = spool_files(tmp_path)[-1]
    os.truncate(newest, sum(sizes) - 7)
    _check_recovered(tmp_path, 5)


def test_a_file_left_empty_is_removed(tmp_path: Path) -> None:
    write(tmp_path, [batch(0)])
    sizes = write(tmp_path, [batch(1)])
    os.truncate(spool_files(tmp_path)[-1], sizes[0] // 2)
    with Spool(tmp_path) as s:
        assert s.files == 1
        assert len(spool_files(tmp_path)) == 1
    _check_recovered(tmp_path, 1)


# --- corruption (documented choice: skip and report; strict=True raises) -------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_corruption_in_the_middle_is_skipped_and_reported(tmp_path: Path) -> None:
    sizes = write(tmp_path, [batch(b) for b in range(5)])
    [path] = spool_files(tmp_path)
    start = sum(sizes[:2])
    _flip(path, start + 100)  # inside batch 2's rows
    with Spool(tmp_path) as s:
        assert s.corruptions == [Corruption(path, start, sizes[2], "crc mismatch")]
        assert replayed(s) == [batch(b) for b in (0, 1, 3, 4)]
        assert path.stat().st_size == sum(sizes)  # not mistaken for a torn tail
        s.append(batch(5))
        positions = [p for p, _ in s.replay()]
        s.ack(positions[-1])
        assert spool_files(tmp_path) == [] and s.pending_batches == 0


def test_damaged_length_resynchronises_on_the_next_record(tmp_path: Path) -> None:
    sizes = write(tmp_path, [batch(b) for b in range(5)])
    [path] = spool_files(tmp_path)
    start = sum(sizes[:1])
    _flip(path, start + 6)  # the high bytes of batch 1's length
    with Spool(tmp_path) as s:
        [corruption] = s.corruptions
        assert (corruption.offset, corruption.length) == (start, sizes[1])
        assert replayed(s) == [batch(b) for b in (0, 2, 3, 4)]


def test_damage_at_the_end_of_an_older_file_is_corruption(tmp_path: Path) -> None:
    sizes = write(tmp_path, [batch(b) for b in range(3)])
    write(tmp_path, [batch(3)])
    older = spool_files(tmp_path)[0]
    _flip(older, sum(sizes) - 1)
    with Spool(tmp_path) as s:
        assert [(c.path, c.offset) for c in s.corruptions] == [(older, sum(sizes[:2]))]
        assert older.stat().st_size == sum(sizes)
        assert replayed(s) == [batch(0), batch(1), batch(3)]


def test_strict_raises_naming_file_and_offset(tmp_path: Path) -> None:
    sizes = write(tmp_path, [batch(b) for b in range(3)])
    [path] = spool_files(tmp_path)
    _flip(path, sizes[0] + 20)
    with pytest.raises(SpoolCorrupt) as raised:
        Spool(tmp_path, strict=True)
    assert raised.value.corruption.path == path
    assert raised.value.corruption.offset == sizes[0]
    assert f"{path} at offset {sizes[0]}" in str(raised.value)
    with Spool(tmp_path) as s:  # the failed open released its lock
        assert len(replayed(s)) == 2


@pytest.mark.parametrize("strict", [False, True])
def test_damage_found_during_replay(tmp_path: Path, strict: bool) -> None:
    with Spool(tmp_path, strict=strict) as s:
        sizes = [s.append(batch(b)) for b in range(3)]
        [path] = spool_files(tmp_path)
        _flip(path, sum(sizes) - 5)  # the last batch, after it was written
        if strict:
            with pytest.raises(SpoolCorrupt):
                replayed(s)
            return
        items = list(s.replay())
        assert [b for _, b in items] == [batch(0), batch(1)]
        assert [c.offset for c in s.corruptions] == [sum(sizes[:2])]
        s.ack(items[-1][0])  # the skipped batch needs no ack of its own
        assert s.pending_batches == 0 and spool_files(tmp_path) == []


def _payload(
    names: list[bytes], rows: list[tuple[int, int, float, float, float, float, float]]
) -> bytes:
    """A batch laid out by hand (a valid checksum, whatever it says)."""
    table = b"".join(struct.pack("<H", len(s)) + s for s in names)
    body = b"".join(struct.pack("<Iq5d", *r) for r in rows)
    return struct.pack("<BII", 1, len(rows), len(names) // 3) + table + body


_US0 = (T0 - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
_ROW0 = (0, _US0, 1.0, 1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("ts", "series"), [(2**62, 0), (-(2**63), 0), (_US0, 1)], ids=["2**62", "-2**63", "no series"]
)
def test_a_row_that_does_not_decode_is_damage_found_on_replay(
    tmp_path: Path, ts: int, series: int
) -> None:
    """Its checksum is valid, so it passes the open; replay skips and reports it."""
    sizes = write(tmp_path, [batch(0)])
    [path] = spool_files(tmp_path)
    hostile = _frame(_payload([b"sim", b"SYM0", b"1m"], [_ROW0, (series, ts, *_ROW0[2:])]))
    with path.open("ab") as f:
        f.write(hostile + _frame(_payload([b"sim", b"SYM0", b"1m"], [_ROW0])))
    with Spool(tmp_path) as s:
        assert s.corruptions == []
        assert replayed(s) == [batch(0), [Candle(KEYS[0], T0, 1.0, 1.0, 1.0, 1.0, 1.0)]]
        [corruption] = s.corruptions
        assert (corruption.offset, corruption.length) == (sizes[0], len(hostile))
        assert corruption.reason.startswith("undecodable batch: a row")


@pytest.mark.parametrize(
    "symbol", [b"SYM\0", b"S" * (spool_mod.MAX_NAME_BYTES + 1)], ids=["NUL", "too long"]
)
def test_a_series_name_the_database_cannot_hold_is_damage(tmp_path: Path, symbol: bytes) -> None:
    """Written back, it would fail for ever and hold up the whole spool."""
    sizes = write(tmp_path, [batch(0)])
    [path] = spool_files(tmp_path)
    hostile = _frame(_payload([b"sim", symbol, b"1m"], [_ROW0]))
    with path.open("ab") as f:
        f.write(hostile + _frame(_payload([b"sim", b"SYM0", b"1m"], [_ROW0])))
    with Spool(tmp_path) as s:
        [corruption] = s.corruptions
        assert (corruption.offset, corruption.length) == (sizes[0], len(hostile))
        assert replayed(s) == [batch(0), [Candle(KEYS[0], T0, 1.0, 1.0, 1.0, 1.0, 1.0)]]


def test_the_longest_series_name_allowed_comes_back(tmp_path: Path) -> None:
    key = SeriesKey("v" * spool_mod.MAX_NAME_BYTES, "é" * (spool_mod.MAX_NAME_BYTES // 2), "1m")
    candles = [Candle(key, T0, 1.0, 1.0, 1.0, 1.0, 1.0)]
    write(tmp_path, [candles])
    with Spool(tmp_path) as s:
        assert replayed(s) == [candles] and s.corruptions == []


# --- acks ---------------------------------------------------------------------


def test_ack_deletes_only_fully_acked_files(tmp_path: Path) -> None:
    with Spool(tmp_path, rotate_bytes=8 << 10) as s:
        for b in range(12):
            s.append(batch(b))
        files = spool_files(tmp_path)
        assert len(files) >= 3
        items = list(s.replay())
        by_file: dict[int, list[SpoolPosition]] = {}
        for pos, _ in items:
            by_file.setdefault(pos.seq, []).append(pos)
        second = sorted(by_file)[1]
        middle = by_file[second][0]  # first batch of the second file
        s.ack(middle)
        assert spool_files(tmp_path) == files[1:]
        done = [p for p, _ in items].index(middle) + 1
        assert s.pending_batches == 12 - done
        assert s.pending_candles == 50 * (12 - done)
        # Replay resumes after the last ack.
        assert replayed(s) == [batch(b) for b in range(done, 12)]
        s.ack(by_file[second][-1])
        assert spool_files(tmp_path) == files[2:]
        with pytest.raises(ValueError):
            s.ack(SpoolPosition(max(by_file), 999))
        s.ack(items[-1][0])
        assert spool_files(tmp_path) == []
        assert (s.pending_batches, s.pending_candles, s.bytes, s.files) == (0, 0, 0, 0)
        # The newest file was deleted too; appending starts a new one.
        s.append(batch(50))
        [new] = spool_files(tmp_path)
        assert new.name > files[-1].name
        assert replayed(s) == [batch(50)]


def test_acks_are_not_persisted_a_restart_replays_the_rest_of_the_file(tmp_path: Path) -> None:
    with Spool(tmp_path) as s:
        for b in range(4):
            s.append(batch(b))
        first, *_ = s.replay()
        s.ack(first[0])
        assert s.pending_batches == 3
    with Spool(tmp_path) as s:
        # Rewriting batch 0 is idempotent in the database.
        assert replayed(s) == [batch(b) for b in range(4)]


def test_replay_sees_batches_appended_while_it_runs(tmp_path: Path) -> None:
    with Spool(tmp_path, rotate_bytes=4 << 10) as s:
        s.append(batch(0))
        seen = []
        for pos, b in s.replay():
            seen.append(b)
            if len(seen) < 5:
                appender = threading.Thread(target=s.append, args=(batch(len(seen)),))
                appender.start()
                appender.join()
            s.ack(pos)
        assert seen == [batch(b) for b in range(5)]
        assert s.pending_batches == 0


# --- bounds and failures ------------------------------------------------------


def test_spool_full_writes_nothing(tmp_path: Path) -> None:
    size = write(tmp_path / "probe", [batch(0)])[0]
    with Spool(tmp_path / "s", max_bytes=3 * size + 10, rotate_bytes=2 * size) as s:
        for b in range(3):
            s.append(batch(b))
        before = [(p, p.stat().st_size) for p in spool_files(tmp_path / "s")]
        with pytest.raises(SpoolFull):
            s.append(batch(3))
        assert [(p, p.stat().st_size) for p in spool_files(tmp_path / "s")] == before
        assert s.pending_batches == 3
        positions = [p for p, _ in s.replay()]
        s.ack(positions[1])  # frees the first file (two batches)
        s.append(batch(3))
        assert replayed(s) == [batch(2), batch(3)]


def test_failed_write_rolls_back_the_partial_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = spool_mod._write_all

    def disk_full(fd: int, data: bytes, offset: int) -> None:
        real(fd, data[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    with Spool(tmp_path) as s:
        s.append(batch(0))
        monkeypatch.setattr(spool_mod, "_write_all", disk_full)
        with pytest.raises(OSError, match="No space"):
            s.append(batch(1))
        monkeypatch.setattr(spool_mod, "_write_all", real)
        assert s.pending_batches == 1
        assert spool_files(tmp_path)[0].stat().st_size == s.bytes
        s.append(batch(2))
        assert replayed(s) == [batch(0), batch(2)]
    with Spool(tmp_path, strict=True) as s:
        assert replayed(s) == [batch(0), batch(2)]


# --- throughput (reported, not asserted) --------------------------------------


def test_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n_batches, size = 100, 1_000
    keys = [SeriesKey("sim", f"SYM{i}", "1m") for i in range(20)]
    batches = [
        [
            Candle(keys[i % 20], T0 + timedelta(minutes=b * size + i), 100.0 + i, 101.0 + i,
                   99.0 + i, 100.5 + i, 3.25 * i)
            for i in range(size)
        ]
        for b in range(n_batches)
    ]  # fmt: skip
    with Spool(tmp_path) as s:
        t = time.perf_counter()
        written = sum(s.append(b) for b in batches)
        append_s = time.perf_counter() - t
        t = time.perf_counter()
        count = sum(len(b) for _, b in s.replay())
        replay_s = time.perf_counter() - t
    t = time.perf_counter()
    with Spool(tmp_path) as s:
        open_s = time.perf_counter() - t
        assert s.pending_candles == count == n_batches * size
    total = n_batches * size
    with capsys.disabled():
        print(
            f"\nspool: {total} candles, {written / total:.1f} B/candle, {written >> 20} MiB; "
            f"append+fsync {total / append_s:,.0f} candles/s ({append_s / n_batches * 1e3:.2f} ms/batch); "
            f"replay {total / replay_s:,.0f} candles/s; reopen+scan {open_s * 1e3:.1f} ms"
        )


# --- a real kill -9 -----------------------------------------------------------

_APPENDER = """
import sys
from pathlib import Path
from tests.test_spool import batch
from candled.store.spool import Spool

spool = Spool(Path(sys.argv[1]), rotate_bytes=16 << 10)
b = int(sys.argv[2])
while True:
    spool.append(batch(b, n=20))
    print(b, flush=True)  # this batch is durable
    b += 1
"""


def test_kill_9_mid_append_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    rnd = random.Random(9)
    next_batch = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _APPENDER, str(tmp_path), str(next_batch)],
            cwd=root, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        for _ in range(rnd.randint(3, 40)):
            durable = int(proc.stdout.readline())
        proc.kill()  # SIGKILL, wherever it is
        proc.wait()
        with Spool(tmp_path) as s:
            back = replayed(s)
        # Every batch reported durable is there, whole; at most the one in
        # flight follows, and it is whole too.
        assert back[: durable + 1] == [batch(b, n=20) for b in range(durable + 1)]
        assert len(back) in (durable + 1, durable + 2)
        assert back[-1] == batch(len(back) - 1, n=20)
        next_batch = len(back)
