-- Scale-out: `candled run` instances that share this database share the
-- series through leases (README "Scale-out"). Every time below is the
-- database's clock (now()), the only clock all instances agree on.
--
-- * cluster_members: one row per instance, renewed with its leases; a row
--   whose expires_at has passed is a dead (or cut-off) instance.
-- * series_leases: one row per owned series. Only the holder acts on it
--   (streams, polls, backfills, heals) and only until expires_at; another
--   instance takes it over once it has expired. epoch counts changes of
--   holder, a fencing token for whoever needs one.
CREATE TABLE cluster_members (
    instance    text PRIMARY KEY,
    host        text NOT NULL,
    pid         integer NOT NULL,
    health      text NOT NULL DEFAULT '',
    version     text NOT NULL DEFAULT '',
    started_at  timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

CREATE TABLE series_leases (
    series      text PRIMARY KEY,  -- venue:symbol:timeframe, as the CLI writes it
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    epoch       bigint NOT NULL DEFAULT 1
);

CREATE INDEX series_leases_holder ON series_leases (holder);
