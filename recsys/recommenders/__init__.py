"""Everything that can be a row of the evaluation table: the baselines, the EGES recommender and its
scorer choice, the compressed index as served, and the one lineup of rows by name (`lineup`).

See docs/architecture.md."""
