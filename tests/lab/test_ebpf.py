"""The lab's eBPF proxier: a cgroup/connect4 load balancer, tested on the real kernel.

The topology is local to this file: one network namespace ``dpt<hex>-c`` with ``lo`` up and
four "pod" addresses (10.244.0.1-4/32) on it, one server process inside it answering every
connection with the address it was reached at, and a cgroup v2 directory that holds the
client. A client is a short process started in the namespace that first moves itself into
the cgroup (when asked) and then connects to the VIP, which no interface owns: a connection
can only reach a pod through the BPF program's rewrite.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_dataplane.errors import DataplaneError, DataplaneUnavailable
from pytest_dataplane.providers.lab import _bpf, _proc, ebpf
from pytest_dataplane.providers.lab._types import Endpoint, ServiceSpec
from pytest_dataplane.providers.lab.ebpf import (
    EbpfProxier,
    build_object,
    cgroup2_mounts,
    checks,
    ebpf_unavailable_reason,
)
from pytest_dataplane.providers.lab.ebpf import plan as lb_plan

VIP = "10.96.0.10"
PODS = tuple(f"10.244.0.{i}" for i in (1, 2, 3, 4))
POD_PORT = 8080

SERVER = r"""
import selectors, socket, sys
selector = selectors.DefaultSelector()
for address in sys.argv[2:]:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        listener = socket.socket(socket.AF_INET, kind)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, int(sys.argv[1])))
        if kind == socket.SOCK_STREAM:
            listener.listen(1024)
        selector.register(listener, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        sock = key.fileobj
        me = sock.getsockname()[0].encode()
        if sock.type == socket.SOCK_DGRAM:
            _, peer = sock.recvfrom(64)
            sock.sendto(me, peer)
        else:
            connection, _ = sock.accept()
            connection.sendall(me)
            connection.close()
"""

# Connects ``count`` times, one new connection each, and reports who answered, which errors
# occurred, and how long connect() took (the rewrite happens inside it).
CLIENT = r"""
import collections, errno, json, socket, sys, time
host, port, count, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
answers, errors, connect_ns = collections.Counter(), collections.Counter(), []
for _ in range(count):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        started = time.perf_counter_ns()
        sock.connect((host, port))
        connect_ns.append(time.perf_counter_ns() - started)
        if kind == "udp":
            sock.send(b"?")
        answers[sock.recv(64).decode()] += 1
    except OSError as exc:
        errors[errno.errorcode.get(exc.errno, str(exc))] += 1
    finally:
        sock.close()
connect_ns.sort()
p50 = connect_ns[len(connect_ns) // 2] if connect_ns else None
print(json.dumps({"answers": answers, "errors": errors, "connect_p50_ns": p50}))
"""


@pytest.fixture(scope="module")
def available() -> None:
    reason = ebpf_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def toolchain() -> None:
    # Building needs clang and the headers only, not root.
    try:
        checks.include_dirs()
    except DataplaneUnavailable as exc:
        pytest.skip(str(exc))
    if _proc.which("clang") is None:
        pytest.skip("clang not found: apt-get install clang llvm libbpf-dev")


@dataclass(frozen=True)
class Answers:
    answers: dict[str, int]
    errors: dict[str, int]
    connect_p50: float | None


@dataclass
class Lab:
    netns: str
    cgroup: Path
    prefix: str

    def client(
        self,
        count: int,
        *,
        host: str = VIP,
        port: int = 80,
        in_cgroup: bool = True,
        protocol: str = "tcp",
    ) -> Answers:
        code = [sys.executable, "-c", CLIENT, host, str(port), str(count), protocol]
        if in_cgroup:
            # The shell joins the cgroup before exec'ing Python, so every connect() of the
            # client happens inside it.
            code = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.cgroup), *code]
        done = subprocess.run(
            _proc.in_netns(self.netns, code),
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        p50 = report["connect_p50_ns"]
        return Answers(report["answers"], report["errors"], None if p50 is None else p50 / 1e9)


def _make_cgroup(prefix: str, suffix: str) -> Path:
    path = cgroup2_mounts()[0] / f"{prefix}{suffix}"
    path.mkdir()
    return path


def _remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    for pid in (path / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    deadline = time.monotonic() + 5
    while True:
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(available: None) -> Iterator[Lab]:
    prefix = "dpt" + secrets.token_hex(3)[:5]
    netns = f"{prefix}-c"
    server: subprocess.Popen[str] | None = None
    cgroup: Path | None = None
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        for pod in PODS:
            subprocess.run(["ip", "-n", netns, "addr", "add", f"{pod}/32", "dev", "lo"], check=True)
        server = subprocess.Popen(
            _proc.in_netns(netns, [sys.executable, "-c", SERVER, str(POD_PORT), *PODS]),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        cgroup = _make_cgroup(prefix, "-client")
        yield Lab(netns, cgroup, prefix)
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        if cgroup is not None:
            _remove_cgroup(cgroup)
        subprocess.run(["ip", "netns", "del", netns], check=True)


@pytest.fixture
def state_dir(lab: Lab) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-state-"))
    yield path
    ebpf.remove_leftovers(path)
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def proxier(lab: Lab) -> Iterator[EbpfProxier]:
    state = Path(tempfile.mkdtemp(prefix=f"{lab.prefix}-state-"))
    instance = EbpfProxier(cgroup=lab.cgroup, state_dir=state, node_netns=lab.netns)
    try:
        instance.start()
        yield instance
    finally:
        instance.close()
        shutil.rmtree(state)


def _service(name: str, vip: str, *pods: str, port: int = 80) -> ServiceSpec:
    return ServiceSpec(
        name=name, vip=vip, port=port, endpoints=tuple(Endpoint(p, POD_PORT) for p in pods)
    )


def _background(count: int) -> dict[str, ServiceSpec]:
    services = {}
    for i in range(count):
        vip = f"10.97.{i // 250}.{i % 250 + 1}"
        pods = [f"10.245.{(3 * i + j) // 250}.{(3 * i + j) % 250 + 1}" for j in range(3)]
        services[f"bg/svc-{i}:http"] = _service(f"bg/svc-{i}:http", vip, *pods)
    return services


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.1f} us"


class _SyscallCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        real = _bpf._bpf

        def counting(cmd: int, attr: Any, what: str) -> int:
            self.calls.append(cmd)
            return real(cmd, attr, what)

        monkeypatch.setattr(_bpf, "_bpf", counting)


# --------------------------------------------------------------------------------------------
# Traffic through the program


def test_connections_spread_evenly_over_every_backend(lab: Lab, proxier: EbpfProxier) -> None:
    from scipy.stats import chisquare

    proxier.sync({"web": _service("web", VIP, *PODS[:3])}, None)
    result = lab.client(3000)
    assert result.errors == {}
    assert set(result.answers) == set(PODS[:3])
    counts = [result.answers[pod] for pod in PODS[:3]]
    test = chisquare(counts)
    assert test.pvalue > 0.001, f"counts {counts} reject uniformity (p={test.pvalue:.2g})"
    direct = lab.client(300, host=PODS[0], port=POD_PORT)
    print(
        f"\nconnect() p50 via the VIP: {_us(result.connect_p50)}; "
        f"direct to a pod: {_us(direct.connect_p50)}; counts {counts}"
    )


def test_process_outside_the_cgroup_does_not_reach_the_vip(lab: Lab, proxier: EbpfProxier) -> None:
    proxier.sync({"web": _service("web", VIP, *PODS[:3])}, None)
    outside = lab.client(20, in_cgroup=False)
    assert outside.answers == {}
    assert outside.errors == {"ENETUNREACH": 20}
    # The pods themselves are reachable from outside: only the VIP needs the program.
    direct = lab.client(5, host=PODS[0], port=POD_PORT, in_cgroup=False)
    assert direct.answers == {PODS[0]: 5}


def test_endpoint_changes_reach_new_connections(lab: Lab, proxier: EbpfProxier) -> None:
    web = _service("web", VIP, *PODS[:3])
    proxier.sync({"web": web}, None)
    backends = _bpf.BpfMap(str(proxier.maps_dir / ebpf.BACKENDS_MAP))
    try:
        moved = _service("web", VIP, PODS[0], PODS[1], PODS[3])  # pod 3 replaced by pod 4
        result = proxier.sync({"web": moved}, ["web"])
        assert not result.full
        # 1 service entry switched, 3 backends written under the new revision, 3 deleted.
        assert result.written == 7, result.detail
        assert proxier.programmed() == {(VIP, 80, "tcp"): [str(e) for e in moved.endpoints]}
        assert backends.count() == 3  # the old revision is gone
        assert set(lab.client(300).answers) == {PODS[0], PODS[1], PODS[3]}

        scaled = _service("web", VIP, *PODS)
        proxier.sync({"web": scaled}, ["web"])
        assert set(lab.client(400).answers) == set(PODS)

        empty = _service("web", VIP)
        proxier.sync({"web": empty}, ["web"])
        refused = lab.client(10)
        assert refused.answers == {}
        assert refused.errors == {"ECONNREFUSED": 10}  # as kube-proxy rejects

        # Unchanged services are not rewritten by a partial sync.
        assert proxier.sync({"web": empty}, ["web"]).written == 0
        proxier.sync({}, [])  # a removal is noticed without being named
        assert proxier.programmed() == {}
        assert backends.count() == 0
        assert lab.client(5).errors == {"ENETUNREACH": 5}
    finally:
        backends.close()


def test_thousands_of_services_are_programmed_in_a_few_batched_syscalls(
    lab: Lab, proxier: EbpfProxier, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = _SyscallCounter(monkeypatch)
    web = {"web": _service("web", VIP, *PODS[:3])}
    timings = {}
    for count in (1, 1000, 5000):
        services = {**web, **_background(count - 1)} if count > 1 else dict(web)
        proxier.sync({}, None)
        counter.calls.clear()
        result = proxier.sync(services, None)
        timings[count] = result
        assert result.full
        assert "batched" in result.detail
        # Two batch reads (stray check), one batch write per map: no per-entry syscalls.
        assert len(counter.calls) <= 6, (counter.calls, result.detail)
        assert set(counter.calls) <= {_bpf.BPF_MAP_LOOKUP_BATCH, _bpf.BPF_MAP_UPDATE_BATCH}
        assert result.written == count * 4
    print()
    for count, result in timings.items():
        print(
            f"full sync of {count:>5} services x 3 endpoints: wall {result.wall * 1e3:7.2f} ms, "
            f"cpu {result.cpu * 1e3:7.2f} ms, {result.written} entries ({result.detail})"
        )

    rules = proxier.rule_count()
    assert rules.service_map_entries == 5000
    assert rules.total == 0  # the node namespace has no KUBE- rules at all

    # One endpoint change among 5,000 services touches only that service.
    services = {**web, **_background(4999)}
    changed = "bg/svc-7:http"
    services[changed] = _service(changed, services[changed].vip, "10.246.0.1", "10.246.0.2")
    counter.calls.clear()
    result = proxier.sync(services, [changed])
    assert result.written == 1 + 2 + 3
    assert len(counter.calls) == 3  # write backends, switch the service, delete old backends
    print(f"one endpoint change among 5,000 services: wall {result.wall * 1e6:.0f} us")
    programmed = proxier.programmed()
    assert programmed[(services[changed].vip, 80, "tcp")] == ["10.246.0.1:8080", "10.246.0.2:8080"]
    assert len(programmed) == 5000
    answered = lab.client(60)
    assert set(answered.answers) == set(PODS[:3]), answered
    print(f"connect() p50 via the VIP with 5,000 services: {_us(answered.connect_p50)}")


def test_full_sync_removes_entries_it_did_not_write(lab: Lab, proxier: EbpfProxier) -> None:
    proxier.sync({"web": _service("web", VIP, *PODS[:3])}, None)
    services = _bpf.BpfMap(str(proxier.maps_dir / ebpf.SERVICES_MAP))
    backends = _bpf.BpfMap(str(proxier.maps_dir / ebpf.BACKENDS_MAP))
    try:
        stray_service = lb_plan.SVC_KEY.pack(bytes([10, 96, 9, 9]), (80).to_bytes(2, "big"), 6)
        services.update(stray_service, lb_plan.SVC_VAL.pack(999_999, 1))
        backends.update(lb_plan.BE_KEY.pack(999_999, 0), lb_plan.BE_VAL.pack(bytes(4), bytes(2)))
        assert services.count() == 2
        result = proxier.sync({"web": _service("web", VIP, *PODS[:3])}, None)
        assert services.count() == 1
        assert backends.count() == 3
        assert "1 services and 4 backends deleted" in result.detail
        assert set(lab.client(100).answers) == set(PODS[:3])
    finally:
        services.close()
        backends.close()


def test_udp_services_are_balanced_on_connect(lab: Lab, proxier: EbpfProxier) -> None:
    dns = ServiceSpec("dns", VIP, 53, tuple(Endpoint(p, POD_PORT) for p in PODS[:2]), "udp")
    proxier.sync({"dns": dns}, None)
    assert set(lab.client(100, port=53, protocol="udp").answers) == set(PODS[:2])
    # The service is UDP only: a TCP connect to the same VIP:port is not rewritten.
    assert lab.client(3, port=53).errors == {"ENETUNREACH": 3}


def test_per_element_fallback_when_batches_are_refused(
    lab: Lab, proxier: EbpfProxier, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxier.sync({}, None)

    def refuse(self: _bpf.BpfMap, *args: Any) -> None:
        raise _bpf.BpfSyscallError("bpf(BPF_MAP_*_BATCH) failed: Invalid argument", errno_=22)

    # As on a kernel without batch operations for hash maps.
    for method in ("update_batch", "delete_batch", "_items_batched"):
        monkeypatch.setattr(_bpf.BpfMap, method, refuse)
    monkeypatch.setattr(proxier, "_batch_unsupported", None)
    counter = _SyscallCounter(monkeypatch)
    result = proxier.sync({"web": _service("web", VIP, *PODS[:3])}, None)
    assert result.detail.startswith("per-element updates (BPF_MAP_UPDATE_BATCH unsupported")
    assert counter.calls.count(_bpf.BPF_MAP_UPDATE_ELEM) == 4
    assert _bpf.BPF_MAP_GET_NEXT_KEY in counter.calls  # the stray check walked the keys
    assert set(lab.client(100).answers) == set(PODS[:3])
    proxier.sync({"web": _service("web", VIP, PODS[0])}, ["web"])
    assert counter.calls.count(_bpf.BPF_MAP_DELETE_ELEM) == 3
    assert lab.client(20).answers == {PODS[0]: 20}
    assert proxier.programmed() == {(VIP, 80, "tcp"): [f"{PODS[0]}:{POD_PORT}"]}
    assert proxier.rule_count().service_map_entries == 1


# --------------------------------------------------------------------------------------------
# Cleanup


def _bpftool_json(*args: str) -> Any:
    done = subprocess.run(["bpftool", "-j", *args], check=False, capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None


def test_close_leaves_no_pin_mount_attachment_or_object(lab: Lab, state_dir: Path) -> None:
    cgroup = _make_cgroup(lab.prefix, "-close")
    try:
        proxier = EbpfProxier(cgroup=str(cgroup), state_dir=state_dir, node_netns=lab.netns)
        proxier.start()
        prog_id, map_ids = proxier.prog_id, proxier.map_ids
        assert prog_id is not None
        assert len(map_ids) == 2
        attached = _bpftool_json("cgroup", "show", str(cgroup))
        assert [entry["id"] for entry in attached] == [prog_id]
        assert any(state_dir in p.parents for p in _bpf_mounts())
        proxier.sync({"web": _service("web", VIP, *PODS[:3])}, None)

        proxier.close()
        proxier.close()  # idempotent

        assert _bpftool_json("cgroup", "show", str(cgroup)) in (None, [])
        assert not any(state_dir in p.parents or p == state_dir for p in _bpf_mounts())
        assert list(state_dir.iterdir()) == []
        # The kernel frees programs and maps once their last reference is gone, shortly after.
        objects = [("prog", prog_id), *(("map", i) for i in map_ids)]
        deadline = time.monotonic() + 5
        while True:
            alive = [(k, i) for k, i in objects if _bpftool_json(k, "show", "id", str(i))]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not alive, f"still loaded after close(): {alive}"
    finally:
        _remove_cgroup(cgroup)  # would fail if a process or child cgroup were left in it
    assert not cgroup.exists()


def test_remove_leftovers_reaps_a_session_that_never_closed(lab: Lab, state_dir: Path) -> None:
    cgroup = _make_cgroup(lab.prefix, "-killed")
    try:
        proxier = EbpfProxier(cgroup=cgroup, state_dir=state_dir, node_netns=None)
        proxier.start()
        with pytest.raises(DataplaneError, match="already started"):
            proxier.start()
        second_state = state_dir / "second"
        second = EbpfProxier(cgroup=cgroup, state_dir=second_state, node_netns=None)
        with pytest.raises(DataplaneError, match=r"already has a connect4 program attached \(id"):
            second.start()
        assert list(second_state.iterdir()) == []  # the second one unmounted what it mounted
        proxier._services.close()  # type: ignore[union-attr]  # as if the process had died
        proxier._backends.close()  # type: ignore[union-attr]
        prog_id = proxier.prog_id
    finally:
        _remove_cgroup(cgroup)  # the lab's cleanup removes the cgroup: attachments go with it
    assert ebpf.remove_leftovers(state_dir) == [str(state_dir / ebpf.BPFFS_DIR)]
    assert not any(state_dir in p.parents for p in _bpf_mounts())
    deadline = time.monotonic() + 5
    while _bpftool_json("prog", "show", "id", str(prog_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _bpftool_json("prog", "show", "id", str(prog_id))
    assert ebpf.remove_leftovers(state_dir) == []


def test_failed_start_leaves_nothing(lab: Lab, state_dir: Path) -> None:
    missing = cgroup2_mounts()[0] / f"{lab.prefix}-missing"
    proxier = EbpfProxier(cgroup=missing, state_dir=state_dir, node_netns=None)
    with pytest.raises(DataplaneError, match=rf"cgroup {missing} does not exist"):
        proxier.start()
    assert list(state_dir.iterdir()) == []
    assert not any(state_dir in p.parents for p in _bpf_mounts())


def test_refuses_the_root_cgroup(lab: Lab, state_dir: Path) -> None:
    root = cgroup2_mounts()[0]
    proxier = EbpfProxier(cgroup=root, state_dir=state_dir, node_netns=None)
    with pytest.raises(ValueError, match="root of the cgroup v2 hierarchy"):
        proxier.start()
    assert list(state_dir.iterdir()) == []


def _bpf_mounts() -> list[Path]:
    return [
        Path(line.split()[1])
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[2] == "bpf"
    ]


# --------------------------------------------------------------------------------------------
# The compile cache


def test_second_build_reuses_the_cache_without_clang(
    toolchain: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_object(cache_dir=tmp_path)
    assert not first.cached
    assert first.path.read_bytes()[:4] == b"\x7fELF"

    def no_processes(argv: object, **kwargs: object) -> object:
        raise AssertionError(f"a cached build ran {argv}")

    monkeypatch.setattr(_proc, "run", no_processes)
    second = build_object(cache_dir=tmp_path)
    assert second.cached
    assert second.path == first.path


def test_concurrent_builders_agree_on_one_complete_object(toolchain: None, tmp_path: Path) -> None:
    reference = build_object(cache_dir=tmp_path / "reference")
    cache = tmp_path / "shared"
    code = (
        "import sys; from pathlib import Path; "
        "from pytest_dataplane.providers.lab.ebpf import build_object; "
        "print(build_object(cache_dir=Path(sys.argv[1])).path)"
    )
    builders = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [builder.communicate(timeout=60)[0].strip() for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0, 0, 0]
    assert len(set(outputs)) == 1
    assert sorted(p.name for p in cache.iterdir()) == [Path(outputs[0]).name]  # no temp files
    assert Path(outputs[0]).read_bytes() == reference.path.read_bytes()


def test_compile_errors_show_clang_output(toolchain: None, tmp_path: Path) -> None:
    source = tmp_path / "broken.c"
    source.write_text("int broken(void) { return missing; }\n")
    with pytest.raises(DataplaneError, match=r"(?s)clang could not compile.*missing"):
        build_object(source=source, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# --------------------------------------------------------------------------------------------
# Errors naming what is missing


def _without(monkeypatch: pytest.MonkeyPatch, tool: str) -> None:
    real = _proc.which
    monkeypatch.setattr(_proc, "which", lambda name: None if name == tool else real(name))


def test_missing_clang_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without(monkeypatch, "clang")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(DataplaneUnavailable, match=r"clang not found: apt-get install clang"):
        build_object(cache_dir=tmp_path)
    assert ebpf_unavailable_reason() == "clang not found: apt-get install clang llvm libbpf-dev"


def test_missing_bpftool_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_proc, "which", lambda name: None if name == "bpftool" else name)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    reason = ebpf_unavailable_reason(probe_mount=False) or ""
    assert reason.startswith("bpftool not found: apt-get install bpftool")
    proxier = EbpfProxier(cgroup=tmp_path, state_dir=tmp_path, node_netns=None)
    with pytest.raises(DataplaneUnavailable, match="bpftool not found"):
        proxier.start()


def test_missing_headers_root_and_cgroup2_are_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in (ebpf_unavailable_reason() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(_proc, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(checks, "INCLUDE_ROOTS", (tmp_path,))
    reason = ebpf_unavailable_reason(probe_mount=False) or ""
    assert "bpf/bpf_helpers.h" in reason
    assert "apt-get install clang llvm libbpf-dev" in reason
    monkeypatch.undo()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(_proc, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(checks, "include_dirs", list)
    monkeypatch.setattr(checks, "cgroup2_mounts", list)
    assert "no cgroup v2 hierarchy" in (ebpf_unavailable_reason(probe_mount=False) or "")


# --------------------------------------------------------------------------------------------
# Pure parts: planning a sync, validating specs, reading /proc/mounts


def _live_after(plan: lb_plan.SyncPlan, live: dict[str, lb_plan.Live]) -> dict[str, lb_plan.Live]:
    out = dict(live)
    for name, new in plan.changes.items():
        out.pop(name, None)
        if new is not None:
            out[name] = new
    return out


def _owners(live: dict[str, lb_plan.Live]) -> dict[bytes, str]:
    return {entry.key: name for name, entry in live.items()}


def test_plan_writes_a_new_revision_before_switching_and_deletes_the_old_one() -> None:
    first = lb_plan.plan_sync({}, {}, {"a": _service("a", VIP, "10.0.0.1", "10.0.0.2")}, None, 1)
    assert [lb_plan.BE_KEY.unpack(k) for k, _ in first.backend_writes] == [(1, 0), (1, 1)]
    assert [lb_plan.SVC_VAL.unpack(v) for _, v in first.service_writes] == [(1, 2)]
    assert first.service_deletes == first.backend_deletes == []
    live = _live_after(first, {})

    second = lb_plan.plan_sync(live, _owners(live), {"a": _service("a", VIP, "10.0.0.3")}, ["a"], 2)
    assert [lb_plan.BE_KEY.unpack(k) for k, _ in second.backend_writes] == [(2, 0)]
    assert [lb_plan.SVC_VAL.unpack(v) for _, v in second.service_writes] == [(2, 1)]
    assert [lb_plan.BE_KEY.unpack(k) for k in second.backend_deletes] == [(1, 0), (1, 1)]
    assert second.service_deletes == []  # the key stays; only its value switched
    assert lb_plan.BE_VAL.unpack(second.backend_writes[0][1]) == (
        bytes([10, 0, 0, 3]),
        (8080).to_bytes(2, "big"),
    )


def test_plan_skips_unchanged_services_unless_full() -> None:
    services = {"a": _service("a", VIP, "10.0.0.1"), "b": _service("b", "10.96.0.11", "10.0.0.2")}
    live = _live_after(lb_plan.plan_sync({}, {}, services, None, 1), {})
    assert lb_plan.plan_sync(live, _owners(live), services, ["a", "b"], 3).entries == 0
    full = lb_plan.plan_sync(live, _owners(live), services, None, 3)
    assert len(full.service_writes) == 2
    assert len(full.backend_deletes) == 2


def test_plan_removal_and_vip_moves() -> None:
    services = {"a": _service("a", VIP, "10.0.0.1"), "b": _service("b", "10.96.0.11", "10.0.0.2")}
    live = _live_after(lb_plan.plan_sync({}, {}, services, None, 1), {})
    # b removed, a moves to b's old VIP: b's key is reused, a's old key is deleted.
    moved = {"a": _service("a", "10.96.0.11", "10.0.0.1")}
    plan = lb_plan.plan_sync(live, _owners(live), moved, ["a", "b"], 3)
    assert plan.service_deletes == [live["a"].key]
    assert [k for k, _ in plan.service_writes] == [live["b"].key]
    assert plan.changes["b"] is None
    assert len(plan.backend_deletes) == 2


def test_plan_rejects_two_services_on_one_vip_port() -> None:
    live = _live_after(
        lb_plan.plan_sync({}, {}, {"a": _service("a", VIP, "10.0.0.1")}, None, 1), {}
    )
    clash = {"a": _service("a", VIP, "10.0.0.1"), "b": _service("b", VIP, "10.0.0.2")}
    with pytest.raises(ValueError, match=r"services 'a' and 'b' both use 10.96.0.10:80/tcp"):
        lb_plan.plan_sync(live, _owners(live), clash, ["b"], 2)
    with pytest.raises(ValueError, match=r"both use"):
        lb_plan.plan_sync({}, {}, clash, None, 1)
    # The same VIP on another port or protocol is another service.
    other = {
        "a": _service("a", VIP, "10.0.0.1"),
        "b": _service("b", VIP, "10.0.0.2", port=443),
        "c": ServiceSpec("c", VIP, 80, (Endpoint("10.0.0.3", 53),), protocol="udp"),
    }
    assert len(lb_plan.plan_sync({}, {}, other, None, 1).service_writes) == 3


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ServiceSpec("s", "10.96.0", 80, ()), r"service 's' vip: '10.96.0' is not an IPv4"),
        (ServiceSpec("s", "fd00::1", 80, ()), r"'fd00::1' is not an IPv4 address"),
        (ServiceSpec("s", VIP, 0, ()), r"service 's' port: 0 is not a port"),
        (ServiceSpec("s", VIP, 80, (Endpoint("10.0.0.1", 70000),)), r"70000 is not a port"),
        (ServiceSpec("s", VIP, 80, (Endpoint("pod", 80),)), r"endpoint ip: 'pod'"),
        (ServiceSpec("s", VIP, 80, (), protocol="sctp"), r"protocol 'sctp' .* tcp, udp"),
    ],
)
def test_invalid_specs_are_named(spec: ServiceSpec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lb_plan.plan_sync({}, {}, {"s": spec}, None, 1)
