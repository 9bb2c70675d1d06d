"""The offline protocol: chronological split, warm and cold queries, metrics and ranking, the report,
link-prediction AUC. It scores any object with the Recommender interface; it knows no model.

See docs/architecture.md."""
