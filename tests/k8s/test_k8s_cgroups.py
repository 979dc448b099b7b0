"""Reading a container's CPU time on cgroup v1, v2 and hybrid hosts, or saying it cannot.

The fake hierarchies below hold counter files copied from tests/data/cgroup/ (captured from a
real kernel; provenance in tests/data/README.md) in the layouts kind nodes have: cgroup v2
with kubelet's systemd driver, v1 with separate and with co-mounted cpu and cpuacct
controllers, and hybrid (v1 controllers plus the unified v2 tree). The scripts are the ones
the nodes run, run here by ``sh``. A last test runs them on this machine's own cgroup v1
hierarchy, where the v1 cpu controller's cpu.stat (no usage_usec) is found before cpuacct.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dataplane.providers.k8s.metrics import (
    cgroup_find_script,
    cgroup_read_script,
    cpu_unavailable_reason,
    parse_cgroup_find,
    parse_cgroup_read,
)

DATA = Path(__file__).parent.parent / "data" / "cgroup"
CID = "3f" * 32
POD = (
    "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
    "kubelet-kubepods-besteffort-pod0a1b2c3d.slice"
)
SCOPE = f"cri-containerd-{CID}.scope"
V1_CPU_STAT = (DATA / "v1-cpu.stat").read_text()
V1_USAGE = (DATA / "v1-cpuacct.usage").read_text()
V2_CPU_STAT = (DATA / "v2-cpu.stat").read_text()


def sh(script: str) -> str:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout


def put(root: Path, relative: str, files: dict[str, str]) -> Path:
    directory = root / relative
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def read(root: Path) -> tuple[str | None, dict[str, float | None]]:
    found = parse_cgroup_find(sh(cgroup_find_script([CID], root=str(root))))
    if CID not in found:
        return None, {}
    return found[CID], parse_cgroup_read(sh(cgroup_read_script([found[CID]])))


def v1_controllers(root: Path, *, cpuacct: bool = True) -> Path | None:
    """cpu and cpuacct as separate v1 hierarchies, with other controllers alongside."""
    for controller in ("blkio", "memory", "pids"):
        put(root, f"{controller}/{POD}/{SCOPE}", {"tasks": ""})
    put(root, f"cpu/{POD}/{SCOPE}", {"cpu.stat": V1_CPU_STAT, "cpu.shares": "2\n"})
    if not cpuacct:
        return None
    return put(root, f"cpuacct/{POD}/{SCOPE}", {"cpuacct.usage": V1_USAGE})


def test_cgroup_v2(tmp_path: Path) -> None:
    # The pod's slice has a cpu.stat too; only the container's scope matches its id.
    put(tmp_path, POD, {"cpu.stat": V2_CPU_STAT})
    scope = put(tmp_path, f"{POD}/{SCOPE}", {"cpu.stat": V2_CPU_STAT})
    path, values = read(tmp_path)
    assert path == str(scope)
    usec = int(V2_CPU_STAT.split()[1])
    assert values == {str(scope): pytest.approx(usec / 1e6)}


def test_cgroup_v1_separate_controllers(tmp_path: Path) -> None:
    cpuacct = v1_controllers(tmp_path)
    path, values = read(tmp_path)
    assert path == str(cpuacct)  # not cpu/…, whose cpu.stat has no usage_usec
    assert values == {str(cpuacct): pytest.approx(int(V1_USAGE) / 1e9)}


def test_cgroup_v1_comounted_controllers(tmp_path: Path) -> None:
    both = put(
        tmp_path,
        f"cpu,cpuacct/kubepods/besteffort/pod0a1b2c3d/{CID}",
        {"cpu.stat": V1_CPU_STAT, "cpuacct.usage": V1_USAGE},
    )
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    path, values = read(tmp_path)
    assert path == str(both)
    assert values == {str(both): pytest.approx(int(V1_USAGE) / 1e9)}


def test_hybrid_hierarchy(tmp_path: Path) -> None:
    v1_controllers(tmp_path)
    put(tmp_path, f"unified/{POD}/{SCOPE}", {"cpu.stat": V2_CPU_STAT})
    path, values = read(tmp_path)
    # Either counter is the container's CPU time; never the v1 cpu controller's cpu.stat.
    assert path is not None and not path.startswith(str(tmp_path / "cpu/"))
    assert list(values.values()) in (
        [pytest.approx(int(V1_USAGE) / 1e9)],
        [pytest.approx(int(V2_CPU_STAT.split()[1]) / 1e6)],
    )


def test_no_counter_is_reported_not_read_as_zero(tmp_path: Path) -> None:
    v1_controllers(tmp_path, cpuacct=False)
    path, _ = read(tmp_path)
    assert path is None
    reason = cpu_unavailable_reason("kind-worker", CID, root=str(tmp_path))
    assert reason.startswith(f"kind-worker: no cgroup of container {CID[:12]} under {tmp_path}")
    assert "cpuacct.usage" in reason and "usage_usec" in reason
    # A directory that lost its counter is an error, not zero; a removed one is gone (None).
    cpu_dir = str(tmp_path / "cpu" / POD / SCOPE)
    with pytest.raises(ValueError, match="its CPU time cannot be read"):
        parse_cgroup_read(sh(cgroup_read_script([cpu_dir])))
    gone = str(tmp_path / "nowhere")
    assert parse_cgroup_read(sh(cgroup_read_script([gone]))) == {gone: None}


def _v1_mount(controller: str) -> Path | None:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == "cgroup" and controller in fields[3].split(","):
            return Path(fields[1])
    return None


@pytest.fixture
def v1_groups() -> Iterator[tuple[str, list[Path]]]:
    cpu, cpuacct = _v1_mount("cpu"), _v1_mount("cpuacct")
    if os.geteuid() != 0 or cpu is None or cpuacct is None:
        pytest.skip("needs root and the cgroup v1 cpu and cpuacct controllers")
    cid = secrets.token_hex(16)
    name = f"dpt{cid[:5]}-cri-containerd-{cid}.scope"
    groups = [mount / name for mount in dict.fromkeys((cpu, cpuacct))]
    made = []
    try:
        for group in groups:
            group.mkdir()
            made.append(group)
    except OSError as exc:
        for group in made:
            group.rmdir()
        pytest.skip(f"cannot create cgroup v1 groups: {exc}")
    yield cid, groups
    for group in groups:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)
    assert not any(group.exists() for group in groups)


def test_a_real_cgroup_v1_hierarchy(v1_groups: tuple[str, list[Path]]) -> None:
    cid, groups = v1_groups
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.readline()\nwhile True: pass"],
        stdin=subprocess.PIPE,
    )
    try:
        for group in groups:
            (group / "cgroup.procs").write_text(str(child.pid))
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        found = parse_cgroup_find(sh(cgroup_find_script([cid])))
        assert found[cid] == str(next(g for g in groups if (g / "cpuacct.usage").exists()))
        first = parse_cgroup_read(sh(cgroup_read_script([found[cid]])))[found[cid]]
        time.sleep(0.3)
        second = parse_cgroup_read(sh(cgroup_read_script([found[cid]])))[found[cid]]
        assert first is not None and second is not None
        assert second > first > 0
    finally:
        child.kill()
        child.wait()
        assert child.stdin is not None
        child.stdin.close()
