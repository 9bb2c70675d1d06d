-- Purchase lines in a time window as dense integers, ordered by (user, time).
-- Item k is the k-th item of extract_items.sql; users and orders are numbered by
-- byte order of their ids within the window; -1 = no order.
WITH item_index AS (
    SELECT item_id, (row_number() OVER (ORDER BY item_id COLLATE "C") - 1)::int AS item_ix
    FROM {items}
), window_lines AS (
    SELECT user_id, item_id, purchased_at, order_id, quantity
    FROM {purchases}
    WHERE purchased_at >= %(since)s AND purchased_at < %(until)s
)
SELECT (dense_rank() OVER (ORDER BY w.user_id COLLATE "C") - 1)::int        AS user_ix,
       i.item_ix,
       extract(epoch FROM w.purchased_at)::bigint                           AS purchased_at,
       CASE WHEN w.order_id IS NULL THEN -1
            ELSE (dense_rank() OVER (ORDER BY w.order_id COLLATE "C") - 1) END AS order_ix,
       coalesce(w.quantity, 1)                                              AS quantity
FROM window_lines w
JOIN item_index i ON i.item_id = w.item_id
ORDER BY user_ix, purchased_at, i.item_ix
