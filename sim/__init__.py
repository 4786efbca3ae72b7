"""A simulated exchange, deterministic from a seed, with injectable faults.

One truth (`truth.py`, `sessions.py`) served through one venue's protocol at a
time (`server.py`): a personality per venue, each in its own package
(`binance/`, `alpaca/`, `coinbase/`, `kraken/`, `oanda/`). What they share sits
here: the scenario (`scenario.py`), fault triggers and broken answers
(`faults.py`), the HTTP error answer and rate limiter (`http.py`), encodings
(`encoding.py`), the WebSocket plumbing (`personality.py`) and the counters
tests assert on (`counters.py`).
"""

from candled_sim.counters import SimCounters
from candled_sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from candled_sim.server import SimExchange, run_sim
from candled_sim.truth import Maintenance, Truth

__all__ = [
    "Maintenance",
    "Scenario",
    "ScenarioError",
    "SimCounters",
    "SimExchange",
    "Truth",
    "load_scenario",
    "parse_scenario",
    "run_sim",
]
