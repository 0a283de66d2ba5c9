"""Operations: pausing and resuming tiers, purging queues, the status overview and performance figures."""
