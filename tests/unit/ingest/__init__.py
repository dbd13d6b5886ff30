"""Ingest unit tests (no servers)."""
