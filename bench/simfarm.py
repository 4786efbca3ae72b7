"""The simulated exchange in several processes behind one port.

A venue serves thousands of streams from many machines; one simulator
process computes and compresses every frame of every connection in turn, so
the last closing frame of a tick leaves after all the others. `SimFarm` runs
`workers` simulator processes (`python -m bench.simfarm worker`) serving one
truth (the same scenario, parsed at the same instant, so the same listings),
and accepts connections itself on one port, handing each to the next worker
in turn (the accepted socket is passed over a Unix socket, `SCM_RIGHTS`): a
client's connections are spread evenly, whatever the kernel's hashing.

The interface is `SimProcess`'s (`bench.backfill`): `ws_url`, `rest_url`,
`counters()` (summed over the workers: numbers added, per-key counts merged,
CPU seconds added).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import resource
import socket
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

_PIPE_LIMIT = 1 << 24  # a scenario with thousands of symbols is one long line


class SimFarm:
    """`workers` simulator processes behind one listening socket on 127.0.0.1."""

    def __init__(self, scenario: dict[str, Any], workers: int = 2) -> None:
        self._scenario = scenario
        self._n = workers
        self._procs: list[asyncio.subprocess.Process] = []
        self._links: list[socket.socket] = []  # our ends of the workers' Unix sockets
        self._listener: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self._stop()

    async def _start(self) -> None:
        now = datetime.now(UTC).isoformat()  # one instant for every worker's listings
        line = json.dumps({"scenario": self._scenario, "now": now}).encode() + b"\n"
        for _ in range(self._n):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.simfarm", "worker", str(theirs.fileno()),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),), limit=_PIPE_LIMIT,
            )  # fmt: skip
            theirs.close()
            self._procs.append(proc)
            self._links.append(ours)
            assert proc.stdin is not None
            proc.stdin.write(line)
            await proc.stdin.drain()
        for proc in self._procs:  # each is ready once it says so
            await self._read(proc)
        listener = self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._acceptor = asyncio.create_task(self._accept(listener))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        turn = 0
        while True:
            conn, _ = await loop.sock_accept(listener)
            with conn:
                link = self._links[turn % len(self._links)]
                turn += 1
                socket.send_fds(link, [b"c"], [conn.fileno()])

    async def counters(self) -> dict[str, Any]:
        """The workers' counters, summed."""
        total: dict[str, Any] = {}
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write(b"counters\n")
            await proc.stdin.drain()
            for key, value in (await self._read(proc)).items():
                if isinstance(value, dict):
                    merged = total.setdefault(key, {})
                    for k, v in value.items():
                        merged[k] = merged.get(k, 0) + v
                else:
                    total[key] = total.get(key, 0) + value
        return total

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            answer = await proc.stdout.readline()
        if not answer:
            raise RuntimeError("a simulator worker exited")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def _stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._acceptor
        if self._listener is not None:
            self._listener.close()
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for link in self._links:
            link.close()
        self._procs, self._links = [], []


async def _worker(fd: int) -> None:
    """One worker: serves the connections handed to it over the Unix socket `fd`."""
    from candled import logs
    from candled_sim.scenario import parse_scenario
    from candled_sim.server import SimExchange

    logs.configure("warning", "console")  # to stderr: stdout carries the protocol
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    setup = json.loads(await reader.readline())
    sim = SimExchange(parse_scenario(setup["scenario"], datetime.fromisoformat(setup["now"])))
    await sim.start("127.0.0.1", 0)  # its own port stays unused: connections come over `fd`
    runner = sim._runner  # the aiohttp server that serves handed sockets
    assert runner is not None and runner.server is not None
    server = runner.server
    link = socket.socket(fileno=fd)
    link.setblocking(False)
    opening: set[asyncio.Task[Any]] = set()  # connections being set up (referenced)

    def handed() -> None:
        try:
            _, fds, _, _ = socket.recv_fds(link, 1, 4)
        except BlockingIOError:
            return
        for handed_fd in fds:
            conn = socket.socket(fileno=handed_fd)
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(server, conn))
            opening.add(task)
            task.add_done_callback(opening.discard)

    loop.add_reader(link.fileno(), handed)
    print(json.dumps({"ready": True}), flush=True)
    try:
        while line := await reader.readline():
            if line.strip() == b"counters":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs.
                fields = dataclasses.fields(sim.counters)
                counters = {f.name: getattr(sim.counters, f.name) for f in fields}
                counters["cpu_s"] = usage.ru_utime + usage.ru_stime
                print(json.dumps(counters), flush=True)
    finally:
        loop.remove_reader(link.fileno())
        await sim.stop()


if __name__ == "__main__":
    import uvloop

    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        sys.exit("usage: python -m bench.simfarm worker FD  (the child side of SimFarm)")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_worker(int(sys.argv[2])))
