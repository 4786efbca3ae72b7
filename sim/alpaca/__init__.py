"""Alpaca market data v2 (stocks), as the simulator serves it: `personality.py`
(routes, credentials, rate limit, the key's plan), `rest.py` (what the bars
endpoints answer), `stream.py` (one stock stream connection), `wire.py`
(Alpaca's JSON shapes and the sim's key pair)."""

from candled_sim.alpaca.personality import AlpacaPersonality
from candled_sim.alpaca.stream import corrected
from candled_sim.alpaca.wire import SIM_KEY, SIM_SECRET

__all__ = ["SIM_KEY", "SIM_SECRET", "AlpacaPersonality", "corrected"]
