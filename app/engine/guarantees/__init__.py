"""Overrides that keep a message from being lost: every failure ends acked with its result, retried, or
dead-lettered."""
