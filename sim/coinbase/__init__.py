"""Coinbase Exchange's public candles, as the simulator serves them: `personality.py`
(route, rate limit), `rest.py` (what the candles endpoint answers), `wire.py`
(Coinbase's JSON shapes)."""

from candled_sim.coinbase.personality import CoinbasePersonality

__all__ = ["CoinbasePersonality"]
