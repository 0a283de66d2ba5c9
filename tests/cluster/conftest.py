"""The cluster tests' fixtures: one cluster (scripts/cluster.sh) and one Courier stack on it per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import Cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three RabbitMQ nodes and Redis with Sentinels of this module's own, provisioned with the quorum topology;
    stopped and removed afterwards."""
    own = Cluster()
    try:
        own.start()
        own.provision()
        yield own
    finally:
        own.stop()
