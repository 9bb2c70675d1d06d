-- Which of the given accounts bought anything before a time: the hourly refresh counts
-- only accounts the version has seen (recsys/jobs/refresh.py).
SELECT DISTINCT user_id
FROM {purchases}
WHERE user_id = ANY(%(ids)s) AND purchased_at < to_timestamp(%(before)s)
