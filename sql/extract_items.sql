-- The catalogue for training, in a stable order (item_id, byte order): row k is item k.
-- {items} is the configured relation (RECSYS_ITEMS_RELATION); {side_feature_columns}
-- expands to one attributes->>'name' column per declared side feature.
SELECT item_id,
       category,
       brand,
       price::float8                                   AS price,
       coalesce(in_stock, true)                        AS in_stock,
       coalesce(extract(epoch FROM created_at), 0)::bigint AS created_at,
       coalesce(extract(epoch FROM updated_at), 0)::bigint AS updated_at
       {side_feature_columns}
FROM {items}
ORDER BY item_id COLLATE "C"
