"""The header line naming the provider, the selected dataplanes and the kernel."""

from __future__ import annotations

import platform

import pytest

TEST_FILE = """
def test_plain():
    pass
"""


def test_header_names_provider_dataplanes_and_kernel(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest(
        "--dataplane=nftables,ipvs", "--dataplane-provider=lab", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"dataplane: provider lab, dataplanes nftables,ipvs, kernel {platform.release()}"]
    )


def test_header_follows_the_ini_selection(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndataplane_names = ebpf\ndataplane_provider = kind\n")
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["dataplane: provider kind, dataplanes ebpf, kernel *"])


def test_no_header_when_the_plugin_is_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(TEST_FILE)
    result = pytester.runpytest("-p", "no:dataplane", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("dataplane: *")
