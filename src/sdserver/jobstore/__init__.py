"""The job store: the one channel between API and workers, in SQL (SQLite or PostgreSQL)."""
