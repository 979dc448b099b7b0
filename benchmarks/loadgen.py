"""Benchmark of the load generator's engines against wrk, on the same server and cores.

Usage (root not needed)::

    python benchmarks/loadgen.py            # ~3 minutes
    python benchmarks/loadgen.py --quick    # shorter probes, coarser search

What it measures, in one run against one local server:

- the server: a tiny single-threaded epoll HTTP/1.1 server in C (embedded below, compiled
  with the system's ``cc``), keep-alive unless asked ``Connection: close``, pinned to the last
  CPU, so that it is never the bottleneck of a single client core;
- the reference: ``wrk`` pinned to CPU 0 — its throughput with 32 connections (keep-alive,
  and with ``Connection: close`` for the per-request comparison) and its latency floor with
  one connection (p50, p99);
- each engine (``fast``, ``httpx``) × connection mode (``pooled``, ``per-request``), its one
  worker process pinned to CPU 0 (this process, which only collects the rows, runs beside
  the server): the maximum *sustainable* rate — the highest rate
  at which at most 1 % of sends leave more than 1 ms late, nothing is dropped and nothing
  fails (searched by doubling, then bisection; each rate gets a second attempt when the first
  fails, because other jobs may be loading the machine) — and the latency floor at a light
  200 req/s (p50, p99, measured from the intended send times);
- ratios against wrk, and the issue's targets: fast >= 25 % of wrk's requests per second on
  one core with a p50 floor within 3x of wrk's; httpx >= 1,500 req/s per process pooled;
- CPU per request (``--cpu`` runs only this part): each engine × connection mode at fixed
  rates (300 and 2,000 req/s, the README's rate and a busy one), its worker pinned to CPU 0,
  as the engine measures itself for the saturation guard (its thread's CPU time while
  sending, minus the idle spin that waits for the next send), next to wrk's CPU per request
  (wrk's CPU time from ``getrusage(RUSAGE_CHILDREN)`` over its requests, full speed, same
  core), and what share of a core the README's 300 req/s costs each engine.

wrk is closed-loop (it sends as fast as responses return), the engines are held to a
schedule: the engines' numbers are the stricter ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.load import LoadResult
from pytest_dataplane.load._launch import Launch
from pytest_dataplane.load._spec import LoadSpec

SERVER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char KEEP[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";
static const char CLOSE[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n"
    "Connection: close\r\n\r\nok\n";

struct conn { int fd; size_t len; char buf[16384]; };

int main(void) {
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, events[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = malloc(sizeof *nc);
                    nc->fd = fd;
                    nc->len = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            ssize_t got = read(c->fd, c->buf + c->len, sizeof c->buf - c->len - 1);
            if (got <= 0) {
                if (got < 0 && errno == EAGAIN) continue;
                close(c->fd);
                free(c);
                continue;
            }
            c->len += (size_t)got;
            c->buf[c->len] = 0;
            char *start = c->buf, *end;
            int closing = 0;
            while (!closing && (end = strstr(start, "\r\n\r\n")) != NULL) {
                *end = 0;
                closing = strcasestr(start, "connection: close") != NULL;
                const char *reply = closing ? CLOSE : KEEP;
                size_t size = closing ? sizeof CLOSE - 1 : sizeof KEEP - 1;
                if (write(c->fd, reply, size) != (ssize_t)size) closing = 1;
                start = end + 4;
            }
            if (closing || c->len >= sizeof c->buf - 1) {
                close(c->fd);
                free(c);
                continue;
            }
            c->len -= (size_t)(start - c->buf);
            memmove(c->buf, start, c->len);
        }
    }
}
"""

LATE = 1e-3  # a send more than 1 ms after its intended time is late
LIGHT_RATE = 200.0


@dataclass
class Probe:
    rate: float
    ok: bool
    late_fraction: float
    result: LoadResult | None


def late_fraction(result: LoadResult) -> float:
    lag = result.timeline.lag[result.timeline.outcome != 8]
    return float(np.mean(lag > LATE)) if lag.size else 1.0


def sustainable(result: LoadResult) -> bool:
    expected = result.scheduled / result.duration
    return (
        result.dropped == 0
        and result.errors == 0
        and late_fraction(result) <= 0.01
        and result.achieved_rate >= 0.99 * expected
    )


def run_pinned(url: str, cpu: int | None, **kwargs: object) -> LoadResult:
    """A blocking run whose worker process is pinned to ``cpu`` (None: not pinned)."""
    launch = Launch(LoadSpec.create(url, **kwargs))  # type: ignore[arg-type]
    try:
        launch.start()  # the schedule starts 50 ms after this returns: time to pin
        if cpu is not None:
            for worker in launch._workers:
                _pin(worker.process.pid, cpu)  # type: ignore[attr-defined]
        return launch.wait()
    finally:
        launch.close()


