"""Fixtures of the API tests that own their processes: a redis-server of their own, an API pointed at it."""

from tests.api.own_services import api_process, own_redis

__all__ = ["api_process", "own_redis"]
