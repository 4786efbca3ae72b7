"""Pure domain model: no I/O, no clocks, UTC-aware datetimes only."""

from daemon.domain.candle import Candle
from daemon.domain.series import DataProfile, SeriesKey
from daemon.domain.timeframe import Timeframe, require_utc

__all__ = ["Candle", "DataProfile", "SeriesKey", "Timeframe", "require_utc"]
