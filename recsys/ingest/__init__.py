"""Getting a shop's data in and out of Postgres: the embedded server and engines (`db`), numbered
migrations, file readers and validation (`loaders/`), the transactional load, and extraction into a `Dataset`.

See docs/architecture.md."""
