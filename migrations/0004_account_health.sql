-- Account health: whether the account's credentials and access work, as its last runs found.
-- An account that needs re-authorization, is blocked, unknown to the token or missing scopes
-- fails the same way on every run; the scheduler probes it hours apart instead of minutes,
-- and clears the health as soon as one request for it succeeds.
ALTER TABLE sync_state
    -- ok | needs_reauth (remote 401) | blocked (503) | not_found (404) | forbidden (403)
    ADD COLUMN health          text        NOT NULL DEFAULT 'ok',
    ADD COLUMN health_since    timestamptz,           -- when the current health began (NULL: always ok)
    ADD COLUMN health_reason   text,                  -- the error that set it
    ADD COLUMN health_failures integer     NOT NULL DEFAULT 0; -- failed probes in a row
