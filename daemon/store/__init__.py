"""The store layer: the asyncpg pool, migrations, the candle writer and its disk
spool, healing state, and the embedded PostgreSQL cluster."""
