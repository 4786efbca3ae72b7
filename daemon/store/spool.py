"""Append-only on-disk spool of candle batches, for database outages.

Blocking file I/O on purpose: the writer calls it through `asyncio.to_thread`,
and every method is thread-safe (one lock), so appends, replay reads and acks
may come from different worker threads.

Files are `spool-<seq>.bin` in the spool directory; a higher `seq` is newer.
Each file is a sequence of records, one record per appended batch:

    record  = magic "CSPL" | u32 length | u32 crc | payload[length]
    crc     = crc32(u32 length || payload)  (so a damaged length is caught too)
    payload = u8 version | u32 n_candles | u32 n_series
              | n_series x (venue, symbol, timeframe)   each u16 len + UTF-8
              | n_candles x row
    row     = u32 series index | i64 ts (us since epoch, UTC) | 5 x f64 OHLCV

All little-endian. Binary rows (52 bytes) rather than JSON lines: one
`Struct.pack` per candle, floats bit-exact (nan, inf, -0.0 included), and a
batch costs one CRC and one write. The per-batch series table keeps the keys
out of the rows. The magic lets a reader resynchronise after damage.

Durability: a batch counts as spooled once its record is written and the file
fdatasync'd (`append` returns only then); a new file's name is made durable by
fsyncing the directory before anything is written to it.

Damage, two kinds:
- torn tail: a crash in the middle of an append leaves a partial or
  unverifiable record at the end of the newest file. Opening the spool
  truncates it away (logged); it is never replayed. Appends only ever go to a
  fresh file, so only the newest file can be torn.
- corruption: a bad region followed by a valid record, or anywhere in an older
  file. By default it is skipped and reported (`corruptions`, logged with file
  and offset): the candles in it are lost from the spool, and the heal cycle
  re-fetches them from the venue, while the rest of the spool still reaches
  the database. With `strict=True` it raises `SpoolCorrupt` instead.
  A damaged *last* record of the newest file is indistinguishable from a torn
  one and is treated as torn.

A valid checksum only says the bytes are the ones written, not that they are
sane: the file may come from another build, a bug, or a hand. A record that
does not decode (a series name that is not UTF-8, holds a NUL or is longer
than `MAX_NAME_BYTES`, a row naming no series, a ts no datetime holds, ...) is
damage like any other, and decoding raises nothing else for any bytes. Values
are not judged here: the writer validates replayed candles like live ones.

Acks: `replay()` yields `(SpoolPosition, batch)`; `ack(position)` confirms that
batch and every one before it are in the database, and deletes the files it
fully covers. Acks live in memory: after a restart, files still present replay
from their start again, which is harmless because writes are idempotent.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import threading
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

from candled import logs
from candled.domain import Candle, SeriesKey
from candled.errors import CandledError

log = logs.get("candled.spool")

MAGIC = b"CSPL"
VERSION = 1
ROTATE_BYTES = 64 << 20
MAX_BYTES = 1 << 30
# Far longer than any venue, symbol or timeframe, and short enough that the
# three fit in one btree index entry (at most 2,704 bytes) of the series table:
# a longer name would make every write of its record fail, for ever.
MAX_NAME_BYTES = 1024
_FRAME = struct.Struct("<4sII")  # magic, payload length, crc32
_LEN = struct.Struct("<I")
_BATCH = struct.Struct("<BII")  # version, n_candles, n_series
_STR = struct.Struct("<H")
_ROW = struct.Struct("<Iq5d")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NAME = re.compile(r"^spool-(\d+)\.bin$")
_LOCK_NAME = "spool.lock"


class SpoolError(CandledError):
    """The spool cannot take or give back candles."""


class SpoolFull(SpoolError):
    """The batch would take the spool past `max_bytes`; nothing was written."""


class SpoolLocked(SpoolError):
    """Another process (or another open `Spool`) holds this directory."""


@dataclass(frozen=True, slots=True)
class Corruption:
    """A damaged region that was skipped: what the heal cycle has to refill."""

    path: Path
    offset: int
    length: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path} at offset {self.offset} ({self.length} bytes): {self.reason}"


class SpoolCorrupt(SpoolError):
    """A damaged record, raised only in strict mode (otherwise it is skipped and reported)."""

    def __init__(self, corruption: Corruption) -> None:
        super().__init__(f"corrupt spool record in {corruption}")
        self.corruption = corruption


@dataclass(frozen=True, slots=True, order=True)
class SpoolPosition:
    """Names one spooled batch (for `ack`): the file's seq and the record's index in it."""

    seq: int
    index: int


# --- encoding ---------------------------------------------------------------


def _encode(candles: Sequence[Candle]) -> bytes:
    index: dict[SeriesKey, int] = {}
    pack, epoch, us = _ROW.pack, _EPOCH, _US
    # One comprehension: this loop is the whole cost of an append.
    rows = [
        pack(index.setdefault(c.series, len(index)), (c.ts - epoch) // us,
             c.open, c.high, c.low, c.close, c.volume)
        for c in candles
    ]  # fmt: skip
    table = b"".join(_encode_str(s) for k in index for s in (k.venue, k.symbol, k.timeframe))
    return b"".join([_BATCH.pack(VERSION, len(candles), len(index)), table, *rows])


def _encode_str(text: str) -> bytes:
    raw = text.encode()
    return _STR.pack(len(raw)) + raw


def _frame(payload: bytes) -> bytes:
    length = _LEN.pack(len(payload))
    return _FRAME.pack(MAGIC, len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def _layout(payload: memoryview) -> tuple[int, list[tuple[str, ...]], int]:
    """(candle count, series table, offset of the rows); ValueError if malformed."""
    if len(payload) < _BATCH.size:
        raise ValueError("short batch header")
    version, n, n_series = _BATCH.unpack_from(payload)
    if version != VERSION:
        raise ValueError(f"unknown batch version {version}")
    pos = _BATCH.size
    table = []
    for _ in range(n_series):
        parts = []
        for _ in range(3):
            text, pos = _decode_str(payload, pos)
            parts.append(text)
        table.append(tuple(parts))
    if len(payload) - pos != n * _ROW.size:
        raise ValueError("row section does not match the candle count")
    return n, table, pos


def _decode_str(payload: memoryview, pos: int) -> tuple[str, int]:
    if pos + _STR.size > len(payload):
        raise ValueError("series table truncated")
    (size,) = _STR.unpack_from(payload, pos)
    pos += _STR.size
    if pos + size > len(payload):
        raise ValueError("series table truncated")
    if size > MAX_NAME_BYTES:
        raise ValueError(f"series name of {size} bytes")
    text = str(payload[pos : pos + size], "utf-8")  # UnicodeDecodeError is a ValueError
    if "\0" in text:
        raise ValueError("NUL in a series name")  # PostgreSQL text cannot hold one
    return text, pos + size


def _decode(payload: memoryview) -> list[Candle]:
    """The batch's candles; ValueError (only) if it does not decode."""
    _, table, pos = _layout(payload)
    keys = [SeriesKey(*t) for t in table]  # ValueError: unknown timeframe
    epoch = _EPOCH
    # Caught around the whole comprehension rather than checked per row: this
    # loop is the whole cost of a replay.
    try:
        return [
            Candle(keys[s], epoch + timedelta(microseconds=ts), o, h, lo, c, v)
            for s, ts, o, h, lo, c, v in _ROW.iter_unpack(payload[pos:])
        ]
    except IndexError:
        raise ValueError("a row names a series the table does not have") from None
    except OverflowError:
        raise ValueError("a row's ts is outside the datetime range") from None


