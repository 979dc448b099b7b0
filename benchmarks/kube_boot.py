"""Boot time of a lab Kubernetes cluster, per phase.

Run as root, on demand (not part of the test suite), once the binaries are built
(``python -m pytest_dataplane kube build``)::

    sudo .venv/bin/python benchmarks/kube_boot.py [--runs 3] [--nodes 1] [--dataplane iptables]

Each run boots a cluster with :class:`KubeLab` (credentials, namespaces, etcd, the API server
ready, controller-manager and scheduler healthy, every Node Ready, kube-proxy's first sync
done), then stops it and times the stop too. Prints each run's phases and the median; the
"reference" row is the same machine's cost of starting and stopping the API server's
binary with ``--version`` (the floor of any boot: loading the program), measured in the same
run so that a busy machine shows as a busy machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from pytest_dataplane.providers.lab.kube.lab import KubeLab
from pytest_dataplane.providers.lab.kubebin import locate

PHASES = ("pki", "network", "etcd", "apiserver", "control_plane", "components", "boot", "stop")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--dataplane", default="iptables")
    args = parser.parse_args()
    binaries = locate()
    reference = []
    for _ in range(args.runs):
        began = time.monotonic()
        subprocess.run(
            [*binaries.argv("kube-apiserver"), "--version"], check=True, capture_output=True
        )
        reference.append(time.monotonic() - began)
    rows = []
    for run in range(args.runs):
        lab = KubeLab(dataplane=args.dataplane, nodes=args.nodes)
        lab.start()
        began = time.monotonic()
        lab.stop()
        timings = {**lab.timings, "stop": time.monotonic() - began}
        rows.append(timings)
        shown = "  ".join(f"{k}={timings.get(k, float('nan')):.2f}" for k in PHASES)
        print(f"run {run + 1}: {shown}", flush=True)
    print(
        f"median boot {statistics.median(r['boot'] for r in rows):.2f} s, stop "
        f"{statistics.median(r['stop'] for r in rows):.2f} s ({args.nodes} node(s), "
        f"{args.dataplane}); reference `kube-apiserver --version` "
        f"{statistics.median(reference):.3f} s; ratio boot/reference "
        f"{statistics.median(r['boot'] for r in rows) / statistics.median(reference):.0f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
