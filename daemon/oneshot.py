"""One-pass commands: `candled audit`, `repair`, `backfill`, `status`.

They work while a daemon runs: everything they share with it (series, gaps,
empty ranges, genesis, bans) is in the database, and writes are idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

from tqdm import tqdm

from candled import clock
from candled.app import series_by_venue
from candled.backfill import BackfillJob, JobReason
from candled.config import Config
from candled.coverage import render_html, render_svg
from candled.domain import SeriesKey
from candled.healer import AuditResult, Healer, Repairer, venue_settling
from candled.research import load_returns
from candled.returns import write_frame
from candled.store import coverage as store_coverage
from candled.store import leases
from candled.store.database import Database
from candled.store.healing import SeriesStatus, reset_genesis, series_row
from candled.store.provision import open_database
from candled.store.series import sync_configured
from candled.store.writer import CandleStore, CandleWriter
from candled.venue_runtime import VenueRuntime


def _selected(config: Config, series: Sequence[SeriesKey] | None) -> list[SeriesKey]:
    specs = config.series_specs()
    if not series:
        return sorted(specs)
    unknown = [str(k) for k in series if k not in specs]
    if unknown:
        raise SystemExit(f"candled: not in the config: {', '.join(unknown)}")
    return list(series)


@asynccontextmanager
async def _database(config: Config) -> AsyncIterator[Database]:
    async with open_database(config.database.dsn, config.daemon.state_dir) as db:
        async with db.pool.acquire() as conn:
            specs = config.series_specs()
            await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs.items()})
        yield db


@asynccontextmanager
async def _venues(config: Config, db: Database) -> AsyncIterator[dict[str, VenueRuntime]]:
    """The HTTP side of every venue (throttle, fetcher, backfill), with a
    running writer; no streams."""
    writer = CandleWriter(CandleStore(db.pool))
    grouped = series_by_venue(config)
    runtimes = {v.name: VenueRuntime(v, grouped[v.name], db, writer) for v in config.venues}
    async with asyncio.TaskGroup() as tg, contextlib.AsyncExitStack() as sessions:
        writer_task = tg.create_task(writer.run())
        for rt in runtimes.values():
            await rt.restore_ban()
            await sessions.enter_async_context(rt.fetcher)
        try:
            yield runtimes
            await writer.drain()
        finally:
            writer_task.cancel()
    await writer.flush()


def _fmt(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M") if ts else "-"


def print_audit(results: Sequence[AuditResult], as_json: bool) -> None:
    """Print audit results as a table for people, or as JSON for scripts."""
    if as_json:
        print(json.dumps([
            {"series": str(a.key), "status": a.status, "missing_bars": a.missing_bars,
             "confirmed_empty_bars": a.confirmed_empty_bars, "expected_bars": a.expected_bars,
             "genesis": a.genesis.isoformat() if a.genesis else None,
             "first_ts": a.first_ts.isoformat() if a.first_ts else None,
             "last_ts": a.last_ts.isoformat() if a.last_ts else None,
             "gaps": [[s.isoformat(), e.isoformat()] for s, e in a.gaps[:100]]}
            for a in results
        ], indent=2))  # fmt: skip
        return
    header = ("series", "status", "missing", "confirmed-empty", "genesis", "last bar")
    rows = [(str(a.key), a.status, str(a.missing_bars), str(a.confirmed_empty_bars),
             _fmt(a.genesis), _fmt(a.last_ts)) for a in results]  # fmt: skip
    _print_table(header, rows)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


async def status(config: Config, *, as_json: bool) -> int:
    """`candled status`: the cluster's members and each configured series'
    owner, from the database. Exit 1 when clustering is on and a configured
    series has no live owner (normal for a moment after a start or a death)."""
    async with (
        open_database(config.database.dsn, config.daemon.state_dir) as db,
        db.pool.acquire() as conn,
    ):
        members = await leases.members(conn)
        held = {lease.series: lease for lease in await leases.leases(conn)}
        now = await conn.fetchval("SELECT now()")
    configured = [str(k) for k in sorted(config.series_specs())]
    owners = {s: held[s].holder if s in held and held[s].live else None for s in configured}
    if as_json:
        print(json.dumps({
            "clustering": config.cluster.enabled,
            "members": [{"instance": m.instance, "host": m.host, "pid": m.pid,
                         "health": m.health, "version": m.version, "live": m.live,
                         "started_at": m.started_at.isoformat(),
                         "expires_at": m.expires_at.isoformat()} for m in members],
            "series": [{"series": s, "owner": owners[s],
                        "epoch": held[s].epoch if s in held else None} for s in configured],
        }, indent=2))  # fmt: skip
    else:
        if not config.cluster.enabled:
            print("clustering is off ([cluster] enabled = false): one instance runs every series")
        live = sum(m.live for m in members)
        print(f"members: {live} live, {len(members) - live} dead")
        _print_table(
            ("instance", "host", "pid", "health", "version", "renews in"),
            [(m.instance, m.host, str(m.pid), m.health, m.version,
              f"{(m.expires_at - now).total_seconds():.0f} s" if m.live else "dead")
             for m in members],
        )  # fmt: skip
        print()
        _print_table(
            ("series", "owner", "lease ends in", "epoch"),
            [(s, owners[s] or "(none)",
              f"{(held[s].expires_at - now).total_seconds():.0f} s" if owners[s] else "-",
              str(held[s].epoch) if s in held else "-") for s in configured],
        )  # fmt: skip
    orphans = [s for s in configured if owners[s] is None]
    return 1 if config.cluster.enabled and orphans else 0


async def audit(
    config: Config, series: Sequence[SeriesKey] | None, *, as_json: bool, full: bool
) -> int:
    """`candled audit`: print each series' status; exit 1 unless every one is OK."""
    async with _database(config) as db:
        results = await Healer.for_config(db.pool, config).audit(
            _selected(config, series), full=full
        )
    print_audit(results, as_json)
    return 0 if all(a.status == SeriesStatus.OK for a in results) else 1


