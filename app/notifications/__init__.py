"""Notifications: one row per message (its delivery's idempotency key), channels behind one small interface."""
