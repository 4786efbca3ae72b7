"""candled: keeps a TimescaleDB store of market candles complete and correct.

The version below is the only one: the build reads it from here (pyproject's
`[tool.hatch.version]`), and `/health` and `--version` show it.
"""

__version__ = "0.1.0"
