"""Prometheus metrics, one registry for the process (served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

candles_written = Counter(
    "candled_candles_written", "Candles that reached the store", ["result"], registry=REGISTRY
)  # result: inserted | updated | unchanged
candles_rejected = Counter(
    "candled_candles_rejected", "Candles quarantined by validation", ["venue", "reason"],
    registry=REGISTRY,
)  # fmt: skip
requests = Counter(
    "candled_http_requests", "HTTP requests to venues by status", ["venue", "status"],
    registry=REGISTRY,
)  # fmt: skip
malformed = Counter(
    "candled_malformed_messages", "Venue messages that did not parse", ["venue", "source"],
    registry=REGISTRY,
)  # fmt: skip
reconnects = Counter(
    "candled_ws_reconnects", "WebSocket reconnects", ["venue", "reason"], registry=REGISTRY
)
live_candles = Counter(
    "candled_live_candles", "Closed candles received over WebSocket", ["venue"], registry=REGISTRY
)
backfill_candles = Counter(
    "candled_backfill_candles", "Candles fetched by backfill", ["venue"], registry=REGISTRY
)
writer_queue = Gauge(
    "candled_writer_queue_depth", "Candles waiting for the writer", registry=REGISTRY
)
write_seconds = Histogram(
    "candled_write_batch_seconds", "Time to write one batch", registry=REGISTRY
)
gaps_found = Counter("candled_gaps_found", "Holes found by audits", ["venue"], registry=REGISTRY)
gaps_repaired = Counter(
    "candled_gaps_repaired", "Repair windows that returned data", ["venue"], registry=REGISTRY
)
gaps_confirmed_empty = Counter(
    "candled_gaps_confirmed_empty", "Ranges confirmed empty by the venue", ["venue"],
    registry=REGISTRY,
)  # fmt: skip
heal_cycle_seconds = Histogram(
    "candled_heal_cycle_seconds", "Duration of one self-healing cycle",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600), registry=REGISTRY,
)  # fmt: skip
heal_cycle_failures = Counter(
    "candled_heal_cycle_failures", "Self-healing cycles that ended in an error", registry=REGISTRY
)
database_up = Gauge(
    "candled_database_up", "1 while the database answers, 0 while it does not", registry=REGISTRY
)
series_status = Gauge(
    "candled_series_status",
    "1 for each series' status at its last audit (OK, DEGRADED, STALE, MISSING), 0 for the others",
    ["venue", "symbol", "timeframe", "status"], registry=REGISTRY,
)  # fmt: skip
venue_ban_end = Gauge(
    "candled_venue_ban_end_timestamp_seconds",
    "When the venue's IP ban ends (Unix time); 0 when there is none", ["venue"], registry=REGISTRY,
)  # fmt: skip
config_last_reload_success = Gauge(
    "candled_config_last_reload_success",
    "1 when the last config reload (or the start) applied, 0 when it kept the old config",
    registry=REGISTRY,
)
series_lag = Gauge(
    "candled_series_lag_seconds",
    "Seconds since the oldest bar the store lacks (by the calendar) closed; 0 when up to date",
    ["venue", "symbol", "timeframe"], registry=REGISTRY,
)  # fmt: skip
bars_outside_calendar = Counter(
    "candled_bars_outside_calendar", "Bars received where the calendar says the market is closed",
    ["venue"], registry=REGISTRY,
)  # fmt: skip
spooled_candles = Counter(
    "candled_spooled_candles", "Candles spilled to the disk spool during database outages",
    registry=REGISTRY,
)  # fmt: skip
spool_full_waits = Counter(
    "candled_spool_full_waits",
    "Times a producer had to wait because the disk spool was full (the database away too long)",
    registry=REGISTRY,
)
lease_acquisitions = Counter(
    "candled_lease_acquisitions", "Series leases this instance took (at start, on a"
    " rebalance, or over from a dead instance)", registry=REGISTRY,
)  # fmt: skip
lease_losses = Counter(
    "candled_lease_losses", "Series leases this instance lost without handing them over"
    " (not renewed in time, or taken by another)", registry=REGISTRY,
)  # fmt: skip
lease_handovers = Counter(
    "candled_lease_handovers", "Series leases this instance handed over (a rebalance or a"
    " stop)", registry=REGISTRY,
)  # fmt: skip
leases_held = Gauge("candled_leases_held", "Series this instance owns", registry=REGISTRY)
cluster_members = Gauge(
    "candled_cluster_members", "Live instances sharing the database, this one included",
    registry=REGISTRY,
)  # fmt: skip
