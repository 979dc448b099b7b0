"""The pytest side of reporting: per-test payloads on reports, and the session's outputs.

Per test (on the process that ran it, an xdist worker included), :func:`attach` builds the
payload when the teardown report is made (after the ``dataplane`` fixture took the cluster's
snapshot), puts scalar JUnit properties on the item and the payload on the teardown report
(an attribute, so JUnit XML never shows it); the reports travel to the controller, where a
:class:`ReportSession` gathers them (``pytest_runtest_logreport``) and, at the end, writes the
JSON, the baseline and the plots, compares with a baseline, and prints the table.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from ..errors import PytestDataplaneWarning

if TYPE_CHECKING:
    from ..baseline import Comparison

__all__ = ["ERROR_KEY", "PAYLOAD_KEY", "ReportSession", "attach", "payload_of", "start"]

#: The teardown report's attribute that holds the payload (never written to JUnit XML).
PAYLOAD_KEY: Final = "pytest_dataplane"
#: The attribute of the error that kept a payload from being built.
ERROR_KEY: Final = "pytest_dataplane_error"
_PLUGIN_NAME: Final = "dataplane-report"


# --------------------------------------------------------------------------- per test


def attach(item: pytest.Item, record: Any) -> tuple[str, object] | None:
    """Build the payload of ``item`` from its record and add its JUnit properties to the item.

    Returns the ``(attribute, value)`` to set on the teardown report: the payload, or the
    error that kept it from being built (a bug in summarising is reported at the end of the
    session, never a crash of the run). None when the test produced nothing to report or its
    call phase never ran. The payload's ``outcome`` and ``duration`` are the call phase's.
    """
    outcome = getattr(record, "outcome", None)
    if outcome is None:
        return None
    from . import collect, junit

    callspec = getattr(item, "callspec", None)
    params = getattr(callspec, "params", {}) if callspec is not None else {}
    dataplane = params.get("dataplane")
    dataplane = dataplane if isinstance(dataplane, str) else None
    try:
        payload = collect.build_payload(
            record,
            nodeid=item.nodeid,
            test=collect.test_key(item.nodeid, getattr(callspec, "id", None), dataplane),
            dataplane=dataplane,
        )
    except Exception as exc:  # reported by the session; the test's own outcome stands
        return ERROR_KEY, f"{item.nodeid}: {type(exc).__name__}: {exc}"
    if payload is None:
        return None
    item.user_properties.extend(junit.properties(payload))
    return PAYLOAD_KEY, {
        **payload,
        "outcome": outcome,
        "duration": float(getattr(record, "duration", 0.0)),
    }


def payload_of(report: pytest.TestReport) -> dict[str, Any] | None:
    """The payload a teardown report carries, if any."""
    value = getattr(report, PAYLOAD_KEY, None)
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- session


def _path(config: pytest.Config, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else config.invocation_params.dir / path


def start(session: pytest.Session, option: Any) -> None:
    """Validate the report options and register a :class:`ReportSession` (not on xdist
    workers: their reports are gathered by the controller). ``option(dest)`` resolves an
    option. Bad options raise :class:`pytest.UsageError`."""
    config = session.config
    if hasattr(config, "workerinput") or config.pluginmanager.has_plugin(_PLUGIN_NAME):
        return
    plot_dir = _path(config, option("dataplane_plot"))
    if plot_dir is not None:
        from .plot import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as exc:
            raise pytest.UsageError(str(exc)) from None
        if plot_dir.exists() and not plot_dir.is_dir():
            raise pytest.UsageError(
                f"--dataplane-plot: {plot_dir} exists and is not a directory; "
                "accepted: a directory (created if missing)"
            )
    baseline_path = _path(config, option("dataplane_baseline"))
    baseline = None
    if baseline_path is not None:
        from .document import read

        try:
            baseline = read(baseline_path)
        except ValueError as exc:
            raise pytest.UsageError(f"--dataplane-baseline: {exc}") from None
    config.pluginmanager.register(
        ReportSession(
            config,
            json_path=_path(config, option("dataplane_json")),
            plot_dir=plot_dir,
            baseline_path=baseline_path,
            baseline=baseline,
            save_baseline=_path(config, option("dataplane_save_baseline")),
            force=bool(option("dataplane_baseline_force")),
            provider=option("dataplane_provider"),
            iptables_backend=option("dataplane_iptables_backend"),
        ),
        _PLUGIN_NAME,
    )


class ReportSession:
    """Gathers the payloads of a session and produces its outputs (controller only)."""

    def __init__(
        self,
        config: pytest.Config,
        *,
        json_path: Path | None,
        plot_dir: Path | None,
        baseline_path: Path | None,
        baseline: dict[str, Any] | None,
        save_baseline: Path | None,
        force: bool,
        provider: str | None,
        iptables_backend: str | None,
    ) -> None:
        self.config = config
        self.json_path = json_path
        self.plot_dir = plot_dir
        self.baseline_path = baseline_path
        self.baseline = baseline
        self.save_baseline = save_baseline
        self.force = force
        self.provider = provider
        self.iptables_backend = iptables_backend
        self.payloads: list[dict[str, Any]] = []
        self.comparison: Comparison | None = None
        self.messages: list[str] = []
        self.problems: list[str] = []  # printed at the end, in red
        self.lost_output = False  # a file the user asked for could not be written

    # -- gathering

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        payload = payload_of(report)
        if payload is not None:
            self.payloads.append(payload)
        error = getattr(report, ERROR_KEY, None)
        if error is not None:
            self.problems.append(f"cannot summarise {error}")

    # -- outputs

    def _environment(self) -> dict[str, Any]:
        from .environment import environment

        return environment(
            rootdir=self.config.rootpath,
            provider=self.provider,
            options={"iptables_backend": self.iptables_backend},
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from . import document

        if not (self.payloads or self.json_path or self.save_baseline or self.baseline is not None):
            return
        from .terminal import order

        results = order(self.payloads)
        candidate = document.build(self._environment(), results)
        if self.baseline is not None:
            self._compare(session, self.baseline, candidate)
        if self.save_baseline or self.json_path:
            self.config.hook.pytest_dataplane_update_json(config=self.config, document=candidate)
        for path, doc, what in (
            (self.save_baseline, candidate, "baseline"),
            (self.json_path, self._with_comparison(candidate), "JSON report"),
        ):
            if path is None:
                continue
            try:
                document.write(path, doc)
            except OSError as exc:
                self.problems.append(f"cannot write the {what} to {path}: {exc}")
                self.lost_output = True
            else:
                self.messages.append(f"dataplane {what} ({len(results)} results): {path}")
        if self.plot_dir is not None:
            self._plot(self.plot_dir, results)
        if self.lost_output and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def _with_comparison(self, candidate: dict[str, Any]) -> dict[str, Any]:
        if self.comparison is None:
            return candidate
        from .collect import clean

        return {
            **candidate,
            "baseline": {
                "path": str(self.baseline_path),
                "comparison": clean(self.comparison.to_dict()),
            },
        }

    def _compare(
        self, session: pytest.Session, baseline: dict[str, Any], candidate: dict[str, Any]
    ) -> None:
        from ..baseline import compare

        self.comparison = compare(baseline, candidate, force=self.force, include_missing=False)
        if self.comparison.mismatches:
            message = (
                f"--dataplane-baseline {self.baseline_path}: not compared because the "
                "environments differ in what changes performance (pass "
                "--dataplane-baseline-force to compare anyway): "
                + " | ".join(self.comparison.mismatches)
            )
            try:
                warnings.warn(PytestDataplaneWarning(message), stacklevel=1)
            except PytestDataplaneWarning:
                # The user's warning filters turn warnings into errors: honour that as a
                # failed session instead of a traceback.
                self.problems.append(message)
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.comparison.regressions and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _plot(self, directory: Path, results: list[dict[str, Any]]) -> None:
        from .plot import plot_test

        by_test: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for payload in results:
            by_test[payload["test"]].append(payload)
        written = []
        for test, payloads in by_test.items():
            try:
                path = plot_test(directory, test, payloads)
            except Exception as exc:  # one bad plot must not lose the others
                self.problems.append(f"cannot plot {test}: {type(exc).__name__}: {exc}")
                continue
            if path is not None:
                written.append(path)
        if written:
            self.messages.append(f"dataplane plots ({len(written)}): {directory}")

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        from .terminal import compact_lines, summary_lines

        write = terminalreporter.write_line
        verbosity = int(self.config.option.verbose)
        if self.payloads:
            terminalreporter.write_sep("=", "dataplane summary")
            lines = (
                compact_lines(self.payloads)
                if verbosity < 0
                else summary_lines(self.payloads, verbose=verbosity > 0)
            )
            for line in lines:
                write(line)
        if self.comparison is not None:
            regressions = len(self.comparison.regressions)
            terminalreporter.write_sep(
                "=",
                f"dataplane baseline: {regressions} regression{'s' if regressions != 1 else ''}",
                red=bool(regressions),
                green=not regressions and bool(self.comparison.compared),
                yellow=not regressions and not self.comparison.compared,
            )
            from ..baseline import comparison_lines

            for line in comparison_lines(self.comparison):
                write(line, red=line.startswith("  regression"))
            if regressions:
                # Counted in the final "N passed, ..." line too.
                terminalreporter.stats.setdefault("regressed", []).extend(
                    self.comparison.regressions
                )
        for message in self.messages:
            write(message)
        for problem in self.problems:
            write(f"pytest-dataplane: {problem}", red=True)