# --- scanning ---------------------------------------------------------------


class _Record(NamedTuple):
    start: int
    end: int
    candles: int


class _Damage(NamedTuple):
    start: int
    end: int
    reason: str


def _check(data: bytes, pos: int) -> _Record | str:
    """The valid record at `pos`, or why there is none."""
    if len(data) - pos < _FRAME.size:
        return "short record header"
    magic, length, crc = _FRAME.unpack_from(data, pos)
    if magic != MAGIC:
        return "bad magic"
    end = pos + _FRAME.size + length
    if end > len(data):
        return "record runs past the end of the file"
    payload = memoryview(data)[pos + _FRAME.size : end]
    if zlib.crc32(payload, zlib.crc32(_LEN.pack(length))) != crc:
        return "crc mismatch"
    try:
        n, _, _ = _layout(payload)
    except ValueError as e:
        return f"malformed batch: {e}"
    return _Record(pos, end, n)


def _resync(data: bytes, pos: int) -> _Record | None:
    """The next valid record after `pos` (found by its magic), if any."""
    candidate = data.find(MAGIC, pos + 1)
    while candidate >= 0:
        found = _check(data, candidate)
        if isinstance(found, _Record):
            return found
        candidate = data.find(MAGIC, candidate + 1)
    return None


def _walk(data: bytes) -> Iterator[_Record | _Damage]:
    """Cover `data` with valid records and the damaged regions between them."""
    pos = 0
    while pos < len(data):
        found = _check(data, pos)
        if isinstance(found, _Record):
            yield found
            pos = found.end
            continue
        after = _resync(data, pos)
        end = len(data) if after is None else after.start
        yield _Damage(pos, end, found)
        pos = end


