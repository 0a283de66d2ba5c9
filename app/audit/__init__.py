"""The audit trail: who did what to which target, append-only."""
