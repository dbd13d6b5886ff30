"""The `stt` command-line client of the REST API."""
