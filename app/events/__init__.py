"""Outbound events: the event log every domain emits to, fanned out as one delivery per subscribed endpoint."""
