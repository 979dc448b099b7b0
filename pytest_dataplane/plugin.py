"""The pytest11 entry point: options, markers, fixtures and hooks. Wiring only.

Heavy modules (numpy, scipy, providers, the load generator) are imported inside hooks and
fixtures so that ``pytest --help`` and runs that use none of this stay fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .config import (
    DATAPLANES,
    parse_dataplanes,
    parse_duration,
    parse_kube_bin,
)
from .providers import DEFAULT_PROVIDER, PROVIDERS, ProviderRegistry

if TYPE_CHECKING:
    from .providers.base import Cluster, Provider


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
        "--min-sync-period (default: 1s; ebpf applies changes at once)",
        "1s",
        lambda value: parse_duration(value, name="--dataplane-min-sync-period"),
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
    # Version strings are validated by the kind provider (pytest_cmdline_main below runs that
    # before collection), so this module imports none of it.
    _Option(
        "--cilium-version",
        "cilium_version",
        "dataplane_cilium_version",
        "Cilium release installed for ebpf on kind, MAJOR.MINOR.PATCH from 1.14 to 1.18 "
        "(default: 1.16.12)",
        "1.16.12",
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
        "Worker nodes of each kind cluster, 0 to 10 (default: 1)",
        "1",
        metavar="N",
    ),
    _Option(
        "--dataplane-cilium-chart",
        "dataplane_cilium_chart",
        "dataplane_cilium_chart",
        "Cilium Helm chart: a local directory or .tgz for offline runs, or repo/chart "
        "(default: cilium from Cilium's chart repository)",
        "cilium",
        metavar="CHART",
    ),
    _Option(
        "--dataplane-backend-image",
        "dataplane_backend_image",
        "dataplane_backend_image",
        "Image of the test backends on kind and existing clusters, run as agnhost netexec "
        "(default: registry.k8s.io/e2e-test-images/agnhost:2.53)",
        "registry.k8s.io/e2e-test-images/agnhost:2.53",
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
        "Image of the node-access DaemonSet; it needs nsenter and sh (default: "
        "registry.k8s.io/e2e-test-images/busybox:1.36.1-1)",
        "registry.k8s.io/e2e-test-images/busybox:1.36.1-1",
        metavar="IMAGE",
    ),
)
_BY_DEST = {option.dest: option for option in _OPTIONS}


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
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


_REGISTRY = pytest.StashKey[ProviderRegistry]()


def _provider_registry(config: pytest.Config) -> ProviderRegistry:
    """The run's providers: the built-in ones and those conftests add, once per run."""
    registry = config.stash.get(_REGISTRY, None)
    if registry is None:
        registry = PROVIDERS.copy()
        try:
            config.hook.pytest_dataplane_add_providers(config=config, registry=registry)
        except ValueError as exc:
            raise pytest.UsageError(f"pytest_dataplane_add_providers: {exc}") from None
        config.stash[_REGISTRY] = registry
    return registry


