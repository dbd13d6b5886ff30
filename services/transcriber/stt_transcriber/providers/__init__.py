"""The transcriber's provider adapters; `stt_transcriber.pool.ADAPTERS` maps the catalogue's names to them."""
