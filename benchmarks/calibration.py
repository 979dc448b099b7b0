"""How often ``assert_no_regression`` fails when nothing changed, on real lab runs.

Run as root, on demand (not part of the test suite)::

    sudo .venv/bin/python benchmarks/calibration.py collect quiet --cycles 100
    sudo .venv/bin/python benchmarks/calibration.py collect busy --cycles 100
    .venv/bin/python benchmarks/calibration.py analyze            # the table, from saved runs

``collect`` measures, and saves every run's per-request timeline (send time, latency,
outcome) under ``--data`` (default ``/var/tmp/pytest-dataplane-calibration``), so that
``analyze`` can judge any method on the same runs without measuring again.

Settings (one lab cluster each, one backend ``base`` with a lognormal service time of median
4 ms, sigma 0.4, behind a service of 3 pods; open-loop load from the client namespace, the
``fast`` engine, a new connection per request):

* ``quiet``: ebpf, no background services.
* ``busy``: iptables, 5,000 background services of 3 endpoints, and a rollout of ``base``
  between the two runs of every sequential pair (the second run starts once the rollout has
  ended and the dataplane has programmed it, as a test that waits for its rollout would).

Every cycle measures, in this order:

1. ``A``: a run against ``base``;
2. (busy) a rollout of ``base``;
3. ``B``: a run against ``base`` and ``C``: a run against ``slow`` (a second deployment whose
   service time is 15 % longer at every quantile, so its p95 is 15 % higher), in alternating
   order from cycle to cycle;
4. ``duet-aa``: a duet of ``base`` and ``twin`` (a second deployment with the same service
   time), interleaved request by request;
5. ``duet-slow``: a duet of ``base`` and ``slow``.

``A`` vs ``B`` is the sequential A/A pair (its false-fail rate), ``A`` vs ``C`` the sequential
+15 % pair (power); the duets are the paired A/A and +15 % comparisons. The machine's load
average is saved with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DATA = Path("/var/tmp/pytest-dataplane-calibration")
BASE_P50 = 0.004
SIGMA = 0.4
SLOWDOWN = 1.15
SETTLE_TIMEOUT = 300.0  # seconds for kube-proxy to sync a rollout at 5,000 services


def _loadavg() -> float:
    return os.getloadavg()[0]


def _save_result(store: dict[str, Any], key: str, result: Any) -> dict[str, Any]:
    timeline = result.timeline
    store[f"{key}.send"] = np.asarray(timeline.send, np.float64)
    store[f"{key}.latency"] = np.asarray(timeline.latency, np.float32)
    store[f"{key}.lag"] = np.asarray(timeline.lag, np.float32)
    store[f"{key}.outcome"] = np.asarray(timeline.outcome, np.uint8)
    return {
        "start": result.start,
        "completed": result.completed,
        "errors": result.errors,
        "dropped": result.dropped,
        "saturated": bool(result.saturated),
        "saturation_reason": result.saturation_reason,
        "send_lag_p99": result.send_lag_p99,
        "p95": result.percentile(95) if result.completed else None,
        "duet": dict(result.extra.get("duet", {})),
    }


def collect(args: argparse.Namespace) -> int:
    from pytest_dataplane.config import ServiceTime
    from pytest_dataplane.load import duet, run
    from pytest_dataplane.providers.lab import LabProvider
    from pytest_dataplane.providers.lab.doctor import unavailable_reason
    from pytest_dataplane.providers.lab.kube.access import wait_settled

    if os.geteuid() != 0:
        print("benchmarks/calibration.py collect needs root (network namespaces)", file=sys.stderr)
        return 2
    dataplane = "ebpf" if args.setting == "quiet" else "iptables"
    reason = unavailable_reason(dataplane, "auto")
    if reason is not None:
        print(f"{dataplane} is unavailable here: {reason}", file=sys.stderr)
        return 2
    tag = f"-{args.base_p50 * 1e3:g}ms-x{args.slowdown:g}" if args.power_only else ""
    out = args.data / (args.setting + tag)
    out.mkdir(parents=True, exist_ok=True)
    done = sorted(out.glob("cycle-*.npz"))
    first = len(done)
    provider = LabProvider()
    base_time = ServiceTime.lognormal(args.base_p50, SIGMA)
    slow_time = ServiceTime.lognormal(args.base_p50 * args.slowdown, SIGMA)
    try:
        cluster = provider.create(dataplane)
        if args.setting == "busy":
            started = time.monotonic()
            # In chunks: on a loaded 2-core machine one sync of 5,000 new services at once
            # outlasted the lab's 300 s programming wait.
            for first_service in range(0, args.background, 1000):
                count = min(1000, args.background - first_service)
                cluster.add_background_services(count, endpoints=3)
            print(
                f"# {args.background} background services in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
            )
        base = cluster.deploy("base", replicas=3, service_time=base_time)
        twin = cluster.deploy("twin", replicas=3, service_time=base_time)
        slow = cluster.deploy("slow", replicas=3, service_time=slow_time)
        options: dict[str, Any] = {
            "rate": args.rate,
            "duration": args.duration,
            "engine": "fast",
            "netns": base.netns,
            "cgroup": base.cgroup,
        }

        def one(target: Any) -> Any:
            return run(target.url, **options)

        for cycle in range(first, first + args.cycles):
            store: dict[str, Any] = {}
            meta: dict[str, Any] = {
                "setting": args.setting,
                "dataplane": dataplane,
                "cycle": cycle,
                "slowdown": args.slowdown,
                "base_p50": args.base_p50,
                "rate": args.rate,
                "duration": args.duration,
                "background": args.background if args.setting == "busy" else 0,
                "wall": time.time(),
                "runs": {},
            }

            def record(
                key: str,
                measure: Callable[[], Any],
                store: dict[str, Any] = store,
                meta: dict[str, Any] = meta,
            ) -> None:
                load = _loadavg()
                result = measure()
                info = _save_result(store, key, result)
                info["loadavg"] = load
                meta["runs"][key] = info

            record("A", lambda: one(base))
            if args.setting == "busy":
                started = time.monotonic()
                base.rollout(grace="1s")
                # The rollout has ended (its pods are ready, the old ones gone); kube-proxy
                # on every node has synced what it queued.
                wait_settled(cluster.handle, timeout=SETTLE_TIMEOUT)
                meta["rollout_seconds"] = time.monotonic() - started
            order: Iterable[tuple[str, Any]] = (("B", base), ("C", slow))
            if args.power_only:
                order = (("C", slow),)
            if cycle % 2:
                order = reversed(list(order))
            for key, target in order:
                record(key, partial(one, target))
            if not args.no_duet:
                duets = (("duet-aa", twin), ("duet-slow", slow))
                for key, candidate in duets[1:] if args.power_only else duets:
                    load = _loadavg()
                    pair = duet(base.url, candidate.url, **options)
                    for side, result in (("base", pair.baseline), ("cand", pair.candidate)):
                        info = _save_result(store, f"{key}.{side}", result)
                        info["loadavg"] = load
                        meta["runs"][f"{key}.{side}"] = info
            store["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
            np.savez_compressed(out / f"cycle-{cycle:04d}.npz", **store)
            p95 = {k: v["p95"] for k, v in meta["runs"].items()}
            print(
                f"# {args.setting} cycle {cycle}: load {_loadavg():.2f} "
                + " ".join(f"{k}={v * 1e3:.2f}ms" for k, v in p95.items() if v),
                file=sys.stderr,
                flush=True,
            )
    finally:
        provider.close()
    return 0


# --------------------------------------------------------------------------- analysis


def _load_cycles(directory: Path) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    cycles = []
    for path in sorted(directory.glob("cycle-*.npz")):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        meta = json.loads(arrays.pop("meta").tobytes().decode())
        cycles.append((meta, arrays))
    return cycles


def _sample(arrays: dict[str, np.ndarray], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(send offsets, latencies) of the completed requests of run ``key``."""
    ok = arrays[f"{key}.outcome"] == 0
    return arrays[f"{key}.send"][ok], arrays[f"{key}.latency"][ok].astype(np.float64)


