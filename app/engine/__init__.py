"""Courier's engine: Celery, kombu and py-amqp as Courier runs them."""
