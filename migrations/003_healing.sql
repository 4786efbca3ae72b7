-- Self-healing state: what the audit found, what repair tried, what the venue
-- confirmed it does not have. Small tables (one row per hole or attempt), so
-- plain tables with per-series indexes.

ALTER TABLE series_state
    ADD COLUMN confirmed_empty_bars bigint NOT NULL DEFAULT 0,
    ADD COLUMN expected_bars bigint NOT NULL DEFAULT 0;

-- Holes found by the last audit (replaced by each audit of the same range).
CREATE TABLE series_gaps (
    series_id integer NOT NULL REFERENCES series (id) ON DELETE CASCADE,
    start_ts  timestamptz NOT NULL,   -- first missing bar's open time
    end_ts    timestamptz NOT NULL,   -- exclusive
    bars      bigint NOT NULL,
    found_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (series_id, start_ts)
);

-- Every repair request: so that a user can see why a hole exists.
CREATE TABLE repair_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_id    integer NOT NULL REFERENCES series (id) ON DELETE CASCADE,
    start_ts     timestamptz NOT NULL,
    end_ts       timestamptz NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    candles      integer NOT NULL,      -- returned by the venue
    outcome      text NOT NULL CHECK (outcome IN ('filled', 'empty', 'error')),
    detail       text
);
CREATE INDEX repair_attempts_series ON repair_attempts (series_id, attempted_at DESC);

-- Ranges the venue answered with no data: retried with growing intervals,
-- confirmed empty after K empty answers, then never requested again.
CREATE TABLE empty_ranges (
    series_id       integer NOT NULL REFERENCES series (id) ON DELETE CASCADE,
    start_ts        timestamptz NOT NULL,
    end_ts          timestamptz NOT NULL,
    empty_answers   integer NOT NULL,
    first_empty_at  timestamptz NOT NULL,
    last_empty_at   timestamptz NOT NULL,
    next_attempt_at timestamptz,
    confirmed_at    timestamptz,
    PRIMARY KEY (series_id, start_ts, end_ts)
);

CREATE OR REPLACE VIEW series_status AS
SELECT s.venue, s.symbol, s.timeframe, s.profile,
       coalesce(st.status, 'MISSING') AS status,
       s.genesis_ts, st.first_ts, st.last_ts,
       st.missing_bars, st.last_audit_at,
       st.confirmed_empty_bars, st.expected_bars
FROM series s
LEFT JOIN series_state st ON st.series_id = s.id
WHERE s.configured;
