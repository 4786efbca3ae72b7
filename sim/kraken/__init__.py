"""Kraken's public OHLC data, as the simulator serves it: `personality.py` (routes,
rate limit), `rest.py` (what `/0/public/OHLC` answers), `stream.py` (one v2
`ohlc` connection), `wire.py` (Kraken's JSON shapes)."""

from candled_sim.kraken.personality import KrakenPersonality
from candled_sim.kraken.rest import OhlcRequest

__all__ = ["KrakenPersonality", "OhlcRequest"]
