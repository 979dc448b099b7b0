"""Command line of ``python -m pytest_dataplane``; each command imports its module lazily."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_dataplane",
        description="Tools around the pytest-dataplane plugin.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    doctor = commands.add_parser(
        "doctor", help="Show which dataplanes the lab can run here, and how to fix what is missing"
    )
    doctor.add_argument("--json", action="store_true", help="Print the findings as JSON")
    doctor.add_argument(
        "--kube-bin",
        default=None,
        metavar="DIR",
        help="Report this directory of official Kubernetes binaries instead of the build of kube/",
    )

    cleanup = commands.add_parser(
        "cleanup",
        help="Remove what a killed run left behind (lab namespaces, links, cgroups, BPF pins, "
        "processes)",
    )
    cleanup.add_argument(
        "--prefix",
        default=None,
        help="Only remove the lab objects of this session prefix (default: every lab session)",
    )
    cleanup.add_argument(
        "--dry-run", action="store_true", help="List what would be removed without removing it"
    )
    cleanup.add_argument(
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="Instead of the lab, delete the session namespaces left on the cluster of this "
        "kubeconfig (those labelled app.kubernetes.io/managed-by=pytest-dataplane)",
    )
    cleanup.add_argument(
        "--context",
        default=None,
        metavar="NAME",
        help="Kubeconfig context for --kubeconfig (default: the current context)",
    )

    compare = commands.add_parser(
        "compare",
        help="Compare two saved runs (--dataplane-json / --dataplane-save-baseline files); "
        "exit status 1 on a latency regression",
    )
    compare.add_argument("baseline", help="The reference run (JSON report)")
    compare.add_argument("candidate", help="The run to check against it (JSON report)")
    compare.add_argument(
        "--quantile", type=float, default=95.0, help="Latency percentile compared (default: 95)"
    )
    compare.add_argument(
        "--max-increase",
        default="10%",
        help="Largest tolerated increase of the percentile, as a fraction or percentage "
        "(default: 10%%)",
    )
    compare.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="One-sided error probability of the regression decision (default: 0.01)",
    )
    compare.add_argument(
        "--force",
        action="store_true",
        help="Compare even where the environment fingerprints differ",
    )
    compare.add_argument("--json", action="store_true", help="Print the comparison as JSON")

    lab = commands.add_parser(
        "lab",
        help="Run a real Kubernetes cluster in network namespaces for kubectl "
        '(eval "$(python -m pytest_dataplane lab up)")',
    )
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    lab_up = lab_commands.add_parser(
        "up",
        help="Boot a cluster that keeps running; print export lines (KUBECONFIG, PATH, "
        "DATAPLANE_NETNS) on stdout, progress on stderr",
    )
    lab_up.add_argument(
        "--dataplane",
        default="iptables",
        choices=("iptables", "nftables", "ipvs", "ebpf"),
        help="Service dataplane: kube-proxy's mode, or ebpf (default: iptables)",
    )
    lab_up.add_argument("--nodes", type=int, default=1, help="Number of nodes (default: 1)")
    lab_up.add_argument(
        "--name", default=None, help="Name of the lab, for lab down (default: its prefix)"
    )
    lab_up.add_argument(
        "--kube-bin",
        default=None,
        metavar="DIR",
        help="Run official binaries from this directory instead of the build of kube/",
    )
    lab_up.add_argument(
        "--min-sync-period",
        default=None,
        metavar="DURATION",
        help="kube-proxy's minimum sync period, 0s to 30s, e.g. 250ms (default: its own, 1s)",
    )
    lab_up.add_argument(
        "--iptables-backend",
        default="auto",
        metavar="BACKEND",
        help="iptables binaries kube-proxy runs: auto (what iptables --version reports), "
        "legacy or nft (default: auto)",
    )
    lab_down = lab_commands.add_parser("down", help="Stop a running lab and remove all of it")
    lab_down.add_argument(
        "name", nargs="?", default=None, help="The lab to remove (needed when several run)"
    )
    lab_commands.add_parser("list", help="List the running labs")

    kube = commands.add_parser(
        "kube", help="Build or inspect the Kubernetes binaries the lab runs (the kube/ module)"
    )
    kube_commands = kube.add_subparsers(dest="kube_command", required=True, metavar="ACTION")
    kube_commands.add_parser(
        "build",
        help="Build kube/ into the per-user cache with the go command (reuses an existing build)",
    )
    kube_status = kube_commands.add_parser(
        "status", help="Show the binaries found, their versions and the cached builds"
    )
    kube_status.add_argument(
        "--kube-bin",
        default=None,
        metavar="DIR",
        help="Look in this directory of official binaries instead of the build",
    )
    kube_status.add_argument("--json", action="store_true", help="Print the status as JSON")
    kube_commands.add_parser(
        "where",
        help="Print the directory holding the built components (e.g. for PATH); exit status 1 "
        "if not built",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from .providers.lab import doctor

        return doctor.main(json_output=args.json, kube_bin=args.kube_bin)
    if args.command == "cleanup" and args.kubeconfig is not None:
        from .providers.kubeconfig import cleanup as kube_cleanup

        return kube_cleanup.main(
            kubeconfig=args.kubeconfig, context=args.context, dry_run=args.dry_run
        )
    if args.command == "cleanup" and args.context is not None:
        _parser().error("cleanup: --context needs --kubeconfig")
    if args.command == "cleanup":
        from .providers.lab import cleanup

        return cleanup.main(prefix=args.prefix, dry_run=args.dry_run)
    if args.command == "compare":
        from ._compare import main as compare_main

        return compare_main(
            args.baseline,
            args.candidate,
            quantile=args.quantile,
            max_increase=args.max_increase,
            alpha=args.alpha,
            force=args.force,
            json_output=args.json,
        )
    if args.command == "kube":
        from .providers.lab import kubebin

        return kubebin.main(
            args.kube_command,
            kube_bin=getattr(args, "kube_bin", None),
            json_output=getattr(args, "json", False),
        )
    if args.command == "lab":
        return _lab(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse guards this


def _lab(args: argparse.Namespace) -> int:
    import sys

    from .errors import DataplaneError
    from .providers.lab.kube import updown

    try:
        if args.lab_command == "up":
            return updown.up(
                dataplane=args.dataplane,
                nodes=args.nodes,
                name=args.name,
                kube_bin_dir=args.kube_bin,
                min_sync_period=args.min_sync_period,
                iptables_backend=args.iptables_backend,
            )
        if args.lab_command == "down":
            return updown.down(name=args.name)
        for lab in updown.running_labs():
            state = "running" if lab.alive() else "dead (run: python -m pytest_dataplane cleanup)"
            print(f"{lab.name}\t{lab.dataplane}\t{lab.nodes} node(s)\t{lab.kubeconfig}\t{state}")
        return 0
    except (DataplaneError, ValueError) as exc:
        print(f"lab {args.lab_command}: {exc}", file=sys.stderr)
        return 1
