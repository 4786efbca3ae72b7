"""A simulated Binance-like exchange, deterministic from a seed, with injectable faults."""

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
