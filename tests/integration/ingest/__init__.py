"""Ingest service tests against real servers."""
