-- The candle store, sized for billions of rows.
--
-- * candle_data holds one narrow row per candle: a 4-byte series id instead of
--   three text columns (venue, symbol, timeframe are stored once, in series),
--   the open time, and five float8 prices/volume. ~76 bytes a row with header.
-- * Its primary key (series_id, ts) is the only index: it is the upsert's
--   conflict target and serves every per-series time-range scan (audit islands,
--   last bar, exports). TimescaleDB requires the time column in every unique
--   index, which this key has.
-- * No foreign key from candle_data to series: the check would cost a lookup
--   per inserted row; the writer only ever uses ids it got from series.
-- * On TimescaleDB, candle_data is a hypertable on ts with 7-day chunks (a
--   week of 1m bars for 1,000 series is ~10M rows, an index that fits memory).
--   Without the extension the same schema runs on plain PostgreSQL.
-- * candles (the public relation) is a view that joins the series names back.

CREATE TABLE series (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    venue       text NOT NULL,
    symbol      text NOT NULL,
    timeframe   text NOT NULL,
    profile     text NOT NULL DEFAULT 'CRYPTO'
                CHECK (profile IN ('CRYPTO', 'EQUITY', 'FUTURES', 'FOREX')),
    calendar    text NOT NULL DEFAULT '',
    configured  boolean NOT NULL DEFAULT true,
    genesis_ts  timestamptz,
    genesis_evidence jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (venue, symbol, timeframe)
);

CREATE TABLE candle_data (
    series_id integer NOT NULL,
    ts        timestamptz NOT NULL,
    open      double precision NOT NULL,
    high      double precision NOT NULL,
    low       double precision NOT NULL,
    close     double precision NOT NULL,
    volume    double precision NOT NULL,
    PRIMARY KEY (series_id, ts)
);

DO $$
BEGIN
    -- The extension can only be created where the server preloads it.
    IF current_setting('shared_preload_libraries') LIKE '%timescaledb%'
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('candle_data', by_range('ts', INTERVAL '7 days'));
    ELSE
        RAISE NOTICE 'timescaledb is not available: candle_data stays a plain table';
    END IF;
END
$$;

CREATE VIEW candles AS
SELECT s.venue, s.symbol, s.timeframe, c.ts, c.open, c.high, c.low, c.close, c.volume
FROM candle_data c
JOIN series s ON s.id = c.series_id;

-- What the last audit found for each series; written by the healer.
CREATE TABLE series_state (
    series_id     integer PRIMARY KEY REFERENCES series (id) ON DELETE CASCADE,
    status        text NOT NULL CHECK (status IN ('OK', 'DEGRADED', 'STALE', 'MISSING')),
    first_ts      timestamptz,
    last_ts       timestamptz,
    missing_bars  bigint NOT NULL DEFAULT 0,
    last_audit_at timestamptz NOT NULL,
    audited_until timestamptz
);

CREATE VIEW series_status AS
SELECT s.venue, s.symbol, s.timeframe, s.profile,
       coalesce(st.status, 'MISSING') AS status,
       s.genesis_ts, st.first_ts, st.last_ts,
       st.missing_bars, st.last_audit_at
FROM series s
LEFT JOIN series_state st ON st.series_id = s.id
WHERE s.configured;
