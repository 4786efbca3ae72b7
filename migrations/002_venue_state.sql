-- Per-venue state that must outlive a restart: the end of an IP ban (418),
-- so that a daemon restarted during a ban sends nothing until it ends.
CREATE TABLE venue_state (
    venue        text PRIMARY KEY,
    banned_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
