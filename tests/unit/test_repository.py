"""The repository keeps its promises: the README's commands are the ones that run, and every
option is documented."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_dataplane._options import _OPTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _console_commands() -> list[str]:
    return re.findall(r"```console\n(.*?)\n```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    commands = _console_commands()
    test_command = commands[1]
    assert test_command == "bash scripts/setup.sh && .venv/bin/python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    assert any(line.startswith("bash scripts/setup.sh") for line in ci)


def test_readme_main_job_runs_the_examples_on_three_dataplanes() -> None:
    main_job = _console_commands()[0]
    assert main_job.startswith("bash scripts/setup.sh && ")
    assert "pytest examples/ --dataplane=iptables,nftables,ebpf" in main_job


def test_setup_installs_what_the_lab_needs() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for package in (
        "iptables",
        "nftables",
        "iproute2",
        "clang",
        "llvm",
        "libbpf-dev",
        "bpftool",
        "wrk",
        "python3-venv",
    ):
        assert re.search(rf"\b{re.escape(package)}\b", setup), package
    assert "pip install -q -e '.[test]'" in setup


def test_every_option_is_in_the_readme() -> None:
    for option in _OPTIONS:
        assert f"`{option.ini}`" in README, option.ini
        flag = option.flag or f"--{option.foreign_dest.replace('_', '-')}"
        assert flag in README, flag
