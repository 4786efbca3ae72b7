"""systemd's notify protocol without libsystemd: datagrams to $NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs
the same in a terminal.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Tells systemd the daemon's state (ready, reloading, stopping, alive) and a status line."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        addr = env.get("NOTIFY_SOCKET", "")
        # A leading "@" names a socket in the abstract namespace.
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._watchdog_s = _watchdog_interval(env)
        self.sent: list[str] = []  # what was sent, for /health and tests

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (NOTIFY_SOCKET set)."""
        return bool(self._addr)

    @property
    def watchdog_interval_s(self) -> float | None:
        """Half of WATCHDOG_USEC when systemd asked this process for pings."""
        return self._watchdog_s

    def send(self, *fields: str) -> bool:
        """Send one notification; False when there is no systemd to hear it."""
        if not self._addr:
            return False
        message = "\n".join(fields)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never wait on it: a reader that falls behind (its queue holds a
            # few datagrams) would otherwise stall the whole event loop.
            sock.setblocking(False)
            try:
                sock.connect(self._addr)
                sock.sendall(message.encode())
            except OSError:
                return False  # systemd went away; never crash the daemon for it
        self.sent.append(message)
        return True

    def ready(self, status: str) -> bool:
        """Startup or a reload is done: systemd may consider the service up."""
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        """A SIGHUP reload has begun; `ready` ends it."""
        # systemd >= 253 wants the monotonic time with RELOADING=1 (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown has begun, so systemd expects the exit."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """Update the one-line status `systemctl status` shows."""
        return self.send(f"STATUS={text}")

    async def watchdog(self) -> None:
        """Ping forever from the event loop itself: a blocked loop stops the pings."""
        if self._watchdog_s is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self._watchdog_s)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (we were forked or exec'd under it)
    return int(usec) / 2 / 1_000_000
