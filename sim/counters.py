"""What the simulated exchange did, for tests and acceptance checks to assert on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class SimCounters:
    """Counts of what the exchange answered, sent and injected since it started."""

    requests_by_status: Counter[int] = field(default_factory=Counter)  # REST answers
    weight_used: int = 0  # request weight charged, over all clients and windows
    requests_during_ban: int = 0
    sent_429: int = 0  # rate-limit refusals (Kraken's in an HTTP 200 body)
    sent_429_in_flight: int = 0  # of those, to requests already on their way
    sent_418: int = 0
    http_errors_injected: int = 0
    connection_resets: int = 0
    slow_responses: int = 0
    never_answered: int = 0
    html_errors: int = 0
    non_json: int = 0  # 200 answers whose body is not JSON
    truncated_bodies: int = 0
    oversized_bodies: int = 0
    storm_errors: int = 0  # klines requests answered 5xx by the storm
    ws_connections: int = 0  # opened since start
    ws_open: int = 0
    ws_drops: int = 0
    ws_idle_periods: int = 0
    frames_sent: int = 0  # kline frames, open and closed
    closing_frames_sent: int = 0
    closing_frames_lost: int = 0
    # Closing kline frames by how late they were handed to the socket, in whole
    # milliseconds after their bar's close (Binance): what a benchmark reads.
    closing_lag_ms: Counter[int] = field(default_factory=Counter)
    # Per connection and tick with closing frames, the process's CPU time in
    # sending them, in whole milliseconds (Binance): their lateness on a machine
    # with a core to spare.
    closing_burst_cpu_ms: Counter[int] = field(default_factory=Counter)
    malformed_frames_sent: int = 0
    foreign_frames_sent: int = 0  # kline frames of streams the connection did not subscribe to
    ws_mute: int = 0  # connections on which nothing was ever sent
    pings_sent: int = 0
    corrected_bars_sent: int = 0  # Alpaca: corrected minute bars ("T": "u") streamed
