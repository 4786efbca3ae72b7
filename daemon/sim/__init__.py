"""A simulated Binance-like exchange, deterministic from a seed, with injectable faults."""

from daemon.sim.counters import SimCounters
from daemon.sim.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from daemon.sim.server import SimExchange, run_sim
from daemon.sim.truth import Maintenance, Truth

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
