-- Holes made by deleting stored candles are found again by the next audit.
--
-- * `DELETE FROM candles WHERE ...` works: the view deletes from candle_data.
-- * Any delete from candle_data (through the view or not) records when it
--   happened in series.purged_at and forgets how far the series was audited
--   (series_state.audited_until), so the next incremental audit scans the
--   series' whole history. An audit that was running during the delete sees
--   purged_at change and does not move audited_until forward (healer.py).
-- * Deletes that fire no trigger (drop_chunks, a restored backup) are found
--   by the scheduled full audit ([healing] full_audit_interval), recorded in
--   series_state.last_full_audit_at.

ALTER TABLE series ADD COLUMN purged_at timestamptz;
ALTER TABLE series_state ADD COLUMN last_full_audit_at timestamptz;

CREATE FUNCTION candle_data_purged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Once per statement and series: a bulk delete updates each row once.
    UPDATE series SET purged_at = statement_timestamp()
    WHERE id = OLD.series_id AND purged_at IS DISTINCT FROM statement_timestamp();
    IF FOUND THEN
        UPDATE series_state SET audited_until = NULL WHERE series_id = OLD.series_id;
    END IF;
    RETURN NULL;
END
$$;

-- Row-level: TimescaleDB hypertables do not support statement triggers with
-- transition tables; it propagates row triggers to every chunk.
CREATE TRIGGER candle_data_purged AFTER DELETE ON candle_data
    FOR EACH ROW EXECUTE FUNCTION candle_data_purged();

CREATE FUNCTION candles_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM candle_data c USING series s
    WHERE s.venue = OLD.venue AND s.symbol = OLD.symbol AND s.timeframe = OLD.timeframe
      AND c.series_id = s.id AND c.ts = OLD.ts;
    RETURN OLD;
END
$$;

CREATE TRIGGER candles_delete INSTEAD OF DELETE ON candles
    FOR EACH ROW EXECUTE FUNCTION candles_delete();
