-- The API token's request budget, shared by every process on this database: each process holds
-- a share of the window, renegotiated a few times per window (never per request). See
-- docs/rate-budget.md. Compatible with 0010.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (11, 10);

CREATE TABLE rate_shares (
    budget      text        NOT NULL,  -- 'token': the API token's window
    holder      text        NOT NULL,  -- one per process: host:pid:random
    share       integer     NOT NULL,  -- requests per window the holder may send
    wanted      integer     NOT NULL,  -- what it would use, for the fair split
    backend_pid integer     NOT NULL,  -- its connection: gone from pg_stat_activity = dead
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget, holder)
);

-- Shares given back, or left by a dead holder: the requests sent under them are still in the
-- server's window, so nobody may take them until one window has passed.
CREATE TABLE rate_share_releases (
    budget      text        NOT NULL,
    released    integer     NOT NULL,
    released_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rate_share_releases_by_budget ON rate_share_releases (budget, released_at);
