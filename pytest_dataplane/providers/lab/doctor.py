"""What the lab can run on this machine, per dataplane, with the fix for what is missing.

Checks are real: a throw-away network namespace is created and each dataplane's kernel
features are exercised in it (a kube-proxy-style nat chain with the statistic match, an
nftables ``numgen`` verdict map), then the namespace is removed.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from functools import cache

from ...config import DATAPLANES
from ...errors import DataplaneError
from . import _proc
from ._session import cgroup2_mount

_APT = "apt-get install iptables nftables iproute2 clang llvm libbpf-dev bpftool"


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, whether it is fine, and how to fix it if not."""

    dataplane: str
    what: str
    ok: bool
    detail: str = ""
    fix: str = ""


def _tool(dataplane: str, name: str, package: str) -> Check:
    path = _proc.which(name)
    return Check(
        dataplane,
        f"{name} on PATH",
        path is not None,
        path or "not found",
        "" if path else f"apt-get install {package}",
    )


def _probe(dataplane: str, what: str, argv: list[str], payload: str, fix: str) -> Check:
    from pyroute2 import netns

    name = f"dplprobe{secrets.token_hex(3)}"
    try:
        netns.create(name)
    except OSError as exc:
        return Check(dataplane, what, False, f"cannot create a network namespace: {exc}", fix)
    try:
        _proc.run(argv, netns=name, input=payload)
        return Check(dataplane, what, True, "works in a fresh network namespace")
    except DataplaneError as exc:
        return Check(dataplane, what, False, str(exc)[:300], fix)
    finally:
        netns.remove(name)


def _common() -> list[Check]:
    checks = [
        Check(
            "all",
            "running as root",
            os.geteuid() == 0,
            f"euid {os.geteuid()}",
            ""
            if os.geteuid() == 0
            else "run pytest as root (e.g. sudo .venv/bin/python -m pytest)",
        ),
        _tool("all", "nsenter", "util-linux"),
        _tool("all", "ip", "iproute2"),
    ]
    try:
        from importlib.metadata import version

        import pyroute2  # noqa: F401

        checks.append(Check("all", "pyroute2 importable", True, version("pyroute2")))
    except ImportError as exc:
        checks.append(Check("all", "pyroute2 importable", False, str(exc), "pip install pyroute2"))
    return checks


def _iptables(backend: str) -> list[Check]:
    checks = [_tool("iptables", f"iptables-{backend}-restore", "iptables")]
    if checks[-1].ok:
        payload = (
            "*nat\n:KUBE-PROBE - [0:0]\n"
            "-A KUBE-PROBE -m statistic --mode random --probability 0.5000000000 -j RETURN\n"
            "-A KUBE-PROBE -p tcp -m tcp -j DNAT --to-destination 10.0.0.1:80\nCOMMIT\n"
        )
        checks.append(
            _probe(
                "iptables",
                f"nat table with statistic match and DNAT ({backend} backend)",
                [f"iptables-{backend}-restore", "--noflush"],
                payload,
                "a kernel with netfilter nat and xt_statistic "
                "(CONFIG_NETFILTER_XT_MATCH_STATISTIC)",
            )
        )
    return checks


def _nftables() -> list[Check]:
    checks = [_tool("nftables", "nft", "nftables")]
    if checks[-1].ok:
        payload = (
            "add table ip probe\nadd chain ip probe a\nadd chain ip probe b\n"
            "add chain ip probe pre { type nat hook prerouting priority -100; }\n"
            "add map ip probe m { type ipv4_addr . inet_proto . inet_service : verdict ; }\n"
            "add rule ip probe pre ip daddr . meta l4proto . th dport vmap @m\n"
            "add rule ip probe a numgen random mod 2 vmap { 0 : goto b, 1 : goto b }\n"
            "add rule ip probe b meta l4proto tcp dnat to 10.0.0.1:80\n"
        )
        checks.append(
            _probe(
                "nftables",
                "nftables nat with verdict maps and numgen",
                ["nft", "-f", "-"],
                payload,
                "a kernel with nf_tables, nft_nat and nft_numgen "
                "(CONFIG_NF_TABLES, CONFIG_NFT_NUMGEN)",
            )
        )
    return checks


def _ebpf() -> list[Check]:
    if cgroup2_mount() is None:
        return [
            Check(
                "ebpf",
                "cgroup v2 mounted",
                False,
                "no cgroup2 entry in /proc/mounts",
                "mount -t cgroup2 none /sys/fs/cgroup/unified (or boot with cgroup v2)",
            )
        ]
    try:
        from .ebpf import ebpf_unavailable_reason
    except ImportError as exc:
        return [
            Check("ebpf", "eBPF load balancer importable", False, str(exc), "reinstall the package")
        ]
    reason = ebpf_unavailable_reason()
    return [
        Check(
            "ebpf",
            "cgroup/connect4 socket load balancer (clang, bpftool, BPF, bpffs)",
            reason is None,
            reason or "ok",
            "" if reason is None else reason,
        )
    ]


