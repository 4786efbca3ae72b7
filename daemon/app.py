"""`candled run`: the daemon in the foreground."""

from __future__ import annotations

import asyncio
import signal
from collections import defaultdict

from daemon import logs, metrics
from daemon.config import Config, SeriesSpec
from daemon.store.provision import open_database
from daemon.store.series import sync_configured
from daemon.store.writer import CandleStore, CandleWriter, WriteResult
from daemon.venue_runtime import VenueRuntime

log = logs.get("candled")


async def _report(writer: CandleWriter, every_s: float = 10.0) -> None:
    """Log what reached the store, so an operator sees candles arriving."""
    seen = WriteResult()
    while True:
        await asyncio.sleep(every_s)
        metrics.writer_queue.set(writer.pending)
        t = writer.totals
        if t != seen:
            log.info("candles stored", inserted=t.inserted - seen.inserted,
                     updated=t.updated - seen.updated, total_inserted=t.inserted,
                     queued=writer.pending)  # fmt: skip
            seen = t


async def run_daemon(config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_database(config) as db:
        specs = config.series_specs()
        async with db.pool.acquire() as conn:
            await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs.items()})
        by_venue: dict[str, list[SeriesSpec]] = defaultdict(list)
        for spec in specs.values():
            by_venue[spec.key.venue].append(spec)
        writer = CandleWriter(CandleStore(db.pool))
        runtimes = [VenueRuntime(v, by_venue[v.name], db, writer) for v in config.venues]
        log.info("candled running", venues=len(runtimes), series=len(specs))
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(writer.run()), tg.create_task(_report(writer))]
            tasks += [tg.create_task(rt.run()) for rt in runtimes]
            await stop.wait()
            log.info("stopping: flushing buffered candles")
            for task in tasks:
                task.cancel()
        flushed = await writer.flush()
        log.info("stopped", flushed=flushed.total, total_inserted=writer.totals.inserted)
    return 0
