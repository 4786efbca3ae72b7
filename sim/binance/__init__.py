"""Binance spot market data, as the simulator serves it: `personality.py` (routes,
rate limit, faults), `rest.py` (what `/api/v3/klines` answers), `stream.py`
(one kline stream connection), `wire.py` (Binance's JSON shapes)."""

from candled_sim.binance.personality import BinancePersonality

__all__ = ["BinancePersonality"]
