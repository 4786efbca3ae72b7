-- Candles that failed validation: kept with the reason so that nothing is
-- dropped silently, and never part of `candles`.
CREATE TABLE quarantine (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    venue       text NOT NULL,
    symbol      text NOT NULL,
    timeframe   text NOT NULL,
    ts          timestamptz NOT NULL,
    reason      text NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_series ON quarantine (venue, symbol, timeframe, ts);
