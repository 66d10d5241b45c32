-- lms-sync initial schema.
--
-- Every statement is unqualified: the daemon connects with search_path set to the configured
-- schema (default `lms`), so the tables (and sqlx's own _sqlx_migrations) live there.
-- Append-only once released: change the schema with a new migration, never by editing this one.

-- One row per user per integrated account: the mirror of Truto's unified LMS user.
CREATE TABLE users (
    integrated_account_id uuid        NOT NULL,
    id                    text        NOT NULL,
    name                  text,
    first_name            text,
    last_name             text,
    username              text,
    job_title             text,
    locale                text,
    timezone              text,
    role                  text,        -- learner|instructor|admin|manager|other, or what the vendor sent
    status                text,        -- active|inactive|invited|suspended|deleted|unknown, or what the vendor sent
    organization_id       text,
    organization_name     text,
    custom_fields         jsonb,
    remote_data           jsonb,       -- the vendor's raw record (NULL with ignore_remote_data)
    created_at            timestamptz, -- the remote's value
    updated_at            timestamptz, -- the remote's value
    deleted_at            timestamptz, -- set when the user vanished from a complete listing; NULL while it exists upstream
    -- bookkeeping
    first_seen_at         timestamptz NOT NULL DEFAULT now(),
    last_changed_at       timestamptz NOT NULL DEFAULT now(),
    last_changed_run_id   bigint,
    content_hash          bytea       NOT NULL, -- hash of everything mirrored; equal hash = nothing to write
    PRIMARY KEY (integrated_account_id, id)
);

-- Live users per account: the deletion sweep and the delete guard count these.
CREATE INDEX users_live_by_account ON users (integrated_account_id) WHERE deleted_at IS NULL;

-- One row per email of a user, in the order the API gave them (position from 0).
CREATE TABLE user_emails (
    integrated_account_id uuid    NOT NULL,
    user_id               text    NOT NULL,
    position              integer NOT NULL,
    email                 text,
    is_primary            boolean,
    type                  text,
    PRIMARY KEY (integrated_account_id, user_id, position),
    FOREIGN KEY (integrated_account_id, user_id) REFERENCES users ON DELETE CASCADE
);
CREATE INDEX user_emails_by_email ON user_emails (lower(email));

-- One row per phone of a user, in the order the API gave them (position from 0).
CREATE TABLE user_phones (
    integrated_account_id uuid    NOT NULL,
    user_id               text    NOT NULL,
    position              integer NOT NULL,
    number                text,
    extension             text,
    type                  text,
    PRIMARY KEY (integrated_account_id, user_id, position),
    FOREIGN KEY (integrated_account_id, user_id) REFERENCES users ON DELETE CASCADE
);

-- One row per user that has a manager, as the API gave it. The manager need not be a synced
-- user (a later page, another account, or nobody we know), so there is no foreign key on it:
-- join through users_with_manager.
CREATE TABLE user_managers (
    integrated_account_id uuid NOT NULL,
    user_id               text NOT NULL,
    manager_id            text,  -- NULL when the API named a manager without an id
    manager_name          text,
    manager_emails        jsonb, -- the manager's emails, as given
    PRIMARY KEY (integrated_account_id, user_id),
    FOREIGN KEY (integrated_account_id, user_id) REFERENCES users ON DELETE CASCADE
);
CREATE INDEX user_managers_by_manager ON user_managers (integrated_account_id, manager_id);

-- One row per run of one account.
CREATE TABLE sync_runs (
    run_id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integrated_account_id    uuid        NOT NULL,
    started_at               timestamptz NOT NULL DEFAULT now(),
    finished_at              timestamptz,
    -- running | succeeded | needs_attention | failed | interrupted
    outcome                  text        NOT NULL DEFAULT 'running',
    resumed                  boolean     NOT NULL DEFAULT false, -- continued an earlier run's listing
    complete_listing         boolean     NOT NULL DEFAULT false, -- followed the cursor to its end
    pages                    bigint      NOT NULL DEFAULT 0,
    users_seen               bigint      NOT NULL DEFAULT 0,
    inserted                 bigint      NOT NULL DEFAULT 0,
    updated                  bigint      NOT NULL DEFAULT 0,
    unchanged                bigint      NOT NULL DEFAULT 0,
    deleted                  bigint      NOT NULL DEFAULT 0,
    undeleted                bigint      NOT NULL DEFAULT 0,
    rejected                 bigint      NOT NULL DEFAULT 0,
    duplicates               bigint      NOT NULL DEFAULT 0,
    http_requests            bigint      NOT NULL DEFAULT 0,
    retries                  bigint      NOT NULL DEFAULT 0,
    rate_limited             bigint      NOT NULL DEFAULT 0,
    deletions_skipped_reason text,       -- why no deletions were inferred, when none were
    error_kind               text,
    error                    text,
    worker                   text                                -- host:pid of the process
);
CREATE INDEX sync_runs_by_account ON sync_runs (integrated_account_id, started_at DESC);

-- One row per account: where its listing stands and how its runs went.
CREATE TABLE sync_state (
    integrated_account_id uuid PRIMARY KEY,
    label                 text,
    -- idle | running | succeeded | needs_attention | failed | interrupted
    status                text        NOT NULL DEFAULT 'idle',
    current_run_id        bigint,
    cursor                text,        -- next_cursor of the last committed page; NULL = start from the first page
    listing_run_id        bigint,      -- the run that started the listing `cursor` belongs to
    -- counters of the current (or last) run, advanced with every committed page
    pages                 bigint      NOT NULL DEFAULT 0,
    users_seen            bigint      NOT NULL DEFAULT 0,
    inserted              bigint      NOT NULL DEFAULT 0,
    updated               bigint      NOT NULL DEFAULT 0,
    unchanged             bigint      NOT NULL DEFAULT 0,
    deleted               bigint      NOT NULL DEFAULT 0,
    rejected              bigint      NOT NULL DEFAULT 0,
    last_started_at       timestamptz,
    last_finished_at      timestamptz,
    last_succeeded_at     timestamptz,
    last_outcome          text,
    last_error            text,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Records that could not be stored, with the raw JSON and the reason. `raw` is text, not jsonb:
-- what jsonb refused must still be kept.
CREATE TABLE rejected_records (
    rejection_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integrated_account_id uuid        NOT NULL,
    run_id                bigint      NOT NULL,
    user_id               text,        -- when the record had a usable id
    reason                text        NOT NULL,
    raw                   text        NOT NULL,
    rejected_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_records_by_run ON rejected_records (integrated_account_id, run_id);

-- The ids a run's listing has seen, for the deletion sweep. UNLOGGED: it is scratch space that
-- writes no WAL. A crash may empty it; the sweep then sees fewer ids than the run counted and
-- infers no deletions (see store::sweep_deletions).
CREATE UNLOGGED TABLE seen_users (
    integrated_account_id uuid   NOT NULL,
    run_id                bigint NOT NULL,
    user_id               text   NOT NULL,
    PRIMARY KEY (integrated_account_id, run_id, user_id)
);

-- Users that exist upstream.
CREATE VIEW live_users AS
    SELECT * FROM users WHERE deleted_at IS NULL;

-- Each user's primary email: the first one marked primary, else the first one.
CREATE VIEW user_primary_email AS
    SELECT DISTINCT ON (integrated_account_id, user_id)
           integrated_account_id, user_id, email, type, coalesce(is_primary, false) AS is_marked_primary
      FROM user_emails
     WHERE email IS NOT NULL
     ORDER BY integrated_account_id, user_id, coalesce(is_primary, false) DESC, position;

-- Each user with their manager: the link as the API gave it, and the manager's own users row
-- when the manager is a synced user of the same account (manager_in_mirror).
CREATE VIEW users_with_manager AS
    SELECT u.integrated_account_id,
           u.id                        AS user_id,
           u.name                      AS user_name,
           u.deleted_at                AS user_deleted_at,
           m.manager_id,
           m.manager_name,
           m.manager_emails,
           (mu.id IS NOT NULL)         AS manager_in_mirror,
           mu.name                     AS manager_user_name,
           mu.job_title                AS manager_job_title,
           mu.status                   AS manager_status,
           mu.deleted_at               AS manager_deleted_at
      FROM users u
      LEFT JOIN user_managers m
             ON m.integrated_account_id = u.integrated_account_id AND m.user_id = u.id
      LEFT JOIN users mu
             ON mu.integrated_account_id = m.integrated_account_id AND mu.id = m.manager_id;
