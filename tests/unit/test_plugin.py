"""The plugin's options, ini twins, parametrization by dataplane and the marker."""

from __future__ import annotations

import os

import pytest

COLLECT = ("--collect-only", "-q", "-p", "no:cacheprovider")

TEST_FILE = """
import pytest

def test_any(dataplane):
    pass

@pytest.mark.dataplane("ebpf")
def test_ebpf_only(dataplane):
    pass

def test_plain():
    pass
"""


def test_help_shows_the_dataplane_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "network-performance assertions (pytest-dataplane):",
            "*--dataplane=NAMES*Dataplanes each dataplane test runs on*",
            "*--dataplane-provider=NAME*",
            "*dataplane_names (string):*",
        ]
    )


def test_unknown_dataplane_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("--dataplane=iptables,bogus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--dataplane: unknown dataplane 'bogus'; accepted: iptables, nftables, ipvs, ebpf*"]
    )


def test_unknown_provider_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--dataplane-provider=docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown provider 'docker'; accepted: lab, kind, kubeconfig*"])


def test_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndataplane_min_sync_period = soon\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--dataplane-min-sync-period: cannot parse 'soon'*"])


def test_min_sync_period_beyond_kube_proxys_sync_period_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest("--dataplane-min-sync-period=31s")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*--dataplane-min-sync-period: '31s' is longer than kube-proxy's sync period; "
            "accepted: durations from 0s to 30s*"
        ]
    )


def test_the_removed_lab_engine_option_is_unknown(pytester: pytest.Pytester) -> None:
    # The lab runs real Kubernetes only: the former engine switch is gone.
    result = pytester.runpytest("--dataplane-lab-engine=kube")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --dataplane-lab-engine=kube*"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab's availability probes need root")
def test_parametrized_once_per_selected_dataplane(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("--dataplane=iptables,ebpf", *COLLECT)
    result.stdout.fnmatch_lines(
        [
            "*::test_any[[]iptables[]]",
            "*::test_any[[]ebpf[]]",
            "*::test_ebpf_only[[]ebpf[]]",
            "*::test_plain",
        ],
        consecutive=False,
    )
    result.stdout.no_fnmatch_line("*test_ebpf_only[[]iptables[]]*")


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab's availability probes need root")
def test_default_selection_is_iptables_and_ebpf(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest(*COLLECT)
    result.stdout.fnmatch_lines(["*test_any[[]iptables[]]", "*test_any[[]ebpf[]]"])


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab's availability probes need root")
def test_ini_twin_and_command_line_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST_FILE)
    pytester.makeini("[pytest]\ndataplane_names = nftables\n")
    from_ini = pytester.runpytest(*COLLECT)
    from_ini.stdout.fnmatch_lines(["*test_any[[]nftables[]]"])
    from_ini.stdout.no_fnmatch_line("*test_any[[]iptables[]]*")
    from_cli = pytester.runpytest("--dataplane=iptables", *COLLECT)
    from_cli.stdout.fnmatch_lines(["*test_any[[]iptables[]]"])
    from_cli.stdout.no_fnmatch_line("*test_any[[]nftables[]]*")


def test_restricted_test_is_skipped_when_its_dataplane_is_not_selected(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.dataplane("ebpf")
        def test_ebpf_only(dataplane):
            pass
        """
    )
    result = pytester.runpytest("--dataplane=nftables", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*ebpf not selected (--dataplane=nftables); this test is restricted by "
            "@pytest.mark.dataplane*"
        ]
    )


def test_bad_marker_names_fail_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.dataplane("epbf")
        def test_typo(dataplane):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*@pytest.mark.dataplane: unknown dataplane 'epbf'*"])


@pytest.mark.skipif(os.path.exists("/proc/net/ip_vs"), reason="this kernel has IP_VS")
def test_unavailable_dataplane_is_skipped_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_rollout(dataplane):
            raise AssertionError("must not run")
        """
    )
    result = pytester.runpytest("--dataplane=ipvs", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*ipvs on lab: *IP_VS*/proc/net/ip_vs is missing*modprobe ip_vs*"])


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.dataplane(*names): run this test only on the named dataplanes*"]
    )


def test_plugin_import_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pytest_dataplane.plugin\n"
        "heavy = [m for m in ('numpy', 'scipy', 'pyroute2', 'httpx', 'kubernetes') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_a_provider_s_skip_is_a_skip_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_dataplane import DataplaneSkip, DataplaneUnavailable

        @pytest.fixture
        def no_nodes():
            raise DataplaneSkip("counting rules needs node access: pass --dataplane-node-access")

        def test_in_a_fixture(no_nodes):
            pass

        def test_in_the_test():
            raise DataplaneSkip("service_time needs the lab's backend")

        def test_other_unavailability_stays_an_error():
            raise DataplaneUnavailable("the dataplane's CPU cannot be read")
        """
    )
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*SKIPPED*counting rules needs node access: pass --dataplane-node-access*",
            "*SKIPPED*service_time needs the lab's backend*",
        ]
    )
