"""Integrations: signed webhooks (endpoints, events, deliveries) and pulls from external systems."""