async def repair(
    config: Config, series: Sequence[SeriesKey] | None, *, max_fills: int | None,
    reset: bool, full: bool = True,
) -> int:  # fmt: skip
    """`candled repair`: audit, fill the holes newest first, audit again at the same instant."""
    keys = _selected(config, series)
    async with _database(config) as db:
        if reset:
            async with db.pool.acquire() as conn:
                for key in keys:
                    row = await series_row(conn, key.venue, key.symbol, key.timeframe)
                    if row is not None:
                        await reset_genesis(conn, row.id)
            print(f"genesis cleared for {len(keys)} series")
        healer = Healer.for_config(db.pool, config)
        # Both audits judge the same instant: a bar that comes due during the
        # repair is the next run's business, not a hole this run left.
        at = clock.now()
        audits = await healer.audit(keys, full=full, at=at)
        async with _venues(config, db) as runtimes:
            repairers = {n: Repairer(rt.codec.limits, rt.backfiller.run_job)
                         for n, rt in runtimes.items()}  # fmt: skip
            fills = max_fills or config.healing.max_fills
            holes = [a for a in audits if a.gaps]
            with tqdm(total=sum(min(fills, len(a.gaps)) for a in holes), unit="req",
                      desc="repair", disable=None) as bar:  # fmt: skip
                report = await healer.repair(
                    repairers, holes, max_fills=fills, on_request=lambda: bar.update(1)
                )
        results = await healer.audit(keys, full=full, at=at)
    print(f"repair: {report.requests} requests, {report.candles} candles, "
          f"{report.empty} empty answers ({report.confirmed_empty} confirmed empty), "
          f"{report.errors} errors")  # fmt: skip
    print_audit(results, as_json=False)
    return 0 if all(a.status == SeriesStatus.OK for a in results) else 1


async def backfill(config: Config, series: Sequence[SeriesKey], since: timedelta | None) -> int:
    """`candled backfill`: fetch the series' history now; exit 1 if any job failed."""
    keys = _selected(config, series)
    specs = config.series_specs()
    now = clock.now()
    async with _database(config) as db, _venues(config, db) as runtimes:
        pieces = 0
        for key in keys:
            bf = runtimes[key.venue].backfiller
            before = bf.queued
            start = now - (since or specs[key].lookback)
            bf.submit(BackfillJob(key, start, now, JobReason.BACKFILL))
            pieces += bf.queued - before
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(rt.backfiller.run()) for rt in runtimes.values()]
            with tqdm(total=pieces, unit="job", desc="backfill", disable=None) as bar:
                while (
                    done := sum(len(rt.backfiller.results) for rt in runtimes.values())
                ) < pieces:
                    bar.update(done - bar.n)
                    await asyncio.sleep(0.2)
                bar.update(done - bar.n)
            for w in workers:
                w.cancel()
        results = [r for rt in runtimes.values() for r in rt.backfiller.results]
    failed = [r for r in results if not r.complete]
    print(f"backfill: {sum(r.candles for r in results)} candles in "
          f"{sum(r.requests for r in results)} requests; {len(failed)} jobs failed")  # fmt: skip
    for r in failed[:10]:
        print(f"  {r.job.series} [{r.job.start:%Y-%m-%d %H:%M}, {r.job.end:%H:%M}): {r.error}")
    return 1 if failed else 0


async def export_returns(
    config: Config, series: Sequence[SeriesKey], since: timedelta, out: Path
) -> int:
    """`candled export-returns`: write the series' aligned returns matrix to `out`."""
    overrides = config.healing.overrides()
    now = clock.now()
    async with _database(config) as db:
        frame = await load_returns(db.pool, series, now - since, now, overrides=overrides)
    write_frame(frame, out)
    print(f"{out}: {len(frame)} bars x {len(frame.columns)} series")
    return 0


async def coverage(
    config: Config, series: Sequence[SeriesKey] | None, since: timedelta | None, out: Path
) -> int:
    """Write the coverage picture (`/coverage`'s) to `out`: HTML, or SVG for a `.svg` name."""
    if out.suffix.lower() not in (".html", ".htm", ".svg"):
        raise SystemExit(f"candled: {out}: the picture is written as .html or .svg")
    specs = config.series_specs()
    chosen = [specs[k] for k in _selected(config, series)]
    now = clock.now()
    async with _database(config) as db:
        cov = await store_coverage.gather(
            db.pool, chosen, now, since=now - since if since else None,
            settling=venue_settling(config), overrides=config.healing.overrides(),
        )  # fmt: skip
    picture = render_svg(cov) if out.suffix.lower() == ".svg" else render_html(cov)
    await asyncio.to_thread(out.write_text, picture)
    t = cov.totals
    print(f"{out}: {len(cov.rows)} series; {t.missing} of {t.expected} expected bars missing")
    return 1 if t.missing else 0
