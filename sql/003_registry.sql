-- The registry of published versions (bundle folders) and the aliases that serve them.

CREATE TABLE IF NOT EXISTS model_versions (
    version          text PRIMARY KEY,          -- the bundle folder name, e.g. 20261128T071500Z-1a2b3c4d[.p1]
    path             text NOT NULL,             -- where the bundle lives (folder or object-store prefix)
    -- published: written and registered by a publish; orphan: a complete bundle found by
    -- reconcile without a row (a publish stopped after the rename); rejected: failed its
    -- promotion gates; retired: no longer to be served; missing: the row's folder is gone
    status           text NOT NULL DEFAULT 'published'
                     CHECK (status IN ('published', 'orphan', 'rejected', 'retired', 'missing')),
    kind             text NOT NULL DEFAULT 'full' CHECK (kind IN ('full', 'patch')),
    -- the version a patch extends (no foreign key: reconcile may register a patch whose
    -- parent row was lost)
    parent_version   text,
    created_at       timestamptz NOT NULL,      -- from the manifest
    registered_at    timestamptz NOT NULL DEFAULT now(),
    metrics          jsonb NOT NULL DEFAULT '{}'::jsonb,
    manifest_sha256  text NOT NULL,
    notes            jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the manifest's notes (e.g. a run fingerprint)
    status_reason    text
);

CREATE INDEX IF NOT EXISTS model_versions_created_at_idx ON model_versions (created_at);

CREATE TABLE IF NOT EXISTS aliases (
    alias     text PRIMARY KEY CHECK (alias IN ('production', 'candidate')),
    version   text NOT NULL REFERENCES model_versions (version),
    moved_at  timestamptz NOT NULL DEFAULT now()
);

-- Every alias move, in order; rollback walks this back.
CREATE TABLE IF NOT EXISTS alias_history (
    move_id       bigserial PRIMARY KEY,
    alias         text NOT NULL,
    from_version  text,
    to_version    text NOT NULL,
    action        text NOT NULL DEFAULT 'move' CHECK (action IN ('move', 'promote', 'rollback', 'patch')),
    moved_at      timestamptz NOT NULL DEFAULT now(),
    reason        text NOT NULL DEFAULT ''
);

CREATE INDEX IF NOT EXISTS alias_history_alias_idx ON alias_history (alias, move_id);