def _rate(fails: int, n: int) -> str:
    from pytest_dataplane import stats

    ci = stats.binomial_ci(fails, n, confidence=0.95)
    return f"{ci.estimate:.1%} ({fails}/{n}; 95 % CI {ci.low:.1%}-{ci.high:.1%})"


#: (label, baseline run, candidate run, is it a duet, is it an A/A comparison)
COMPARISONS = (
    ("sequential A/A (after vs before)", "A", "B", False, True),
    ("sequential A/A (before vs after)", "B", "A", False, True),
    ("sequential +15 %", "A", "C", False, False),
    ("duet A/A", "duet-aa.base", "duet-aa.cand", True, True),
    ("duet +15 %", "duet-slow.base", "duet-slow.cand", True, False),
)


def _decide(arrays: dict[str, np.ndarray], left: str, right: str, method: str) -> bool:
    """``assert_no_regression``'s decision (defaults: p95, +10 %, alpha 1 %) by ``method``."""
    from pytest_dataplane import stats

    ta, a = _sample(arrays, left)
    tb, b = _sample(arrays, right)
    kwargs: dict[str, Any] = {"max_increase": 0.10, "alpha": 0.01}
    if method == "iid":
        kwargs["dependence"] = "none"
    elif method == "paired":
        kwargs.update(baseline_times=ta, candidate_times=tb, paired=True)
    return bool(stats.regression_check(a, b, 0.95, **kwargs).regressed)


