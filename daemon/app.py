"""`candled run`: the daemon in the foreground.

The `Daemon` owns the database, the writer, one runtime per venue and the
health server, all under a `Supervisor`. Signals: SIGTERM/SIGINT stop intake,
flush buffered candles and exit 0 within `shutdown_timeout` (a second signal
exits at once); SIGHUP reloads the config and applies only the difference.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import time
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

from candled import __version__, clock, logs, metrics
from candled.config import Config, ConfigError, SeriesSpec, load_config
from candled.coverage import render_html
from candled.domain import SeriesKey
from candled.healer import Healer, Repairer, venue_settling
from candled.health import (
    RELOAD_OK,
    ClusterHealth,
    HealthFacts,
    HealthServer,
    SeriesHealth,
    VenueHealth,
    lag_seconds,
)
from candled.ownership import LeaseKeeper, View
from candled.sdnotify import Notifier
from candled.store import coverage as store_coverage
from candled.store.database import UNAVAILABLE, Database
from candled.store.healing import SeriesStatus, audited_statuses
from candled.store.leases import Identity
from candled.store.provision import StoppedWaiting, open_database
from candled.store.series import stored_bounds, sync_configured
from candled.store.spool import Spool
from candled.store.writer import CandleStore, CandleWriter, WriteResult
from candled.supervisor import ComponentState, Supervisor
from candled.venue_runtime import VenueRuntime

log = logs.get("candled")
# A reload waits this long for the database to record the new series.
_RELOAD_DB_TIMEOUT_S = 10.0


def series_by_venue(
    config: Config, owned: frozenset[SeriesKey] | None = None
) -> dict[str, list[SeriesSpec]]:
    """The configured series grouped by venue: each venue runtime gets its
    own; with `owned` (clustering), only those."""
    grouped: dict[str, list[SeriesSpec]] = defaultdict(list)
    for spec in config.series_specs().values():
        if owned is None or spec.key in owned:
            grouped[spec.key.venue].append(spec)
    return grouped


class Daemon:
    """The long-running process: everything `candled run` starts, reloads and stops."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.started = time.monotonic()
        self.loaded_at = clock.now()
        self.last_reload = RELOAD_OK
        metrics.config_last_reload_success.set(1)
        self._exported: set[SeriesKey] = set()  # series whose gauges /metrics shows
        self.runtimes: dict[str, VenueRuntime] = {}
        self._wakeup = asyncio.Event()  # a signal arrived
        self._stopping = asyncio.Event()  # a stop signal arrived
        self._reload_requested = False
        self._signals = 0
        self._db: Database | None = None
        self._writer: CandleWriter | None = None
        self._supervisor: Supervisor | None = None
        self._healer_obj: Healer | None = None
        self._spool: Spool | None = None
        # [cluster]: the lease keeper, and the series this instance owns
        # (None: clustering is off and every configured series is ours).
        self._keeper: LeaseKeeper | None = None
        self.owned: frozenset[SeriesKey] | None = None
        self._ownership = asyncio.Lock()  # reloads and lease changes re-plan the venues in turn
        self.health = HealthServer(self._health_facts, self._coverage_page)

    # --- signals ---------------------------------------------------------------

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop signal: exiting at once")
            os._exit(1)
        self._stopping.set()
        self._wakeup.set()

    def _on_hup(self) -> None:
        self._reload_requested = True
        self._wakeup.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)

    # --- lifecycle -------------------------------------------------------------

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT, flush, and return the exit status 0 (failures raise)."""
        self._install_signals()
        if clock.OFFSET_S:
            log.warning("clock offset in force: a test hook, never for production",
                        offset_s=clock.OFFSET_S, now=clock.now().isoformat())  # fmt: skip
        try:
            return await self._run()
        except StoppedWaiting:
            log.info("stopped while waiting for the database")
            return 0

    def _waiting_for_database(self, wait_s: float) -> None:
        # Under systemd: still starting, not hung (start timeout and watchdog).
        extend_us = int((wait_s + 30) * 1_000_000)
        self.notifier.send("STATUS=waiting for the database", f"EXTEND_TIMEOUT_USEC={extend_us}",
                           "WATCHDOG=1")  # fmt: skip

    async def _run(self) -> int:
        # Started during an outage (a restart, a crash loop), wait for the
        # database rather than exit: the spool is replayed once it is back.
        async with open_database(
            self.config.database.dsn,
            self.config.daemon.state_dir,
            wait_unless=self._stopping,
            on_wait=self._waiting_for_database,
        ) as db:
            self._db = db
            metrics.database_up.set(1)  # the gauge refresh keeps it true from here
            await self._sync_series()
            spool = self._spool = Spool(self.config.daemon.state_dir / "spool")
            writer = self._writer = CandleWriter(CandleStore(db.pool), spool=spool)
            if spool.pending_candles:
                log.warning("replaying candles spooled during an earlier outage",
                            candles=spool.pending_candles)  # fmt: skip
            if self.config.cluster.enabled:
                await self._join_cluster(db)
            try:
                async with asyncio.TaskGroup() as tg:
                    sup = self._supervisor = Supervisor(tg)
                    try:
                        await self.health.start(*self.config.daemon.health_addr)
                        if self.config.daemon.health_is_public:  # health_public = true
                            log.warning("serving /health and /metrics beyond loopback",
                                        health_listen=self.config.daemon.health_listen)  # fmt: skip
                        sup.start("writer", writer.run)
                        sup.start("reporter", self._report)
                        sup.start("watchdog", self.notifier.watchdog)
                        sup.start("healer", self._heal_loop)
                        if self._keeper is not None:
                            sup.start("leases", self._keeper.run)
                        for venue in self.config.venues:
                            self._start_venue(venue.name)
                        # What start-up allocated (modules, config, codecs)
                        # lives as long as the process: out of the collector's
                        # way, full collections no longer walk it (up to
                        # 350 ms pauses a few times a minute with 2,000 1s
                        # streams, bench live).
                        gc.freeze()
                        self.notifier.ready(self._status_line())
                        log.info("candled running", venues=len(self.runtimes),
                                 series=len(self.config.series_specs()),
                                 health=self.health.address)  # fmt: skip
                        await self._serve()
                    finally:
                        # Every way out writes or spools what the writer holds:
                        # a stop signal, an error raised here, or a child whose
                        # crash escaped the supervisor (the group cancels us).
                        await self._shutdown(sup, writer)
            finally:
                await self.health.stop()
                spool.close()
        return 0

    async def _serve(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._stopping.is_set():
                return
            if self._reload_requested:
                self._reload_requested = False
                # A stop signal ends a reload still waiting (on a hung
                # database, say): the shutdown bound holds during a reload too.
                async with asyncio.TaskGroup() as tg:
                    reload = tg.create_task(self.reload())
                    stop = tg.create_task(self._stopping.wait())
                    await asyncio.wait([reload, stop], return_when=asyncio.FIRST_COMPLETED)
                    reload.cancel()
                    stop.cancel()

    async def _shutdown(self, sup: Supervisor, writer: CandleWriter) -> None:
        self.notifier.stopping()
        bound = self.config.daemon.shutdown_timeout.total_seconds()
        log.info("stopping: closing connections and flushing buffered candles", within_s=bound)
        # Writing stops a little before the bound: what is still buffered then
        # goes to the spool, which takes well under a second (one fsync).
        deadline = asyncio.get_running_loop().time() + bound - min(1.0, bound / 4)
        if self._keeper is not None:
            await sup.stop("leases")  # nothing takes or drops series while we stop
        try:
            async with asyncio.timeout_at(deadline):
                for name in [n for n in sup.components if n.startswith("venue:")]:
                    await sup.stop(name)  # intake first, so the flush sees everything
        except TimeoutError:
            log.error("intake did not stop within the shutdown bound")
        await sup.stop("writer")
        flushed = await writer.close(deadline)
        if self._keeper is not None:
            # After the flush: whoever takes a series over catches up from
            # everything this instance collected.
            await self._keeper.leave()
        log.info("stopped", flushed=flushed.total, total_inserted=writer.totals.inserted)
        await sup.stop_all()

    def _start_venue(self, name: str) -> None:
        assert self._db is not None and self._writer is not None and self._supervisor is not None
        specs = series_by_venue(self.config, self.owned)[name]
        runtime = VenueRuntime(self.config.venue(name), specs, self._db, self._writer)
        if self._keeper is not None:
            runtime.set_share(max(1, len(self._keeper.view.members)))
        self.runtimes[name] = runtime
        self._supervisor.start(f"venue:{name}", runtime.run)

    async def _stop_venue(self, name: str) -> None:
        assert self._supervisor is not None
        await self._supervisor.stop(f"venue:{name}")
        self.runtimes.pop(name, None)

    # --- cluster -----------------------------------------------------------------

    async def _join_cluster(self, db: Database) -> None:
        """Become a member and take the series that are ours and free now;
        the keeper takes the rest as the others hand them over."""
        cluster = self.config.cluster
        host, port = self.config.daemon.health_addr
        identity = Identity(
            cluster.instance_id(self.config.daemon.state_dir), socket.gethostname(),
            os.getpid(), f"{host}:{port}", __version__,
        )  # fmt: skip
        keeper = self._keeper = LeaseKeeper(
            db.pool, identity, cluster.lease_ttl, lambda: self.config.series_specs().keys(),
            self._apply_view, dsn=db.dsn,
        )  # fmt: skip
        self.owned = frozenset()
        try:
            async with asyncio.timeout(keeper.interval_s):
                view = await keeper.renew()
        except UNAVAILABLE as e:  # a timeout among them
            log.warning("could not join the cluster yet; owning no series until it answers",
                        error=repr(e))  # fmt: skip
            return
        self.owned = view.owned
        metrics.cluster_members.set(len(view.members))
        log.info("joined the cluster", instance=identity.instance, members=len(view.members),
                 owned=len(view.owned))  # fmt: skip

    async def _apply_view(self, view: View) -> None:
        """Follow the lease keeper: run exactly the series this instance owns,
        take its part of shared budgets, and honour every recorded ban."""
        metrics.cluster_members.set(len(view.members))
        async with self._ownership:
            for name, rt in self.runtimes.items():
                rt.set_share(max(1, len(view.members)))
                if name in view.bans:
                    rt.honour_ban(view.bans[name])
            if view.owned == self.owned:
                return
            self.owned = view.owned
            grouped = series_by_venue(self.config, self.owned)
            for name, rt in self.runtimes.items():
                await rt.set_series(grouped.get(name, []))

    def _owned_keys(self) -> list[SeriesKey] | None:
        """The series this instance heals: None (all) unless clustering is on."""
        if self.owned is None:
            return None
        specs = self.config.series_specs()
        return sorted(k for k in self.owned if k in specs)

    async def _sync_series(self) -> None:
        assert self._db is not None
        specs = self.config.series_specs()
        async with self._db.pool.acquire() as conn:
            await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs.items()})

    # --- self-healing ----------------------------------------------------------

    def _healer(self) -> Healer:
        """The healer, brought up to date with the (possibly reloaded) config."""
        assert self._db is not None
        if self._healer_obj is None:
            self._healer_obj = Healer.for_config(self._db.pool, self.config)
        else:
            self._healer_obj.configure(self.config)
        return self._healer_obj

    async def _heal_loop(self) -> None:
        """First the orchestrated backfill, then every interval: audit, repair,
        statuses. The config is read at each cycle, so a reload takes effect."""
        assert self._writer is not None
        for rt in list(self.runtimes.values()):
            await rt.backfill_queued.wait()
            await rt.backfiller.join()
        await self._writer.drain()
        log.info("orchestrated backfill done; self-healing starts")
        while True:
            try:
                await self.heal_cycle()
            except Exception:
                metrics.heal_cycle_failures.inc()
                raise  # the supervisor restarts the loop (and says so)
            await asyncio.sleep(self.config.healing.interval.total_seconds())

    async def heal_cycle(self) -> None:
        """One self-healing pass: audit every series, repair newest holes first, audit again."""
        assert self._writer is not None
        started = time.monotonic()
        healer = self._healer()
        at = clock.now()  # both audits judge the same instant
        audits = await healer.audit(self._owned_keys(), at=at)
        repairers = {
            name: Repairer(rt.codec.limits, rt.backfiller.run_job)
            for name, rt in self.runtimes.items()
        }
        report = await healer.repair(repairers, audits, max_fills=self.config.healing.max_fills)
        # Re-audit whatever the repair learnt something about: bars it fetched,
        # or ranges it confirmed empty (past a venue's horizon, without a request).
        if report.requests or report.empty:
            await self._writer.drain()  # repaired bars must be stored before the re-audit
            again = [a.key for a in audits if a.gaps]
            repaired = {a.key: a for a in await healer.audit(again, at=at)}
            audits = [repaired.get(a.key, a) for a in audits]
        seconds = time.monotonic() - started
        metrics.heal_cycle_seconds.observe(seconds)
        by_status: dict[SeriesStatus, int] = defaultdict(int)
        for a in audits:
            by_status[a.status] += 1
        log.info("heal cycle done", seconds=round(seconds, 2), statuses=dict(by_status),
                 missing_bars=sum(a.missing_bars for a in audits), requests=report.requests,
                 candles=report.candles, confirmed_empty=report.confirmed_empty,
                 errors=report.errors)  # fmt: skip

    # --- reload ----------------------------------------------------------------

    async def reload(self) -> None:
        """Re-read the config and apply only the difference. Never raises and
        never ends the daemon: what went wrong is in the log and in /health
        (`config.last_reload`).

        A config that cannot be loaded, or a database that cannot record its
        series, leaves everything as it was (the running config is kept).
        Once the series are recorded the new config is the running one; a
        venue whose in-place update fails is restarted from it, and a health
        address that cannot be bound stays the old one (and is the running
        config's), so every part runs what `self.config` says."""
        self.notifier.reloading()
        try:
            self.last_reload = await self._reload()
        except Exception as e:  # a bug: report it, keep serving
            self.last_reload = f"reload failed: {e!r}"
            log.error("config reload failed", error=repr(e), exc_info=True)
        finally:
            metrics.config_last_reload_success.set(self.last_reload == RELOAD_OK)
            self.notifier.ready(self._status_line())

    async def _reload(self) -> str:
        """`reload`'s work; returns its outcome for /health (RELOAD_OK when all applied)."""
        assert self._db is not None
        try:
            new = load_config(self.config.source)
        except ConfigError as e:
            log.error("config reload failed; keeping the running config", error=str(e))
            return str(e)
        except Exception as e:  # unreadable in a way load_config did not foresee
            log.error("config reload failed; keeping the running config", error=repr(e))
            return f"cannot load {self.config.source}: {e!r}"
        specs = new.series_specs()
        try:
            async with asyncio.timeout(_RELOAD_DB_TIMEOUT_S), self._db.pool.acquire() as conn:
                await sync_configured(conn, {k: (s.profile, s.calendar) for k, s in specs.items()})
        except UNAVAILABLE as e:
            # sync_configured is one transaction: the store is as it was too.
            log.error("config reload failed: the database did not record the series; keeping"
                      " the running config", error=repr(e))  # fmt: skip
            return f"database did not record the series ({e!r}); running config kept"
        diff = self.config.diff(new)
        old, self.config = self.config, new
        self.loaded_at = clock.now()
        problems: list[str] = []
        if diff.database_changed:
            log.warning("[database] changes take effect at the next restart")
        if (
            old.daemon.log_level != new.daemon.log_level
            or old.daemon.log_format != new.daemon.log_format
        ):
            logs.configure(new.daemon.log_level, new.daemon.log_format)
        async with self._ownership:
            problems += await self._apply_venues(old, new)
        if self._keeper is not None:
            self._keeper.poke()  # leases for added series, none for removed ones
        if diff.cluster_changed:
            log.warning("[cluster] changes take effect at the next restart")
        if old.daemon.health_listen != new.daemon.health_listen:
            problems += await self._rebind_health(old)
        log.info("config reloaded", venues_added=diff.venues_added,
                 venues_removed=diff.venues_removed, venues_changed=diff.venues_changed,
                 series_added=[str(k) for k in diff.series_added],
                 series_removed=[str(k) for k in diff.series_removed],
                 problems=problems)  # fmt: skip
        return RELOAD_OK if not problems else "applied, but " + "; ".join(problems)

    async def _apply_venues(self, old: Config, new: Config) -> list[str]:
        """Bring the venue runtimes to `new` (already the running config); a
        venue whose update fails is restarted from it."""
        diff = old.diff(new)
        grouped = series_by_venue(new, self.owned)
        problems = []
        for name in diff.venues_removed:
            await self._stop_venue(name)
        for name in [n for n in self.runtimes if n not in diff.venues_added]:
            before, after = old.venue(name), new.venue(name)
            try:
                if name not in diff.venues_changed:
                    await self.runtimes[name].set_series(grouped[name])
                elif (before.kind, before.rest_url, before.ws_url) != (
                    after.kind, after.rest_url, after.ws_url,
                ):  # fmt: skip
                    await self._stop_venue(name)
                    self._start_venue(name)
                else:
                    self.runtimes[name].configure(after)
                    await self.runtimes[name].set_series(grouped[name])
            except Exception as e:
                log.error("venue update failed on reload; restarting it on the new config",
                          venue=name, error=repr(e))  # fmt: skip
                problems.append(f"venue {name} restarted after its update failed: {e!r}")
                await self._stop_venue(name)
                self._start_venue(name)
        for name in diff.venues_added:
            self._start_venue(name)
        return problems

    async def _rebind_health(self, old: Config) -> list[str]:
        """Serve /health on the new address; where it cannot be bound, on the
        old one again, which the running config then keeps."""
        await self.health.stop()
        try:
            await self.health.start(*self.config.daemon.health_addr)
            if self.config.daemon.health_is_public:  # health_public = true
                log.warning("serving /health and /metrics beyond loopback",
                            health_listen=self.config.daemon.health_listen)  # fmt: skip
            return []
        except OSError as e:
            await self.health.start(*old.daemon.health_addr)
            kept, wanted = old.daemon.health_listen, self.config.daemon.health_listen
            self.config = replace(
                self.config, daemon=replace(self.config.daemon, health_listen=kept)
            )
            log.error("cannot serve /health on the new address; still on the old one",
                      health_listen=wanted, error=repr(e))  # fmt: skip
            return [f"daemon.health_listen: cannot listen on {wanted} ({e!r}); still on {kept}"]

    # --- reporting -------------------------------------------------------------

    def _status_line(self) -> str:
        totals = self._writer.totals if self._writer else WriteResult()
        return (f"{len(self.runtimes)} venues, {len(self.config.series_specs())} series, "
                f"{totals.inserted} candles stored")  # fmt: skip

    async def _report(self, every_s: float = 10.0) -> None:
        """Log what reached the store, so an operator sees candles arriving."""
        assert self._writer is not None
        writer, seen = self._writer, WriteResult()
        while True:
            await asyncio.sleep(every_s)
            metrics.writer_queue.set(writer.pending)
            t = writer.totals
            if t != seen:
                log.info("candles stored", inserted=t.inserted - seen.inserted,
                         updated=t.updated - seen.updated, total_inserted=t.inserted,
                         queued=writer.pending)  # fmt: skip
                seen = t
            self.notifier.status(self._status_line())
            await self._export_gauges()

    async def _export_gauges(self) -> None:
        """The gauges /metrics reads from the store and the throttles: database
        up, per-series lag (see `_lag_s`) and status, venue bans. Series a
        reload removed lose their labels, so no alert fires for them."""
        assert self._db is not None
        specs = self.config.series_specs()
        for name, rt in self.runtimes.items():
            banned = rt.throttle.banned_until if rt.throttle.banned else 0.0
            metrics.venue_ban_end.labels(name).set(banned)
        try:
            async with asyncio.timeout(3), self._db.pool.acquire() as conn:
                bounds = await stored_bounds(conn, specs)
                audited = await audited_statuses(conn)
        except UNAVAILABLE as e:
            # /health says why; lag and status keep their last values.
            log.warning("gauges not refreshed: database unavailable", error=repr(e))
            metrics.database_up.set(0)
            return
        metrics.database_up.set(1)
        now = clock.now()
        for key in self._exported - specs.keys():
            metrics.series_lag.remove(key.venue, key.symbol, key.timeframe)
            for status in SeriesStatus:
                metrics.series_status.remove(key.venue, key.symbol, key.timeframe, status)
        self._exported = set(specs)
        for key, (_, last) in bounds.items():
            metrics.series_lag.labels(key.venue, key.symbol, key.timeframe).set(
                self._lag_s(specs[key], last, now)
            )
        for key in specs:
            current, _ = audited.get(key, (SeriesStatus.MISSING, 0))
            for status in SeriesStatus:
                labels = (key.venue, key.symbol, key.timeframe, status)
                metrics.series_status.labels(*labels).set(status == current)

    async def _health_facts(self) -> HealthFacts:
        assert self._db is not None and self._supervisor is not None
        db_ok, db_error, audited, bounds = True, None, {}, {}
        # One snapshot of the config and how it was loaded, taken before the
        # queries: a reload finishing meanwhile must not pair its "ok" with
        # the series of the config it replaced.
        specs = self.config.series_specs()
        loaded_at, last_reload = self.loaded_at, self.last_reload
        try:
            async with asyncio.timeout(3), self._db.pool.acquire() as conn:
                audited = await audited_statuses(conn)
                bounds = await stored_bounds(conn, specs)
        except UNAVAILABLE as e:
            db_ok, db_error = False, repr(e)
        now = clock.now()
        series = []
        for key in sorted(specs):
            status, missing = audited.get(key, (SeriesStatus.MISSING, 0))
            last = bounds[key][1] if key in bounds else None
            lag = self._lag_s(specs[key], last, now) if last else None
            series.append(SeriesHealth(
                key.venue, key.symbol, key.timeframe,
                status, last, lag, missing,
            ))  # fmt: skip
        venues = []
        for name, rt in self.runtimes.items():
            banned = rt.throttle.banned_until
            component = self._supervisor.components.get(f"venue:{name}")
            venues.append(VenueHealth(
                name, rt.collector.connected if rt.collector else None, rt.throttle.tokens,
                datetime.fromtimestamp(banned, UTC) if rt.throttle.banned else None,
                component.state if component else ComponentState.STOPPED,
                str(rt.fetcher.refusal) if rt.fetcher.refusal is not None else None,
                stream_refused=rt.stream_refused,
            ))  # fmt: skip
        writer = self._writer
        return HealthFacts(
            uptime_s=time.monotonic() - self.started,
            database_ok=db_ok, database_error=db_error,
            timescaledb=self._db.info.timescaledb, license=self._db.info.license,
            config_loaded_at=loaded_at, last_reload=last_reload,
            venues=venues, series=series, crash_looping=self._supervisor.crash_looping(),
            writer_failing=None if writer is None else writer.failing,
            spooled_candles=self._spool.pending_candles if self._spool else 0,
            cluster=self._cluster_health(),
        )  # fmt: skip

    def _cluster_health(self) -> ClusterHealth | None:
        keeper = self._keeper
        if keeper is None:
            return None
        return ClusterHealth(
            instance=keeper.identity.instance,
            lease_ttl_s=keeper.ttl_s,
            members=keeper.view.members,
            owned=sorted(map(str, self.owned or ())),
        )

    async def _coverage_page(self) -> str:
        """`/coverage`: the store's picture of every series, judged as the healer does."""
        assert self._db is not None
        # The healer's state as its last cycle configured it (as `_lag_s` does):
        # configuring it here would read the overrides file on every request.
        healer = self._healer_obj
        settling = healer.settling if healer else venue_settling(self.config)
        overrides = healer.overrides if healer else None
        specs = list(self.config.series_specs().values())
        cov = await store_coverage.gather(
            self._db.pool, specs, clock.now(), settling=settling, overrides=overrides
        )
        return render_html(cov)

    def _lag_s(self, spec: SeriesSpec, last: datetime, now: datetime) -> float:
        overrides = self._healer_obj.overrides if self._healer_obj else None
        return lag_seconds(spec, last, now, overrides)


async def run_daemon(config: Config) -> int:
    """`candled run` with a loaded config."""
    return await Daemon(config).run()
