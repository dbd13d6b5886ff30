"""Fault injection: the pipeline's promise (a job accepted with 202 ends exactly once) under kills."""
