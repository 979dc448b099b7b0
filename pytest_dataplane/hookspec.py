"""Hooks a team can implement in its ``conftest.py`` (or a plugin) to extend pytest-dataplane.

The plugin registers these with ``pluginmanager.add_hookspecs`` in ``pytest_addhooks``; pytest
checks every implementation's argument names against them. Implement only the arguments you
need, as with pytest's own hooks::

    # conftest.py
    def pytest_dataplane_update_fingerprint(fingerprint):
        fingerprint["node_type"] = "m5.large"  # baselines of other node types are not compared
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .providers import ProviderRegistry

__all__ = [
    "pytest_dataplane_add_providers",
    "pytest_dataplane_update_fingerprint",
    "pytest_dataplane_update_json",
]


@pytest.hookspec
def pytest_dataplane_add_providers(config: pytest.Config, registry: ProviderRegistry) -> None:
    """Add providers to ``registry`` with ``registry.add(ProviderEntry(...))``.

    Called once per run, before ``--dataplane-provider`` is checked, so that the name of a
    provider added here is accepted there (and listed in its error message). A
    :class:`~pytest_dataplane.providers.ProviderEntry` names the provider, the phrase of where
    it runs, and a ``create(option)`` returning an object with the ``Provider`` protocol of
    :mod:`pytest_dataplane.providers.base` (``option(dest)`` reads a resolved plugin option);
    optionally a ``check(option)`` run before collection and a ``plan(option)`` printed by
    ``--dataplane-plan``.
    """


@pytest.hookspec
def pytest_dataplane_update_fingerprint(
    config: pytest.Config, dataplane: str, provider: str, fingerprint: dict[str, Any]
) -> None:
    """Add facts to the fingerprint of the cluster a test ran on, in place.

    Called after each dataplane test, when the ``dataplane`` fixture reads the cluster's
    figures; ``fingerprint`` holds what the cluster said (versions, backends). Baselines are
    compared only where every fact is equal, so add what changes performance and the cluster
    cannot know (the machine type, an MTU, a kernel option); values must be JSON data.
    """


@pytest.hookspec
def pytest_dataplane_update_json(config: pytest.Config, document: dict[str, Any]) -> None:
    """Change the report document, in place, before ``--dataplane-json`` and
    ``--dataplane-save-baseline`` write it.

    Put new fields under ``document["extra"]`` or a result's ``"extra"`` (objects the shipped
    JSON schema reserves for them), so that the file stays valid against it.
    """