METHODS = {
    "iid": "exact bootstrap, values independent (before)",
    "windows": "widened for dependence, 10 windows (after)",
    "paired": "paired over 10 shared windows (duet default)",
}


def analyze(args: argparse.Namespace) -> int:
    rows = []
    for directory in sorted(args.data.iterdir(), key=lambda d: (d.name != "quiet", d.name)):
        setting = directory.name
        cycles = _load_cycles(directory) if directory.is_dir() else []
        if not cycles:
            continue
        runs = [run for meta, _ in cycles for run in meta["runs"].values()]
        loads = [run["loadavg"] for run in runs]
        first = cycles[0][0]
        rollouts = [meta["rollout_seconds"] for meta, _ in cycles if "rollout_seconds" in meta]
        print(
            f"\n{setting}: {first['dataplane']}, {first['background']} background services, "
            f"{len(cycles)} cycles, {first['rate']:g} req/s x {first['duration']:g} s per run "
            f"(about {int(first['rate'] * first['duration'])} requests), 1-min load average "
            f"{min(loads):.1f}-{max(loads):.1f} (median {np.median(loads):.1f}) on "
            f"{os.cpu_count()} CPUs"
            + (f", rollouts {np.median(rollouts):.1f} s (median)" if rollouts else "")
        )
        refused = sum(run["saturated"] for run in runs)
        print(f"  runs the saturation guard of their time refused: {refused} of {len(runs)}")
        for label, left, right, duet, _aa in COMPARISONS:
            if not all(f"{key}.send" in cycles[0][1] for key in (left, right)):
                continue
            changes = []
            for _, arrays in cycles:
                a, b = _sample(arrays, left)[1], _sample(arrays, right)[1]
                changes.append(np.quantile(b, 0.95) / np.quantile(a, 0.95) - 1)
            spread = np.asarray(changes)
            print(
                f"  {label}: p95 change median {np.median(spread):+.1%}, "
                f"5-95 % {np.quantile(spread, 0.05):+.1%} .. {np.quantile(spread, 0.95):+.1%}"
            )
            for method in ("iid", "windows", "paired") if duet else ("iid", "windows"):
                fails = sum(_decide(arrays, left, right, method) for _, arrays in cycles)
                rows.append((setting, label, METHODS[method], _rate(fails, len(cycles))))
    print("\n| setting | comparison | method | regression found (A/A: false-fail; +15 %: power) |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="Measure cycles and save their runs")
    c.add_argument("setting", choices=("quiet", "busy"))
    c.add_argument("--cycles", type=int, default=100)
    c.add_argument("--rate", type=float, default=300.0)
    c.add_argument("--duration", type=float, default=3.0)
    c.add_argument("--background", type=int, default=5000)
    c.add_argument("--no-duet", action="store_true", help="Skip the duet runs")
    c.add_argument(
        "--slowdown",
        type=float,
        default=SLOWDOWN,
        help="Service-time factor of the slow deployment (every quantile)",
    )
    c.add_argument(
        "--base-p50",
        type=float,
        default=BASE_P50,
        help="Median service time of base and twin, seconds (default 0.004)",
    )
    c.add_argument(
        "--power-only",
        action="store_true",
        help="Only A, C and the slow duet (saved apart, in SETTING-<P50>ms-x<SLOWDOWN>)",
    )
    sub.add_parser("analyze", help="Judge every method on the saved runs")
    args = parser.parse_args()
    if args.command == "collect":
        return collect(args)
    return analyze(args)


if __name__ == "__main__":
    sys.exit(main())
