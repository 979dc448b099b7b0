"""Providers: where a dataplane lives (lab namespaces, kind clusters, an existing cluster).

:data:`PROVIDERS` is the one list of them: each :class:`ProviderEntry` names its provider, says
where it runs, which plugin options it reads, how it is built, what it checks before anything
is collected and what ``--dataplane-plan`` prints for it. The plugin's option help, its
validation of ``--dataplane-provider``, the provider it builds and its early checks all come
from here; a team adds its own provider with the ``pytest_dataplane_add_providers`` hook
(see :mod:`pytest_dataplane.hookspec`). Entries refer to their code by name and import it
only when used, so that ``pytest --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias

if TYPE_CHECKING:
    from .base import Cluster, CpuUsage, Provider, RuleCount, RuleCountPart, Service

__all__ = [
    "DEFAULT_PROVIDER",
    "PROVIDERS",
    "Cluster",
    "CpuUsage",
    "OptionGetter",
    "Provider",
    "ProviderEntry",
    "ProviderRegistry",
    "RuleCount",
    "RuleCountPart",
    "Service",
    "command_line",
    "make_provider",
]

#: ``option(dest)``: a resolved plugin option (the command line over the ini file over the
#: default), as the plugin hands it to providers.
OptionGetter = Callable[[str], Any]
#: A function given by reference: a callable, or ``"package.module:attribute.path"``.
Ref: TypeAlias = "Callable[..., Any] | str"


def _resolve(ref: Ref) -> Callable[..., Any]:
    if not isinstance(ref, str):
        return ref
    module, _, path = ref.partition(":")
    value: Any = importlib.import_module(module)
    for name in path.split("."):
        value = getattr(value, name)
    if not callable(value):
        raise TypeError(f"{ref} is not callable")
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ProviderEntry:
    """One provider of the registry.

    ``create(option)`` builds the provider (usually its class's ``from_options``);
    ``check(option)``, when given, validates the provider's options before collection and
    raises ValueError naming a bad value; ``plan(option)``, when given, returns what
    ``--dataplane-plan`` prints, touching no cluster (and makes the same checks on the way,
    raising as ``check`` does); a provider without a plan says in
    ``without_plan`` what to use instead. ``options`` are the plugin option destinations the
    provider reads besides the common ones (``dataplane``, ``dataplane_provider``); ``where``
    is the phrase the help text uses. Functions may be given as ``"module:attribute"``
    strings, imported on first use.
    """

    name: str
    where: str
    create: Ref
    options: tuple[str, ...] = ()
    check: Ref | None = None
    plan: Ref | None = None
    without_plan: str = ""

    def build(self, option: OptionGetter) -> Provider:
        """The provider, built from the plugin's resolved options."""
        provider: Provider = _resolve(self.create)(option)
        return provider

    def validate(self, option: OptionGetter) -> None:
        """Check this provider's options before collection (ValueError names a bad value)."""
        if self.check is not None:
            _resolve(self.check)(option)

    def plan_text(self, option: OptionGetter) -> str | None:
        """What ``--dataplane-plan`` prints, or None when this provider has no plan."""
        if self.plan is None:
            return None
        return str(_resolve(self.plan)(option))


def _kind_check(option: OptionGetter) -> None:
    from .kind.plan import command_line as kind_command_line

    kind_command_line(option, plan=False)


def _kind_plan(option: OptionGetter) -> str:
    from .kind.plan import command_line as kind_command_line

    return kind_command_line(option, plan=True) or ""


_KIND_OPTIONS: Final = (
    "cilium_version",
    "kind_image",
    "kind_bin",
    "kind_kubectl_bin",
    "dataplane_keep",
    "dataplane_hubble",
    "dataplane_kind_workers",
    "dataplane_cilium_chart",
    "dataplane_backend_image",
)
_KUBECONFIG_OPTIONS: Final = (
    "dataplane_kubeconfig",
    "dataplane_context",
    "dataplane_allow_background",
    "dataplane_node_access",
    "dataplane_node_address",
    "dataplane_service_type",
    "dataplane_node_image",
    "dataplane_backend_image",
    "dataplane_hubble",
)


class ProviderRegistry(Mapping[str, ProviderEntry]):
    """Provider entries by name, in the order they were added (the built-in ones first)."""

    def __init__(self, entries: tuple[ProviderEntry, ...] = ()) -> None:
        self._entries: dict[str, ProviderEntry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: ProviderEntry) -> None:
        """Add ``entry``; a name that is not a lower-case word or is taken is a ValueError."""
        name = entry.name
        if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
            raise ValueError(
                f"provider name {name!r} is not accepted; accepted: a lower-case word "
                "(letters, digits, _) such as 'eks'"
            )
        if name in self._entries:
            raise ValueError(
                f"provider {name!r} is already registered; registered: {', '.join(self)}"
            )
        self._entries[name] = entry

    def copy(self) -> ProviderRegistry:
        """A registry with the same entries, for a run to extend."""
        return ProviderRegistry(tuple(self._entries.values()))

    def __getitem__(self, name: str) -> ProviderEntry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def parse(self, value: str, *, name: str = "--dataplane-provider") -> str:
        """``value`` as a registered provider's name (case and spaces ignored); ValueError
        naming the value and the registered names otherwise."""
        provider = str(value).strip().lower()
        if provider not in self._entries:
            raise ValueError(
                f"{name}: unknown provider {value!r}; accepted: {', '.join(self._entries)}"
            )
        return provider


#: The name of the provider used when none is chosen.
DEFAULT_PROVIDER: Final = "lab"

#: The built-in providers.
PROVIDERS: Final = ProviderRegistry(
    (
        ProviderEntry(
            "lab",
            "network namespaces on this machine",
            "pytest_dataplane.providers.lab:LabProvider.from_options",
            options=(
                "dataplane_iptables_backend",
                "dataplane_min_sync_period",
            ),
            without_plan="python -m pytest_dataplane doctor shows what it can run here",
        ),
        ProviderEntry(
            "kind",
            "kind clusters in Docker",
            "pytest_dataplane.providers.kind:KindProvider.from_options",
            options=_KIND_OPTIONS,
            check=_kind_check,
            plan=_kind_plan,
        ),
        ProviderEntry(
            "kubeconfig",
            "an existing cluster",
            "pytest_dataplane.providers.kubeconfig:KubeconfigProvider.from_options",
            options=_KUBECONFIG_OPTIONS,
            plan="pytest_dataplane.providers.kubeconfig.provider:plan_text",
        ),
    )
)


def make_provider(
    name: str, option: OptionGetter, *, registry: ProviderRegistry = PROVIDERS
) -> Provider:
    """Build the provider called ``name``; ``option(dest)`` reads a resolved plugin option."""
    return registry[registry.parse(name, name="provider")].build(option)


def command_line(
    option: OptionGetter,
    provider: str,
    *,
    plan: bool,
    registry: ProviderRegistry = PROVIDERS,
) -> str | None:
    """The plugin's early step for ``provider``, before anything is collected: validate its
    options (ValueError names the bad value) and, with ``plan`` (``--dataplane-plan``), return
    what it would do, to be printed. Touches no Docker and no cluster."""
    entry = registry[registry.parse(provider, name="provider")]
    if plan and entry.plan is None:
        planned = [name for name, other in registry.items() if other.plan is not None]
        instead = f" ({entry.without_plan})" if entry.without_plan else ""
        raise ValueError(
            f"--dataplane-plan describes the {' and '.join(planned)} providers; the "
            f"{entry.name} needs no plan{instead}"
        )
    if plan:
        return entry.plan_text(option)  # a plan makes the provider's checks on the way
    entry.validate(option)
    return None


def __getattr__(name: str) -> Any:
    # The protocols live in .base, which imports numpy; load it only when asked for.
    if name in {"Cluster", "CpuUsage", "Provider", "RuleCount", "RuleCountPart", "Service"}:
        value = getattr(importlib.import_module(".base", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