# --- file I/O ---------------------------------------------------------------


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _sync(fd: int) -> None:
    # fdatasync covers the data and the file size, which is all a reader needs.
    getattr(os, "fdatasync", os.fsync)(fd)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path, start: int, end: int) -> bytes:
    with path.open("rb") as f:
        f.seek(start)
        return f.read(end - start)


def _lock(directory: Path) -> int:
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"spool {directory} is in use by another process") from None
    return fd


@dataclass(eq=False)
class _File:
    """One spool file: where its valid records are, and how many are acked."""

    seq: int
    path: Path
    size: int = 0
    starts: array[int] = field(default_factory=lambda: array("q"))
    ends: array[int] = field(default_factory=lambda: array("q"))
    totals: array[int] = field(default_factory=lambda: array("q"))  # candles so far
    acked: int = 0  # records acked: always a prefix
    skipped: set[int] = field(default_factory=set)  # records found damaged on replay

    @property
    def records(self) -> int:
        return len(self.starts)

    def add(self, record: _Record) -> None:
        self.starts.append(record.start)
        self.ends.append(record.end)
        self.totals.append((self.totals[-1] if self.totals else 0) + record.candles)

    def ack(self, upto: int) -> None:
        # A record skipped as damaged will never be acked by the caller.
        self.acked = max(self.acked, upto)
        while self.acked in self.skipped:
            self.acked += 1

    @property
    def pending_candles(self) -> int:
        done = self.totals[self.acked - 1] if self.acked else 0
        return (self.totals[-1] if self.totals else 0) - done


@dataclass(eq=False)
class _Active:
    fd: int
    file: _File


