"""Providers: where a dataplane lives (lab namespaces, kind clusters, an existing cluster)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Cluster, CpuUsage, Provider, RuleCount, RuleCountPart, Service

__all__ = [
    "Cluster",
    "CpuUsage",
    "Provider",
    "RuleCount",
    "RuleCountPart",
    "Service",
    "command_line",
    "make_provider",
]

OptionGetter = Callable[[str], Any]


def make_provider(name: str, option: OptionGetter) -> Provider:
    """Build the provider called ``name``; ``option(dest)`` reads a resolved plugin option."""
    if name == "lab":
        from .lab import LabProvider

        return LabProvider.from_options(option)
    if name == "kind":
        from .kind import KindProvider

        return KindProvider.from_options(option)
    if name == "kubeconfig":
        from .kubeconfig import KubeconfigProvider

        return KubeconfigProvider.from_options(option)
    raise ValueError(f"provider: unknown {name!r}; accepted: lab, kind, kubeconfig")


def command_line(option: OptionGetter, provider: str, *, plan: bool) -> str | None:
    """The plugin's early step for ``provider``, before anything is collected: validate its
    options (ValueError names the bad value) and, with ``plan`` (``--dataplane-plan``), return
    what it would do, to be printed. Touches no Docker and no cluster."""
    if provider == "lab":
        if plan:
            raise ValueError(
                "--dataplane-plan describes the kind and kubeconfig providers; the lab needs no "
                "plan (python -m pytest_dataplane doctor shows what it can run here)"
            )
        return None
    if provider == "kubeconfig":
        from .kubeconfig.provider import plan_text

        return plan_text(option) if plan else None
    if provider == "kind":
        from .kind.plan import command_line as kind_command_line

        return kind_command_line(option, plan=plan)
    raise ValueError(f"provider: unknown {provider!r}; accepted: lab, kind, kubeconfig")


def __getattr__(name: str) -> Any:
    # The protocols live in .base, which imports numpy; load it only when asked for.
    if name in {"Cluster", "CpuUsage", "Provider", "RuleCount", "RuleCountPart", "Service"}:
        value = getattr(importlib.import_module(".base", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
