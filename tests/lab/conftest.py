"""Fixtures for the lab's own tests: real clusters, reused across tests, reset between them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from pytest_dataplane.providers.k8s.cluster import KubeCluster
from pytest_dataplane.providers.lab import LabProvider

ClusterFactory = Callable[..., KubeCluster]


@pytest.fixture(scope="session")
def _lab_cache() -> Iterator[dict[tuple[str, str], tuple[LabProvider, KubeCluster]]]:
    cache: dict[tuple[str, str], tuple[LabProvider, KubeCluster]] = {}
    yield cache
    for provider, _ in cache.values():
        provider.close()


@pytest.fixture
def lab_cluster(
    _lab_cache: dict[tuple[str, str], tuple[LabProvider, KubeCluster]],
) -> Iterator[ClusterFactory]:
    """``lab_cluster("iptables", backend="legacy")``: a session-wide cluster, reset after use."""
    used: list[KubeCluster] = []

    def get(dataplane: str, *, backend: str = "auto") -> KubeCluster:
        if os.geteuid() != 0:
            pytest.skip("the lab needs root to create network namespaces")
        key = (dataplane, backend)
        if key not in _lab_cache:
            provider = LabProvider(iptables_backend=backend)
            reason = provider.availability(dataplane)
            if reason is not None:
                pytest.skip(f"{dataplane} unavailable here: {reason}")
            _lab_cache[key] = (provider, provider.create(dataplane))
        cluster = _lab_cache[key][1]
        used.append(cluster)
        return cluster

    yield get
    for cluster in used:
        cluster.reset()