class Spool:
    """Candle batches on disk, replayed in order, deleted once acked.

    A new `Spool` on an existing directory recovers what is there (truncating
    a torn tail) and appends to a new file after it.
    """

    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int = ROTATE_BYTES,
        max_bytes: int = MAX_BYTES,
        strict: bool = False,
    ) -> None:
        self.directory = directory
        self.rotate_bytes = rotate_bytes
        self.max_bytes = max_bytes
        self.strict = strict
        self.corruptions: list[Corruption] = []
        self._mutex = threading.Lock()
        self._files: dict[int, _File] = {}  # ascending seq
        self._active: _Active | None = None
        self._next_seq = 1
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock(directory)
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # --- recovery -----------------------------------------------------------

    def _recover(self) -> None:
        found = sorted(
            (int(m.group(1)), self.directory / m.group(0))
            for m in map(_NAME.match, os.listdir(self.directory))
            if m is not None
        )
        changed = False
        for i, (seq, path) in enumerate(found):
            spool_file = self._load(seq, path, newest=i == len(found) - 1)
            if spool_file.records:
                self._files[seq] = spool_file
            else:  # nothing left to replay in it
                path.unlink()
                changed = True
        if found:
            self._next_seq = found[-1][0] + 1
        if changed:
            _sync_dir(self.directory)

    def _load(self, seq: int, path: Path, *, newest: bool) -> _File:
        data = path.read_bytes()
        spool_file = _File(seq, path, size=len(data))
        for item in _walk(data):
            if isinstance(item, _Record):
                spool_file.add(item)
            elif newest and item.end == len(data):
                self._truncate_torn(path, item)
                spool_file.size = item.start
            else:
                self._damaged(Corruption(path, item.start, item.end - item.start, item.reason))
        return spool_file

    def _truncate_torn(self, path: Path, torn: _Damage) -> None:
        log.warning("spool: dropping the torn tail of an interrupted append", path=str(path),
                    offset=torn.start, bytes=torn.end - torn.start, reason=torn.reason)  # fmt: skip
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, torn.start)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _damaged(self, corruption: Corruption) -> None:
        if self.strict:
            raise SpoolCorrupt(corruption)
        if corruption not in self.corruptions:
            self.corruptions.append(corruption)
            log.error("spool: skipping a corrupt region; the heal cycle must refill it",
                      path=str(corruption.path), offset=corruption.offset,
                      bytes=corruption.length, reason=corruption.reason)  # fmt: skip

    # --- appending ----------------------------------------------------------

    def append(self, candles: Sequence[Candle]) -> int:
        """Write one batch durably (fdatasync'd before returning); returns bytes written.

        Raises `SpoolFull` (nothing written) past `max_bytes`, and OSError if
        the disk fails, after rolling the file back to its last whole record.
        """
        if not candles:
            return 0
        record = _frame(_encode(candles))
        with self._mutex:
            if self._lock_fd is None:
                raise SpoolError("spool is closed")
            if self._disk_bytes() + len(record) > self.max_bytes:
                raise SpoolFull(
                    f"spool {self.directory}: {len(record)} more bytes would pass "
                    f"max_bytes={self.max_bytes} ({self._disk_bytes()} used)"
                )
            active = self._writable(len(record))
            self._write(active, record, len(candles))
        return len(record)

    def _writable(self, size: int) -> _Active:
        active = self._active
        if active is not None and active.file.size and active.file.size + size > self.rotate_bytes:
            self._close_active()
            active = None
        return active if active is not None else self._create()

    def _create(self) -> _Active:
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / f"spool-{seq:010d}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # The name must be durable before a batch in it counts as spooled.
            _sync_dir(self.directory)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        spool_file = _File(seq, path)
        self._files[seq] = spool_file
        self._active = _Active(fd, spool_file)
        return self._active

    def _write(self, active: _Active, record: bytes, candles: int) -> None:
        spool_file = active.file
        start = spool_file.size
        try:
            _write_all(active.fd, record, start)
            _sync(active.fd)
        except OSError:
            self._abandon(active, start)
            raise
        spool_file.add(_Record(start, start + len(record), candles))
        spool_file.size = start + len(record)

    def _abandon(self, active: _Active, size: int) -> None:
        """After a failed write: cut the partial record off and stop using the file."""
        try:
            os.ftruncate(active.fd, size)
        except OSError:  # then the next open finds the partial record and reports it
            log.exception("spool: could not truncate after a failed write")
        self._close_active()
        if not active.file.records:
            self._forget(active.file)

    def _close_active(self) -> None:
        if self._active is not None:
            os.close(self._active.fd)
            self._active = None

    # --- replay and acks ----------------------------------------------------

    def replay(self) -> Iterator[tuple[SpoolPosition, list[Candle]]]:
        """Yield the unacked batches, oldest first, with their positions for `ack`.

        Batches appended during the iteration are yielded too; the iterator
        ends at the end of the spool. Calling `replay()` again starts over at
        the first unacked batch (e.g. after a failed database write).
        """
        after: SpoolPosition | None = None
        while True:
            with self._mutex:
                found = self._next_record(after)
                if found is None:
                    return
                after, spool_file, start, end = found
                data = _read(spool_file.path, start, end)  # under the lock: ack may delete
            batch = self._decode_read(after, spool_file, start, data)
            if batch is not None:
                yield after, batch

    def _next_record(
        self, after: SpoolPosition | None
    ) -> tuple[SpoolPosition, _File, int, int] | None:
        for spool_file in self._files.values():
            if after is not None and spool_file.seq < after.seq:
                continue
            i = spool_file.acked
            if after is not None and spool_file.seq == after.seq:
                i = max(i, after.index + 1)
            if i < spool_file.records:
                pos = SpoolPosition(spool_file.seq, i)
                return pos, spool_file, spool_file.starts[i], spool_file.ends[i]
        return None

    def _decode_read(
        self, pos: SpoolPosition, spool_file: _File, start: int, data: bytes
    ) -> list[Candle] | None:
        """Decode a record read back; damage found now (it was valid when
        written or recovered) is handled like corruption found at open."""
        found = _check(data, 0)
        reason = found if isinstance(found, str) else None
        if isinstance(found, _Record) and found.end != len(data):
            reason = "record shorter than when written"
        if reason is None:
            try:
                return _decode(memoryview(data)[_FRAME.size :])
            except ValueError as e:
                reason = f"undecodable batch: {e}"
        self._damaged(Corruption(spool_file.path, start, len(data), reason))
        with self._mutex:
            spool_file.skipped.add(pos.index)
            spool_file.ack(spool_file.acked)
            if spool_file.acked == spool_file.records:
                self._delete(spool_file)
                _sync_dir(self.directory)
        return None

    def ack(self, pos: SpoolPosition) -> None:
        """Confirm the batch at `pos` and all batches before it are in the database.

        Files whose batches are all confirmed are deleted (the newest too,
        the next append then starts a new file).
        """
        with self._mutex:
            target = self._files.get(pos.seq)
            if target is not None and pos.index >= target.records:
                raise ValueError(f"no batch at {pos}")
            deleted = False
            for spool_file in list(self._files.values()):
                if spool_file.seq > pos.seq:
                    break
                upto = pos.index + 1 if spool_file.seq == pos.seq else spool_file.records
                spool_file.ack(upto)
                if spool_file.acked >= spool_file.records:
                    self._delete(spool_file)
                    deleted = True
            if deleted:
                # Not needed for safety (a resurrected file only replays
                # again), but it spares a needless replay after a crash.
                _sync_dir(self.directory)

    def _delete(self, spool_file: _File) -> None:
        if self._active is not None and self._active.file is spool_file:
            self._close_active()
        spool_file.path.unlink(missing_ok=True)
        self._forget(spool_file)

    def _forget(self, spool_file: _File) -> None:
        self._files.pop(spool_file.seq, None)

    # --- state --------------------------------------------------------------

    def _disk_bytes(self) -> int:
        return sum(f.size for f in self._files.values())

    @property
    def pending_batches(self) -> int:
        """Batches spooled and not yet acked."""
        with self._mutex:
            return sum(f.records - f.acked for f in self._files.values())

    @property
    def pending_candles(self) -> int:
        """Candles spooled and not yet written to the database (shown in `/health`)."""
        with self._mutex:
            return sum(f.pending_candles for f in self._files.values())

    @property
    def files(self) -> int:
        """Spool files on disk; a file goes once all its batches are acked."""
        """Spool files on disk; acked files are deleted."""
        with self._mutex:
            return len(self._files)

    def close(self) -> None:
        """Close the file and release the directory lock (idempotent)."""
        with self._mutex:
            self._close_active()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Last in the class body: the name shadows the builtin for what follows.
    @property
    def bytes(self) -> int:
        """Bytes on disk (what `max_bytes` bounds; acked batches count until their file goes)."""
        with self._mutex:
            return self._disk_bytes()
