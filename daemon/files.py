"""Reading the small local files a config names (keys, calendar overrides,
the config itself) without trusting them to be small or regular."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_bounded(path: str | Path, limit: int, hint: str = "") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; `ValueError`
    (for the caller's message, which names the key; `hint` ends the "too
    large" one) otherwise.

    Checked before reading: a FIFO would block the open and a device such as
    /dev/zero never ends. O_NONBLOCK keeps a FIFO swapped in after the check
    from blocking the open; fstat then refuses it.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = f.read(limit + 1)  # one byte more tells "too large"
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
        raise ValueError(f"{path} is larger than {size}{hint}")
    return data
