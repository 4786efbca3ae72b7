"""Pure domain model: no I/O, no clocks, UTC-aware datetimes only."""

from candled.domain.candle import Candle
from candled.domain.series import DataProfile, SeriesKey
from candled.domain.timeframe import Timeframe, require_utc

__all__ = ["Candle", "DataProfile", "SeriesKey", "Timeframe", "require_utc"]
