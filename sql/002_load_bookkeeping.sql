-- One row per `recsys load` run, and every input row that was not loaded, with why.

CREATE TABLE IF NOT EXISTS loads (
    load_id      bigserial PRIMARY KEY,
    source       text NOT NULL,             -- 'files', 'tafeng', 'online-retail'
    files        jsonb NOT NULL,            -- [{path, sha256, rows}]
    options      jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    counts       jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE IF NOT EXISTS load_rejects (
    reject_id    bigserial PRIMARY KEY,
    load_id      bigint NOT NULL REFERENCES loads (load_id),
    file_path    text NOT NULL,
    file_sha256  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('item', 'purchase')),
    row_number   integer NOT NULL,          -- 1-based data row (the header is not counted)
    field        text,
    reason       text NOT NULL,             -- short code, e.g. 'negative_price'
    detail       text NOT NULL,             -- one sentence for a person
    raw          jsonb NOT NULL,            -- the input row as read
    -- reloading the same file records each rejected row once
    CONSTRAINT load_rejects_row_key UNIQUE (file_sha256, kind, row_number)
);

CREATE INDEX IF NOT EXISTS load_rejects_load_idx ON load_rejects (load_id);
CREATE INDEX IF NOT EXISTS load_rejects_reason_idx ON load_rejects (reason);
