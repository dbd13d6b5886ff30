"""HTTP routes: submissions, job queries/actions, and the operational endpoints."""
