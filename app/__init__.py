"""Courier: a background-task service on Celery and RabbitMQ where nothing accepted is ever silently lost."""
