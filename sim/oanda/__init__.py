"""OANDA v20's candles, as the simulator serves them: `personality.py` (route,
token, rate limit), `rest.py` (what the candles endpoint answers), `wire.py`
(OANDA's JSON shapes)."""

from candled_sim.oanda.personality import SIM_TOKEN, OandaPersonality
from candled_sim.oanda.wire import as_published

__all__ = ["SIM_TOKEN", "OandaPersonality", "as_published"]