class Bench:
    def __init__(self, url: str, probe_seconds: float, steps: int, cpu: int | None) -> None:
        self.url = url
        self.probe_seconds = probe_seconds
        self.steps = steps
        self.cpu = cpu

    def probe(self, engine: str, connection: str, rate: float) -> Probe:
        for _attempt in range(2):
            try:
                result = run_pinned(
                    self.url,
                    self.cpu,
                    rate=rate,
                    duration=self.probe_seconds,
                    engine=engine,
                    connection=connection,
                    timeout="2s",
                )
            except DataplaneError as exc:  # e.g. so overloaded it could not finish in time
                print(f"  {engine:5} {connection:11} {rate:9,.0f}/s  failed: {exc}", flush=True)
                probe = Probe(rate, False, 1.0, None)
                continue
            probe = Probe(rate, sustainable(result), late_fraction(result), result)
            if probe.ok:
                return probe
        return probe

    def max_rate(self, engine: str, connection: str, start: float) -> tuple[float, list[Probe]]:
        probes: list[Probe] = []
        good, bad = 0.0, None
        rate = start
        while bad is None:
            probe = self.probe(engine, connection, rate)
            probes.append(probe)
            print(
                f"  {engine:5} {connection:11} {rate:9,.0f}/s  late {probe.late_fraction:6.2%}  "
                f"{'ok' if probe.ok else 'NOT sustained'}",
                flush=True,
            )
            if probe.ok:
                good = rate
                rate *= 2
            else:
                bad = rate
        for _ in range(self.steps):
            if good and bad / good < 1.08:
                break
            rate = (good + bad) / 2 if good else bad / 2
            probe = self.probe(engine, connection, rate)
            probes.append(probe)
            print(
                f"  {engine:5} {connection:11} {rate:9,.0f}/s  late {probe.late_fraction:6.2%}  "
                f"{'ok' if probe.ok else 'NOT sustained'}",
                flush=True,
            )
            if probe.ok:
                good = rate
            else:
                bad = rate
        return good, probes

    def floor(self, engine: str, connection: str) -> LoadResult:
        return run_pinned(
            self.url,
            self.cpu,
            rate=LIGHT_RATE,
            duration=max(self.probe_seconds, 3.0),
            engine=engine,
            connection=connection,
        )


def _pin(pid: int, cpu: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {cpu})


def start_server(workdir: Path) -> tuple[subprocess.Popen[str], int]:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        sys.exit("no C compiler (cc, gcc, clang) found to build the benchmark server")
    source = workdir / "server.c"
    binary = workdir / "server"
    source.write_text(SERVER_C)
    subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True)
    server = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    return server, port


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _wrk_seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, *, connections: int, seconds: float, close: bool = False) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(int(seconds), 1)}s", "--latency", url]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    if hasattr(os, "sched_setaffinity"):
        argv = ["taskset", "-c", "0", *argv]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    dist = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Socket errors: (.*)|Non-2xx.*", out)
    return {
        "rps": rps,
        "p50": _wrk_seconds(dist["50"]),
        "p99": _wrk_seconds(dist["99"]),
        "errors": 1.0 if errors else 0.0,
    }


CPU_RATES = (300.0, 2000.0)


