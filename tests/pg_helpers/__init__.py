"""A real PostgreSQL server (and an MLflow server on it) for tests/test_postgres.py."""
