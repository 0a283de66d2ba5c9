"""The durable dead-letter store: every message RabbitMQ dead-letters, with its reason, replayable."""
