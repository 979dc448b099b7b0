"""kind's node access: ``docker exec`` into the node containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.providers.kind.docker import DockerNodes


def test_docker_nodes_runs_docker_exec(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake = tmp_path / "docker"
    fake.write_text(
        f'#!/bin/sh\necho "$@" >> {log}\n[ "$2" = bad ] && {{ echo boom >&2; exit 7; }}\necho out\n'
    )
    fake.chmod(0o755)
    nodes = DockerNodes(str(fake), ["kind-control-plane", "kind-worker"])
    assert nodes.nodes() == ["kind-control-plane", "kind-worker"]
    assert nodes.run("kind-worker", "echo hi") == "out\n"
    assert log.read_text() == "exec kind-worker sh -c echo hi\n"
    with pytest.raises(DataplaneError, match="docker exec bad failed with exit status 7: boom"):
        nodes.run("bad", "true")
