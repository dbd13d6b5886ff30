"""Local fake vendor servers speaking the vendors' documented request/response shapes (tests never call
the real vendors). Each runs in-process (a background thread) or as its own process (`python -m ...`)."""
