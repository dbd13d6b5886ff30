"""Database access: models, the engine factory and the conditional state transitions."""
