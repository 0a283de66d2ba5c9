"""Durable task-run history and revocations: what outlives Redis expiry."""
