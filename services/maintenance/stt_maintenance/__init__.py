"""Maintenance: re-drive stuck jobs, fail hopeless ones, delete expired ones (S3 + rows)."""
