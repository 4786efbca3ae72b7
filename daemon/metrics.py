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
