"""Where rejected candles go."""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

from candled.domain import Candle


async def quarantine(
    db: asyncpg.Pool | asyncpg.Connection, rejected: Sequence[tuple[Candle, str]], source: str
) -> None:
    """Keep candles that failed validation, with the reason and values, out of `candles`."""
    await db.executemany(
        """INSERT INTO quarantine (venue, symbol, timeframe, ts, reason, payload)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb)""",
        [
            (c.series.venue, c.series.symbol, c.series.timeframe, c.ts, reason,
             json.dumps({"open": repr(c.open), "high": repr(c.high), "low": repr(c.low),
                         "close": repr(c.close), "volume": repr(c.volume), "source": source}))
            for c, reason in rejected
        ],
    )  # fmt: skip
