"""candled: keeps a TimescaleDB store of market candles complete and correct.

The version below is the only one: the build reads it from here (pyproject's
`[tool.hatch.version]`), and `/health` and `--version` show it.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

# `candled.read_candles` (README, "Research"), imported on first use:
# importing the package alone loads neither pandas nor asyncpg.
if TYPE_CHECKING:
    from candled.research import read_candles as read_candles


def __getattr__(name: str) -> object:
    """The lazily imported public names (PEP 562)."""
    if name == "read_candles":
        from candled.research import read_candles

        return read_candles
    raise AttributeError(f"module 'candled' has no attribute {name!r}")