def wrk_cpu_per_request(url: str, *, seconds: float, close: bool) -> tuple[float, float]:
    """(CPU seconds per request, requests per second) of wrk, 1 thread, 32 connections, on
    CPU 0; its CPU time is this process's children's usage over the run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ref = wrk(url, connections=32, seconds=seconds, close=close)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    requests = ref["rps"] * max(int(seconds), 1)
    return cpu / requests, ref["rps"]


def cpu_rows(url: str, cpu: int | None, seconds: float) -> list[tuple[str, str, float, LoadResult]]:
    rows = []
    for engine in ("fast", "httpx"):
        for connection in ("per-request", "pooled"):
            for rate in CPU_RATES:
                try:
                    result = run_pinned(
                        url, cpu, rate=rate, duration=seconds, engine=engine, connection=connection
                    )
                except DataplaneError as exc:  # so far behind it could not finish in time
                    print(f"  {engine:5} {connection:11} {rate:7,.0f}/s  failed: {exc}", flush=True)
                    continue
                g = result.generator
                print(
                    f"  {engine:5} {connection:11} {rate:7,.0f}/s  own CPU {g.cpu:6.1%} of a core, "
                    f"{g.cpu * g.wall / max(result.completed, 1) * 1e6:6.1f} µs/request"
                    f"{'  SATURATED: ' + result.saturation_reason if result.saturated else ''}",
                    flush=True,
                )
                rows.append((engine, connection, rate, result))
    return rows


def print_cpu_table(
    rows: list[tuple[str, str, float, LoadResult]], wrk_keep: float, wrk_close: float
) -> None:
    print()
    print("CPU per request, one core (the worker's own work while sending, idle spin excluded)")
    header = (
        f"{'engine':6} {'connection':11} {'rate':>8} {'own CPU':>8} {'µs/request':>11} "
        f"{'x wrk':>7} {'send lag p99':>13}"
    )
    print(header)
    print("-" * len(header))
    print(f"{'wrk':6} {'keep-alive':11} {'max':>8} {'100%':>8} {wrk_keep * 1e6:>11.1f} {1:>7.1f}")
    print(f"{'wrk':6} {'close':11} {'max':>8} {'100%':>8} {wrk_close * 1e6:>11.1f} {1:>7.1f}")
    for engine, connection, rate, result in rows:
        g = result.generator
        per = g.cpu * g.wall / max(result.completed, 1)
        ref = wrk_keep if connection == "pooled" else wrk_close
        print(
            f"{engine:6} {connection:11} {rate:>6,.0f}/s {g.cpu:>8.1%} {per * 1e6:>11.1f} "
            f"{per / ref:>7.1f} {g.lag_p99 * 1e3:>10.2f} ms"
        )


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
        f"{platform.python_version()}; load average {load}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="Shorter probes, coarser search")
    parser.add_argument("--cpu", action="store_true", help="Only the CPU per request")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: it is the reference of this benchmark")
    probe_seconds, steps = (1.5, 2) if args.quick else (2.5, 4)
    cpus = os.cpu_count() or 1
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="dpt-bench-") as tmp:
        server, port = start_server(Path(tmp))
        try:
            if cpus > 1:
                _pin(server.pid, cpus - 1)
                _pin(0, cpus - 1)  # workers are moved to CPU 0 as they start
            url = f"http://127.0.0.1:{port}/"
            print(
                f"server: embedded C epoll server on CPU {cpus - 1 if cpus > 1 else 0}; "
                "clients on CPU 0"
            )
            ref_keep = max(
                (wrk(url, connections=c, seconds=3) for c in (16, 32)), key=lambda r: r["rps"]
            )
            ref_close = wrk(url, connections=32, seconds=3, close=True)
            ref_floor = wrk(url, connections=1, seconds=3)
            print(
                f"wrk: {ref_keep['rps']:,.0f} req/s keep-alive, {ref_close['rps']:,.0f} req/s "
                f"with Connection: close; floor p50 {ref_floor['p50'] * 1e6:.0f} µs, "
                f"p99 {ref_floor['p99'] * 1e6:.0f} µs"
            )
            wrk_keep, _ = wrk_cpu_per_request(url, seconds=3, close=False)
            wrk_close, _ = wrk_cpu_per_request(url, seconds=3, close=True)
            print(
                f"wrk CPU per request: {wrk_keep * 1e6:.1f} µs keep-alive, "
                f"{wrk_close * 1e6:.1f} µs with Connection: close"
            )
            cpu_table = cpu_rows(url, 0 if cpus > 1 else None, 3.0 if args.quick else 6.0)
            if args.cpu:
                print(f"\nmachine: {machine()}")
                print_cpu_table(cpu_table, wrk_keep, wrk_close)
                return 0
            bench = Bench(url, probe_seconds, steps, 0 if cpus > 1 else None)
            rows = []
            for engine, connection, start in (
                ("fast", "pooled", 4000.0),
                ("fast", "per-request", 2000.0),
                ("httpx", "pooled", 1000.0),
                ("httpx", "per-request", 500.0),
            ):
                floor = bench.floor(engine, connection)
                best, _ = bench.max_rate(engine, connection, start)
                reference = ref_keep if connection == "pooled" else ref_close
                rows.append((engine, connection, best, reference["rps"], floor))
        finally:
            server.kill()
            server.wait()
    print()
    print(f"machine: {machine()}")
    header = (
        f"{'engine':6} {'connection':11} {'max sustained':>14} {'wrk req/s':>10} "
        f"{'ratio':>6} {'p50 floor':>10} {'p99 floor':>10} {'p50/wrk':>8}"
    )
    print(header)
    print("-" * len(header))
    print(
        f"{'wrk':6} {'keep-alive':11} {'':>14} {ref_keep['rps']:>10,.0f} {'':>6} "
        f"{ref_floor['p50'] * 1e6:>8.0f}µs {ref_floor['p99'] * 1e6:>8.0f}µs {1:>8.2f}"
    )
    print(f"{'wrk':6} {'close':11} {'':>14} {ref_close['rps']:>10,.0f}")
    verdicts = []
    for engine, connection, best, reference, floor in rows:
        p50, p99 = floor.percentile(50), floor.percentile(99)
        print(
            f"{engine:6} {connection:11} {best:>12,.0f}/s {reference:>10,.0f} "
            f"{best / reference:>6.1%} {p50 * 1e6:>8.0f}µs {p99 * 1e6:>8.0f}µs "
            f"{p50 / ref_floor['p50']:>8.2f}"
        )
        if engine == "fast" and connection == "pooled":
            verdicts.append(("fast >= 25% of wrk req/s (one core)", best / reference >= 0.25))
            verdicts.append(("fast p50 floor within 3x of wrk", p50 / ref_floor["p50"] <= 3))
        if engine == "httpx" and connection == "pooled":
            verdicts.append(("httpx >= 1,500 req/s pooled per process", best >= 1500))
    print_cpu_table(cpu_table, wrk_keep, wrk_close)
    print()
    for text, ok in verdicts:
        print(f"target {text}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