def _provider_name(config: pytest.Config) -> str:
    try:
        return _provider_registry(config).parse(resolve_option(config, "dataplane_provider"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


@dataclass
class _State:
    config: pytest.Config
    dataplanes: tuple[str, ...]
    provider_name: str
    registry: ProviderRegistry
    _provider: Provider | None = None
    _availability: dict[str, str | None] = field(default_factory=dict)

    def option(self, dest: str) -> Any:
        return resolve_option(self.config, dest)

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            self._provider = self.registry[self.provider_name].build(self.option)
        return self._provider

    def availability(self, dataplane: str) -> str | None:
        if dataplane not in self._availability:
            self._availability[dataplane] = self.provider.availability(dataplane)
        return self._availability[dataplane]

    def close(self) -> None:
        if self._provider is not None:
            self._provider.close()
            self._provider = None


_STATE = pytest.StashKey[_State]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "dataplane(*names): run this test only on the named dataplanes "
        f"({', '.join(DATAPLANES)}) among those selected with --dataplane",
    )
    config.addinivalue_line(
        "markers",
        "kind: end-to-end test that needs a real kind cluster (docker, kind, kubectl, helm)",
    )
    config.addinivalue_line(
        "markers",
        "kubeconfig: end-to-end test that needs an existing cluster reachable by kubeconfig",
    )
    for dest in _BY_DEST:
        resolve_option(config, dest)  # a bad value stops the run here, with the reason
    config.stash[_STATE] = _State(
        config=config,
        dataplanes=resolve_option(config, "dataplane"),
        provider_name=_provider_name(config),
        registry=_provider_registry(config),
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None:
        state.close()


def pytest_report_header(config: pytest.Config) -> str | None:
    """One header line: the provider, the selected dataplanes and the kernel they run on."""
    state = config.stash.get(_STATE, None)
    if state is None:
        return None  # not configured by this plugin (disabled, or configure never ran)
    import platform

    return (
        f"dataplane: provider {state.provider_name}, dataplanes {','.join(state.dataplanes)}, "
        f"kernel {platform.release()}"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "dataplane" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if "dataplane" in names:
            return  # the test parametrizes "dataplane" itself; leave it alone
    state = metafunc.config.stash[_STATE]
    marker = metafunc.definition.get_closest_marker("dataplane")
    allowed = (
        parse_dataplanes(marker.args, name="@pytest.mark.dataplane")
        if marker is not None and marker.args
        else None
    )
    chosen = [name for name in state.dataplanes if allowed is None or name in allowed]
    params = []
    for name in chosen:
        reason = state.availability(name)
        marks = (
            [pytest.mark.skip(reason=f"{name} on {state.provider_name}: {reason}")]
            if reason
            else []
        )
        params.append(pytest.param(name, id=name, marks=marks))
    if not params and allowed is not None:
        selected = ",".join(state.dataplanes)
        params = [
            pytest.param(
                name,
                id=name,
                marks=[
                    pytest.mark.skip(
                        reason=f"{name} not selected (--dataplane={selected}); "
                        "this test is restricted by @pytest.mark.dataplane"
                    )
                ],
            )
            for name in allowed
        ]
    metafunc.parametrize("dataplane", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def dataplane(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A cluster running the dataplane this test instance is parametrized with.

    One cluster per dataplane per session (tests are grouped by dataplane); what a test
    creates is removed after it. Select dataplanes with ``--dataplane``, the provider with
    ``--dataplane-provider``, restrict a test with ``@pytest.mark.dataplane("ebpf")``.
    """
    name = getattr(request, "param", None)
    if name is None:
        raise pytest.UsageError(
            "the dataplane fixture is parametrized by pytest-dataplane; request it from a test "
            "function (not from another fixture's params)"
        )
    state = request.config.stash[_STATE]
    cluster = state.provider.create(name)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(autouse=True)
def _dataplane_test_scope(request: pytest.FixtureRequest) -> Iterator[None]:
    if "dataplane" not in request.fixturenames:
        yield
        return
    from . import _collect

    cluster = request.getfixturevalue("dataplane")
    _collect.record_cluster(cluster)
    yield
    try:
        _snapshot_after_test(request.config, cluster)
    finally:
        cluster.reset()


def _snapshot_after_test(config: pytest.Config, cluster: Cluster) -> None:
    # One reading of the cluster's figures per test, for the report (which never calls a
    # cluster). Here, in the fixture's teardown, a provider's failure becomes one error of
    # the test's teardown, with its cause, and the test's own outcome stands.
    from . import _collect, _snapshot

    record = _collect.current()
    if record is None or record.outcome is None:
        return  # the test never ran (its setup failed): nothing to report on
    snapshot, error = _snapshot.take(cluster, unavailable_errors=(pytest.skip.Exception,))
    facts = dict(snapshot.fingerprint or {})
    config.hook.pytest_dataplane_update_fingerprint(
        config=config, dataplane=snapshot.name, provider=snapshot.provider, fingerprint=facts
    )
    if facts != dict(snapshot.fingerprint or {}):
        snapshot = dataclasses.replace(snapshot, fingerprint=facts)
    record.snapshots.append(snapshot)
    if error is not None:
        raise error


def pytest_runtest_setup(item: pytest.Item) -> None:
    from . import _collect

    _collect.begin()


# -- load fixture (anchor: load generator) --
if TYPE_CHECKING:
    from .load import LoadFactory


@pytest.fixture
def load(request: pytest.FixtureRequest) -> Iterator[LoadFactory]:
    """Run HTTP load in the background while the test acts on the system under test.

    ``with load(service_or_url, rate=300, duration="30s") as run: ...`` starts an open-loop
    run (latency measured from each request's intended send time) and returns once it is
    sending; leaving the block waits for the schedule to end; ``run.result`` is the
    LoadResult and ``run.mark("scale")`` records an event. Keyword arguments are those of
    ``pytest_dataplane.load.run``; the engine defaults to ``--dataplane-load-engine``.
    """
    from .load import LoadFactory

    factory = LoadFactory(
        defaults={"engine": resolve_option(request.config, "dataplane_load_engine")}
    )
    try:
        yield factory
    finally:
        factory.close()


# -- report hooks (anchor: reporting) --


def pytest_sessionstart(session: pytest.Session) -> None:
    from .report.session import start

    start(session, lambda dest: resolve_option(session.config, dest))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # The call report gives the record its outcome; the teardown report carries the payload,
    # built once the dataplane fixture has added the cluster's snapshot, and closes the record.
    from . import _collect

    record = _collect.current()
    attached = None
    if call.when == "teardown" and record is not None and (record.results or record.snapshots):
        from .report.session import attach

        attached = attach(item, record)
    outcome: Any = yield
    report = outcome.get_result()
    if call.when == "call" and record is not None:
        record.outcome, record.duration = report.outcome, float(report.duration)
    elif call.when == "teardown":
        if attached is not None:
            setattr(report, *attached)
        _collect.finish()


# -- kind hooks (anchor: kind provider) --


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--dataplane-plan``: print what the kind (or kubeconfig) provider would do and exit 0
    without touching Docker or a cluster. Without it, refuse kind settings that cannot work
    (a malformed Cilium version, nftables on Kubernetes < 1.31) before anything is collected."""
    if config.option.help or config.option.version:
        return None
    plan = resolve_option(config, "dataplane_plan")
    provider = _provider_name(config)
    registry = _provider_registry(config)
    if not plan and registry[provider].check is None:
        return None
    from .providers import command_line

    try:
        text = command_line(
            lambda dest: resolve_option(config, dest), provider, plan=plan, registry=registry
        )
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if text is None:
        return None
    import sys

    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A failed test on kind or an existing cluster gets what helps explain it (events, the
    # dataplane agent's logs, hubble flows) as report sections. tryfirst: before the terminal,
    # JUnit and xdist see the report; the test's record is still open during its call phase.
    if report.when != "call" or not report.failed:
        return
    from . import _collect

    record = _collect.current()
    for cluster in record.clusters if record is not None else ():
        diagnostics = getattr(cluster, "diagnostics", None)
        if diagnostics is None:
            continue
        try:
            sections = diagnostics()
        except Exception as exc:  # a broken cluster must not hide the test's own failure
            sections = [("diagnostics", f"unavailable: {type(exc).__name__}: {exc}")]
        for title, text in sections:
            report.sections.append((f"dataplane {cluster.name}: {title}", text))
