"""The pytest11 entry point: options, markers, fixtures and hooks. Wiring only.

The option table and :func:`resolve_option` live in ``_options.py``; the hooks a team may
implement in ``hookspec.py``.

Heavy modules (numpy, scipy, providers, the load generator) are imported inside hooks and
fixtures so that ``pytest --help`` and runs that use none of this stay fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from ._options import _BY_DEST, add_options, resolve_option
from .config import DATAPLANES, parse_dataplanes
from .errors import DataplaneSkip
from .providers import PROVIDERS, ProviderRegistry

if TYPE_CHECKING:
    from .providers.base import Cluster, Provider


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspec

    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


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


# A provider says "this cluster has no such thing" with DataplaneSkip (providers do not
# import pytest); raised in a test or one of its fixtures, it is a skip with that reason.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    except DataplaneSkip as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    try:
        return (yield)
    except DataplaneSkip as exc:
        pytest.skip(str(exc))


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