def _ipvs() -> list[Check]:
    present = os.path.exists("/proc/net/ip_vs")
    checks = [
        Check(
            "ipvs",
            "kernel IP_VS (/proc/net/ip_vs)",
            present,
            "present" if present else "the kernel has no IP_VS: /proc/net/ip_vs is missing",
            "" if present else "modprobe ip_vs, or use a kernel built with CONFIG_IP_VS",
        )
    ]
    if present:
        # The lab runs kube-proxy in iptables and nftables modes and its eBPF controller;
        # kube-proxy's ipvs mode runs on kind.
        checks.append(
            Check(
                "ipvs",
                "kube-proxy's ipvs mode in the lab",
                False,
                "the lab provider runs no ipvs kube-proxy",
                "run ipvs on kind: --dataplane-provider=kind --dataplane=ipvs",
            )
        )
    return checks


def kube_checks(kube_bin_dir: str | None = None) -> tuple[Check, ...]:
    """Which Kubernetes binaries the lab would run, their versions, and what is missing.

    Looks only (``kubebin.locate``); each found component is run once with ``--version``.
    """
    from . import kubebin

    found: list[Check] = []
    try:
        binaries = kubebin.locate(kube_bin_dir)
    except DataplaneError as exc:
        found.append(
            Check(
                "kube",
                "Kubernetes binaries",
                False,
                str(exc),
                "--dataplane-kube-bin DIR with official binaries"
                if kube_bin_dir
                else kubebin.BUILD_COMMAND,
            )
        )
        if kube_bin_dir is None:
            found.append(_go_check())
        return tuple(found)
    kind, _, where = binaries.source.partition(":")
    found.append(
        Check(
            "kube",
            "Kubernetes binaries",
            True,
            f"{'cached build' if kind == 'built' else 'directory'} {where}",
        )
    )
    for component in kubebin.COMPONENTS:
        if component == "kubectl" and binaries.kubectl_dir is None:
            found.append(
                Check(
                    "kube",
                    "kubectl",
                    False,
                    f"no kubectl in {where} (the lab runs without it)",
                    f"add a kubectl there, or use the build ({kubebin.BUILD_COMMAND})",
                )
            )
            continue
        version = binaries.version(component)
        found.append(
            Check(
                "kube",
                component,
                version is not None,
                version or f"{binaries.argv(component)[0]} gave no version",
                "" if version else f"rebuild ({kubebin.BUILD_COMMAND}) or replace the binary",
            )
        )
    return tuple(found)


def _go_check() -> Check:
    from .kubebin import find_go

    try:
        go = find_go()
    except DataplaneError as exc:
        return Check("kube", "Go toolchain to build kube/", False, str(exc), "https://go.dev/dl/")
    return Check("kube", "Go toolchain to build kube/", True, go)


@cache
def checks(dataplane: str, iptables_backend: str = "auto") -> tuple[Check, ...]:
    """Every check that decides whether ``dataplane`` can run here (cached per process)."""
    if dataplane not in DATAPLANES:
        raise ValueError(f"dataplane: unknown {dataplane!r}; accepted: {', '.join(DATAPLANES)}")
    found = _common()
    if not all(c.ok for c in found):
        return tuple(found)
    if dataplane == "iptables":
        backend = iptables_backend
        if backend == "auto":
            from .kube.lab import detect_iptables_backend

            try:
                backend = detect_iptables_backend()
            except DataplaneError as exc:
                return (*found, Check("iptables", "iptables --version", False, str(exc), _APT))
        found += _iptables(backend)
    elif dataplane == "nftables":
        found += _nftables()
    elif dataplane == "ebpf":
        found += _ebpf()
    else:
        found += _ipvs()
    return tuple(found)


def unavailable_reason(dataplane: str, iptables_backend: str = "auto") -> str | None:
    """None when ``dataplane`` can run in the lab here, else what is missing and the fix."""
    for check in checks(dataplane, iptables_backend):
        if not check.ok:
            fix = f" (fix: {check.fix})" if check.fix else ""
            return f"{check.what}: {check.detail}{fix}"
    return None


def main(*, json_output: bool = False, kube_bin: str | None = None) -> int:
    """``python -m pytest_dataplane doctor``: print findings; exit 0 if any dataplane runs.

    A dataplane runs when its own checks pass and the Kubernetes binaries (under ``kube``) are
    found and answer: every lab cluster runs them. kubectl is reported but optional.
    """
    results = {dp: checks(dp) for dp in DATAPLANES}
    kube = kube_checks(kube_bin)
    if json_output:
        print(
            json.dumps(
                {
                    name: [asdict(c) for c in found]
                    for name, found in {**results, "kube": kube}.items()
                },
                indent=2,
            )
        )
    else:
        for dataplane, found in {**results, "kube": kube}.items():
            ok = all(c.ok for c in found)
            label = (
                ("found" if kube[0].ok else "NOT FOUND")
                if dataplane == "kube"
                else ("available" if ok else "UNAVAILABLE")
            )
            print(f"{dataplane:9} {label}")
            for check in found:
                mark = "ok " if check.ok else "NO "
                print(f"    {mark} {check.what}: {check.detail}")
                if not check.ok and check.fix:
                    print(f"        fix: {check.fix}")
    kube_ok = all(c.ok for c in kube if c.what != "kubectl")
    return 0 if kube_ok and any(all(c.ok for c in found) for found in results.values()) else 1
