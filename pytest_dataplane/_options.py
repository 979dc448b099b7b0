"""The plugin's options: one table of command-line flags with their ini twins, defaults and
parsers, and :func:`resolve_option`, where the command line wins over the ini file.

Kept apart from ``plugin.py`` (the hooks and fixtures) because the table is long and changes
for reasons of its own (a provider's new setting, a help text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from .config import DATAPLANES, parse_dataplanes, parse_duration, parse_kube_bin
from .providers import DEFAULT_PROVIDER, PROVIDERS

# The providers' defaults, written once where the providers use them (cheap modules: their
# packages import their providers lazily).
from .providers.k8s.resources import AGNHOST_IMAGE
from .providers.kind.config import DEFAULT_CILIUM_CHART, DEFAULT_WORKERS
from .providers.kind.versions import DEFAULT_CILIUM_VERSION
from .providers.kubeconfig.agent import AGENT_IMAGE

__all__ = ["add_options", "resolve_option"]


def _parse_choice(choices: tuple[str, ...], flag: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{flag}: unknown value {value!r}; accepted: {', '.join(choices)}")
        return value

    return parse


def _parse_bool(flag: str) -> Callable[[object], bool]:
    def parse(value: object) -> bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{flag}: {value!r} is not a boolean; accepted: true, false")

    return parse


def _parse_min_sync_period(value: float | str) -> float:
    # kube-proxy refuses a minimum sync period longer than its sync period.
    from .providers.lab.kube.plan import MAX_MIN_SYNC_PERIOD

    flag = "--dataplane-min-sync-period"
    seconds = parse_duration(value, name=flag)
    if seconds > MAX_MIN_SYNC_PERIOD:
        raise ValueError(
            f"{flag}: {value!r} is longer than kube-proxy's sync period; accepted: durations "
            f"from 0s to {MAX_MIN_SYNC_PERIOD:g}s"
        )
    return seconds


@dataclass(frozen=True)
class _Option:
    flag: str | None  # None: ini only (the flag belongs to another plugin)
    dest: str
    ini: str
    help: str
    default: Any = None
    parse: Callable[[Any], Any] | None = None
    flag_kind: str = "value"  # "value" or "flag" (store_true)
    metavar: str | None = None
    foreign_dest: str | None = None  # with flag None: the other plugin's dest for the CLI value


_OPTIONS: tuple[_Option, ...] = (
    _Option(
        "--dataplane",
        "dataplane",
        "dataplane_names",
        "Dataplanes each dataplane test runs on: comma-separated "
        f"{', '.join(DATAPLANES)}, or all (default: iptables,ebpf)",
        "iptables,ebpf",
        parse_dataplanes,
        metavar="NAMES",
    ),
    _Option(
        "--dataplane-provider",
        "dataplane_provider",
        "dataplane_provider",
        f"Where dataplanes run: {', '.join(PROVIDERS)} (default: {DEFAULT_PROVIDER}, "
        f"{PROVIDERS[DEFAULT_PROVIDER].where}); a conftest may add more "
        "(pytest_dataplane_add_providers)",
        DEFAULT_PROVIDER,
        # Checked against the run's registry, which hooks may extend: _provider_registry.
        lambda value: str(value).strip().lower(),
        metavar="NAME",
    ),
    _Option(
        "--dataplane-iptables-backend",
        "dataplane_iptables_backend",
        "dataplane_iptables_backend",
        "iptables backend of the lab's iptables dataplane: auto (what iptables --version "
        "reports), legacy or nft (default: auto)",
        "auto",
        _parse_choice(("auto", "legacy", "nft"), "--dataplane-iptables-backend"),
        metavar="BACKEND",
    ),
    _Option(
        "--dataplane-min-sync-period",
        "dataplane_min_sync_period",
        "dataplane_min_sync_period",
        "Shortest interval between syncs of the lab's kube-proxy dataplanes, kube-proxy's "
        "--min-sync-period, 0s to 30s (default: 1s; ebpf applies changes at once)",
        "1s",
        _parse_min_sync_period,
        metavar="DURATION",
    ),
    _Option(
        "--dataplane-kube-bin",
        "dataplane_kube_bin",
        "dataplane_kube_bin",
        "Directory of official Kubernetes binaries (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler, kube-proxy) for the lab to run instead of "
        "the build of kube/ (default: that build, see python -m pytest_dataplane kube build)",
        parse=parse_kube_bin,
        metavar="DIR",
    ),
    # -- load options (anchor: load generator) --
    _Option(
        "--dataplane-load-engine",
        "dataplane_load_engine",
        "dataplane_load_engine",
        "Engine of the load fixture's runs: fast (lean HTTP/1.1, a third of httpx's CPU per "
        "request) or httpx (HTTP/1.1, HTTP/2, TLS) (default: fast)",
        "fast",
        _parse_choice(("httpx", "fast"), "--dataplane-load-engine"),
        metavar="ENGINE",
    ),
    # -- report options (anchor: reporting) --
    _Option(
        "--dataplane-json",
        "dataplane_json",
        "dataplane_json",
        "Write every result with the environment fingerprint to this JSON file",
        metavar="PATH",
    ),
    _Option(
        "--dataplane-plot",
        "dataplane_plot",
        "dataplane_plot",
        "Write a latency-over-time PNG per test into this directory (needs the plot extra)",
        metavar="DIR",
    ),
    _Option(
        "--dataplane-baseline",
        "dataplane_baseline",
        "dataplane_baseline",
        "Compare each test x dataplane with this saved run; a regression fails the session",
        metavar="PATH",
    ),
    _Option(
        "--dataplane-save-baseline",
        "dataplane_save_baseline",
        "dataplane_save_baseline",
        "Save this run's results as a baseline to this JSON file",
        metavar="PATH",
    ),
    _Option(
        "--dataplane-baseline-force",
        "dataplane_baseline_force",
        "dataplane_baseline_force",
        "Compare with the baseline even where the environment fingerprints differ",
        False,
        _parse_bool("--dataplane-baseline-force"),
        flag_kind="flag",
    ),
    # -- kind options (anchor: kind provider) --
    # Version strings are validated by the kind provider (the plugin's pytest_cmdline_main
    # runs that before collection), so this module imports only the default.
    _Option(
        "--cilium-version",
        "cilium_version",
        "dataplane_cilium_version",
        "Cilium release installed for ebpf on kind, MAJOR.MINOR.PATCH from 1.14 to 1.18 "
        f"(default: {DEFAULT_CILIUM_VERSION})",
        DEFAULT_CILIUM_VERSION,
        metavar="VERSION",
    ),
    _Option(
        None,
        "kind_image",
        "dataplane_kind_image",
        "Node image of kind clusters, e.g. kindest/node:v1.31.2 (default: the kind binary's "
        "default); on the command line this is pytest-kind's --kind-image",
        foreign_dest="kind_image",
    ),
    _Option(
        None,
        "kind_bin",
        "dataplane_kind_bin",
        "Path of the kind binary to run instead of the one on PATH; on the command line this "
        "is pytest-kind's --kind-bin",
        foreign_dest="kind_bin",
    ),
    _Option(
        None,
        "kind_kubectl_bin",
        "dataplane_kind_kubectl_bin",
        "Path of the kubectl binary to run instead of the one on PATH; on the command line "
        "this is pytest-kind's --kind-kubectl-bin",
        foreign_dest="kind_kubectl_bin",
    ),
    _Option(
        "--dataplane-keep",
        "dataplane_keep",
        "dataplane_keep",
        "Keep kind clusters after the session; a later run with the same configuration reuses them",
        False,
        _parse_bool("--dataplane-keep"),
        flag_kind="flag",
    ),
    _Option(
        "--dataplane-plan",
        "dataplane_plan",
        "dataplane_plan",
        "Print what the kind provider would do for each selected dataplane (kind config, "
        "Helm command, images, steps) and exit without running anything",
        False,
        _parse_bool("--dataplane-plan"),
        flag_kind="flag",
    ),
    _Option(
        "--dataplane-hubble",
        "dataplane_hubble",
        "dataplane_hubble",
        "Turn Hubble on in Cilium clusters and attach its flows to failed tests",
        False,
        _parse_bool("--dataplane-hubble"),
        flag_kind="flag",
    ),
    _Option(
        "--dataplane-kind-workers",
        "dataplane_kind_workers",
        "dataplane_kind_workers",
        f"Worker nodes of each kind cluster, 0 to 10 (default: {DEFAULT_WORKERS})",
        str(DEFAULT_WORKERS),
        metavar="N",
    ),
    _Option(
        "--dataplane-cilium-chart",
        "dataplane_cilium_chart",
        "dataplane_cilium_chart",
        "Cilium Helm chart: a local directory or .tgz for offline runs, or repo/chart "
        f"(default: {DEFAULT_CILIUM_CHART} from Cilium's chart repository)",
        DEFAULT_CILIUM_CHART,
        metavar="CHART",
    ),
    _Option(
        "--dataplane-backend-image",
        "dataplane_backend_image",
        "dataplane_backend_image",
        "Image of the test backends on kind and existing clusters, run as agnhost netexec "
        f"(default: {AGNHOST_IMAGE})",
        AGNHOST_IMAGE,
        metavar="IMAGE",
    ),
    # -- kubeconfig options (anchor: kubeconfig provider) --
    _Option(
        "--dataplane-kubeconfig",
        "dataplane_kubeconfig",
        "dataplane_kubeconfig",
        "Kubeconfig of the existing cluster for --dataplane-provider=kubeconfig (default: "
        "$KUBECONFIG, then ~/.kube/config)",
        metavar="PATH",
    ),
    _Option(
        "--dataplane-context",
        "dataplane_context",
        "dataplane_context",
        "Kubeconfig context of the existing cluster (default: the current context)",
        metavar="NAME",
    ),
    _Option(
        "--dataplane-allow-background",
        "dataplane_allow_background",
        "dataplane_allow_background",
        "Allow add_background_services() on an existing, possibly shared, cluster",
        False,
        _parse_bool("--dataplane-allow-background"),
        flag_kind="flag",
    ),
    _Option(
        "--dataplane-node-access",
        "dataplane_node_access",
        "dataplane_node_access",
        "Run a privileged DaemonSet in the session namespace of an existing cluster to read "
        "rules and CPU on its nodes",
        False,
        _parse_bool("--dataplane-node-access"),
        flag_kind="flag",
    ),
    _Option(
        "--dataplane-node-address",
        "dataplane_node_address",
        "dataplane_node_address",
        "Address of an existing cluster's node that this host reaches NodePorts on (default: "
        "a node's ExternalIP, else InternalIP)",
        metavar="ADDRESS",
    ),
    _Option(
        "--dataplane-service-type",
        "dataplane_service_type",
        "dataplane_service_type",
        "How tests reach services on an existing cluster: NodePort or LoadBalancer "
        "(default: NodePort)",
        "NodePort",
        _parse_choice(("NodePort", "LoadBalancer"), "--dataplane-service-type"),
        metavar="TYPE",
    ),
    _Option(
        "--dataplane-node-image",
        "dataplane_node_image",
        "dataplane_node_image",
        f"Image of the node-access DaemonSet; it needs nsenter and sh (default: {AGENT_IMAGE})",
        AGENT_IMAGE,
        metavar="IMAGE",
    ),
)
_BY_DEST = {option.dest: option for option in _OPTIONS}


def add_options(parser: pytest.Parser) -> None:
    """Add every option (in the ``dataplane`` group) and its ini twin to ``parser``."""
    group = parser.getgroup("dataplane", "network-performance assertions (pytest-dataplane)")
    for option in _OPTIONS:
        if option.flag is not None:
            if option.flag_kind == "flag":
                group.addoption(
                    option.flag,
                    dest=option.dest,
                    action="store_true",
                    default=None,
                    help=option.help,
                )
            else:
                group.addoption(
                    option.flag,
                    dest=option.dest,
                    action="store",
                    default=None,
                    metavar=option.metavar,
                    help=option.help,
                )
        parser.addini(
            option.ini,
            help=f"{option.help} [ini twin of {option.flag}]" if option.flag else option.help,
            default="",
        )


def resolve_option(config: pytest.Config, dest: str) -> Any:
    """The value of a plugin option: the command line wins over the ini file, then the default.

    Values are parsed and validated here; a bad one raises :class:`pytest.UsageError` naming
    the value and what is accepted.
    """
    option = _BY_DEST[dest]
    cli_dest = dest if option.flag else option.foreign_dest
    value = config.getoption(cli_dest, None) if cli_dest else None
    if value is None:
        value = config.getini(option.ini)
        if value in (None, "", []):
            value = option.default
    if option.parse is not None and value is not None:
        try:
            value = option.parse(value)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    return value
