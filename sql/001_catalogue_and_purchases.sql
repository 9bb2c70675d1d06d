-- Catalogue and purchase history: the data contract of the README ("Load your data").

CREATE TABLE IF NOT EXISTS items (
    item_id     text PRIMARY KEY,
    category    text NOT NULL,
    brand       text,
    price       numeric CHECK (price >= 0),
    title       text,
    in_stock    boolean NOT NULL DEFAULT true,
    created_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- extra columns of the items file; the declared side features among them are
    -- listed in side_features
    attributes  jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Extraction watermark: latest catalogue change.
CREATE INDEX IF NOT EXISTS items_updated_at_idx ON items (updated_at);

-- Keys of `attributes` that are categorical side features of the model.
CREATE TABLE IF NOT EXISTS side_features (
    name        text PRIMARY KEY,
    declared_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS purchases (
    purchase_id  bigserial PRIMARY KEY,
    user_id      text NOT NULL,
    -- Refers to items.item_id. The loader only inserts lines whose item exists (no
    -- phantom items); a foreign-key trigger would check row by row and make bulk
    -- loads about twice as slow, so the guarantee lives in the load transaction.
    item_id      text NOT NULL,
    purchased_at timestamptz NOT NULL,
    order_id     text,
    quantity     integer NOT NULL DEFAULT 1 CHECK (quantity > 0),
    unit_price   numeric CHECK (unit_price >= 0),
    -- k-th line with the same (user, item, time, order) in its input file: lets a
    -- file repeat an item in one order and still reload idempotently.
    line_no      integer NOT NULL DEFAULT 0,
    order_key    text GENERATED ALWAYS AS (coalesce(order_id, '')) STORED,
    load_id      bigint,
    CONSTRAINT purchases_natural_key UNIQUE (user_id, item_id, purchased_at, order_key, line_no)
);

-- Extraction streams purchases by time window; evaluation and sessions read per user in time order.
CREATE INDEX IF NOT EXISTS purchases_purchased_at_idx ON purchases (purchased_at);
