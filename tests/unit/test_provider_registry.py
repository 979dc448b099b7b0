"""The provider registry: one list of providers, with their options, checks and plans."""

from __future__ import annotations

import pytest

from pytest_dataplane import plugin
from pytest_dataplane.providers import (
    DEFAULT_PROVIDER,
    PROVIDERS,
    ProviderEntry,
    ProviderRegistry,
    _resolve,
    command_line,
)


def test_the_built_in_providers() -> None:
    assert list(PROVIDERS) == ["lab", "kind", "kubeconfig"]
    assert DEFAULT_PROVIDER in PROVIDERS
    assert PROVIDERS.parse(" Kind ") == "kind"
    with pytest.raises(
        ValueError,
        match=r"^--dataplane-provider: unknown provider 'docker'; accepted: lab, kind, kubeconfig$",
    ):
        PROVIDERS.parse("docker")


def test_every_reference_resolves_and_every_option_exists() -> None:
    # The entries name their code by string (imported on use); a renamed class or module
    # must fail here, not in a user's run.
    for entry in PROVIDERS.values():
        for ref in (entry.create, entry.check, entry.plan):
            if ref is not None:
                assert callable(_resolve(ref)), (entry.name, ref)
        unknown = [dest for dest in entry.options if dest not in plugin._BY_DEST]
        assert not unknown, (entry.name, unknown)


def test_adding_checks_the_name() -> None:
    registry = PROVIDERS.copy()
    registry.add(ProviderEntry("eks", "EKS", "x:y"))
    assert list(registry) == ["lab", "kind", "kubeconfig", "eks"]
    assert "eks" not in PROVIDERS  # the copy is the run's, the built-in list stays
    with pytest.raises(ValueError, match="provider 'eks' is already registered"):
        registry.add(ProviderEntry("eks", "again", "x:y"))
    for bad in ("EKS", "my-cloud", ""):
        with pytest.raises(ValueError, match=f"provider name {bad!r} is not accepted"):
            registry.add(ProviderEntry(bad, "?", "x:y"))


def test_plan_of_a_provider_without_one() -> None:
    with pytest.raises(
        ValueError,
        match=r"^--dataplane-plan describes the kind and kubeconfig providers; the lab needs no "
        r"plan \(python -m pytest_dataplane doctor shows what it can run here\)$",
    ):
        command_line(lambda dest: None, "lab", plan=True)
    assert command_line(lambda dest: None, "lab", plan=False) is None


def test_check_and_plan_come_from_the_entry() -> None:
    calls: list[str] = []

    def check(option: object) -> None:
        calls.append("check")

    def plan(option: object) -> str:
        calls.append("plan")
        return "the plan\n"

    registry = ProviderRegistry((ProviderEntry("mine", "here", "x:y", check=check, plan=plan),))
    assert command_line(lambda dest: None, "mine", plan=False, registry=registry) is None
    assert command_line(lambda dest: None, "mine", plan=True, registry=registry) == "the plan\n"
    assert calls == ["check", "plan"]
    with pytest.raises(ValueError, match="unknown provider 'lab'; accepted: mine"):
        command_line(lambda dest: None, "lab", plan=False, registry=registry)
