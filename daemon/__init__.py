"""candled: keeps a TimescaleDB store of market candles complete and correct."""

__version__ = "0.1.0"
