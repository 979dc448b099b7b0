"""The lab's eBPF service controller: ClusterIP Services programmed into the connect4 LB.

Run as ``python -m pytest_dataplane.providers.lab.kube.ebpfctl --kubeconfig PATH --cgroup PATH
--state-dir PATH`` (the lab starts one per cluster, in node 0's network namespace and a cgroup
of its own, as a Cilium agent runs on its node). It

- loads the lab's cgroup/connect4 load balancer (:class:`..ebpf.EbpfProxier`) and attaches it
  to ``--cgroup``, the cgroup the cluster's clients join: their ``connect()`` to a ClusterIP
  goes straight to an endpoint; nothing is written to iptables or nftables;
- watches Services and EndpointSlices (list, then watch from the list's resourceVersion,
  relisting on 410 Gone, as the node agent watches pods: :mod:`.daemon`'s client and loop);
- computes, for every ClusterIP Service port (TCP, UDP), its endpoints as kube-proxy picks
  them (ready ones; serving-and-terminating ones when none is ready) and programs the changed
  ones with batched map writes. Changes that arrive while a write runs are coalesced into the
  next one, as kube-proxy coalesces them, but without a minimum sync period: it programs at
  once;
- appends one JSON line per endpoint change to ``<state-dir>/programming.jsonl``:
  ``service`` (namespace/name), ``port`` (the service port's name as kube-proxy writes it),
  ``endpoint`` (ip:port), ``change`` (added/removed), ``trigger`` (wall seconds: the
  EndpointSlice's ``endpoints.kubernetes.io/last-change-trigger-time`` when the change came
  with one, else when this controller received the event), ``programmed`` (wall seconds when
  the map write returned) and ``seconds`` (their difference). The annotation comes from
  timestamps the API keeps to the second (a pod's condition times), so ``seconds`` may be
  up to 1 s longer than the truth where it is used; ``trigger_source`` says which applied;
- writes ``<state-dir>/ready.json`` once its first programming of both lists is done.

The computing part (:func:`parse_service`, :func:`parse_slice`, :func:`service_specs`,
:class:`Model`) is pure and unit-tested; it lives in :mod:`.ebpfmodel`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

from ....errors import DataplaneError
from .daemon import Api, list_and_watch, start_process, stop_on_signals
from .ebpfmodel import (
    TRIGGER_ANNOTATION,
    Model,
    ServiceInfo,
    SliceInfo,
    parse_service,
    parse_slice,
    parse_trigger,
    record,
    service_specs,
)

__all__ = [
    "READY_FILE",
    "RECORDS_FILE",
    "TRIGGER_ANNOTATION",
    "Controller",
    "Model",
    "ServiceInfo",
    "SliceInfo",
    "main",
    "parse_service",
    "parse_slice",
    "parse_trigger",
    "record",
    "service_specs",
]

log = logging.getLogger("pytest_dataplane.lab.ebpfctl")

READY_FILE: Final = "ready.json"
RECORDS_FILE: Final = "programming.jsonl"
SERVICES_PATH: Final = "/api/v1/services"
SLICES_PATH: Final = "/apis/discovery.k8s.io/v1/endpointslices"


class Controller:
    """The controller process: two watch threads feed one programming loop."""

    def __init__(
        self, kubeconfig: str, cgroup: str, state_dir: Path, cache_dir: Path | None = None
    ) -> None:
        from ..ebpf import EbpfProxier

        self.kubeconfig = kubeconfig
        self.state_dir = state_dir
        self.proxier = EbpfProxier(
            cgroup=cgroup, state_dir=state_dir, node_netns=None, cache_dir=cache_dir
        )
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.stopping = threading.Event()
        self.model = Model()
        self.listed: set[str] = set()
        self.full_sync = True
        self.records = state_dir / RECORDS_FILE

    def _watch(self, kind: str, path: str) -> None:
        def listed(data: dict[str, Any]) -> None:
            self.events.put(("list", kind, data.get("items") or [], time.time()))

        def changed(etype: str, obj: dict[str, Any]) -> None:
            self.events.put(("event", kind, etype, obj, time.time()))

        api = Api(self.kubeconfig, kind, program="pytest-dataplane-lab-ebpfctl")
        list_and_watch(
            api,
            path,
            stopping=self.stopping,
            on_list=listed,
            on_event=changed,
            what=kind,
            log=log,
            list_timeout=(5.0, 120.0),
        )

    def _apply(self, message: tuple[Any, ...]) -> None:
        if message[0] == "list":
            _, kind, items, seen = message
            if kind == "services":
                self.model.replace_services(items, seen)
            else:
                self.model.replace_slices(items, seen)
            if kind in self.listed:
                self.full_sync = True  # a relist: repair whatever drifted meanwhile
            self.listed.add(kind)
        else:
            _, kind, etype, obj, seen = message
            if kind == "services":
                self.model.service_event(etype, obj, seen)
            else:
                self.model.slice_event(etype, obj, seen)

    def _program(self) -> None:
        dirty, changes = self.model.take()
        full = self.full_sync
        self.full_sync = False
        try:
            result = self.proxier.sync(self.model.specs, None if full else dirty)
        except ValueError as exc:  # data the load balancer cannot hold; keep serving the rest
            log.error("programming failed: %s", exc)
            return
        programmed = time.time()
        if changes:
            lines = "".join(
                json.dumps(record(name, endpoint, pending, programmed)) + "\n"
                for name, endpoint, pending in changes
            )
            with self.records.open("a") as out:
                out.write(lines)
        log.info(
            "programmed %d service ports (%s), %d endpoint changes in %.1f ms: %s",
            len(self.model.specs) if full else len(dirty),
            "full" if full else "changed",
            len(changes),
            result.wall * 1000,
            result.detail,
        )

    def step(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for an event, take it and every other one queued, and
        program what they changed; returns whether both lists have been applied (until then
        nothing is programmed: a half-known cluster would remove the other half's services).
        """
        try:
            message = self.events.get(timeout=timeout)
        except queue.Empty:
            return len(self.listed) == 2
        self._apply(message)
        # Whatever else arrived meanwhile goes into the same programming: a burst of changes
        # costs one batched write, not one per event.
        while True:
            try:
                self._apply(self.events.get_nowait())
            except queue.Empty:
                break
        if len(self.listed) < 2:
            return False
        if self.model.dirty or self.full_sync:
            self._program()
        return True

    def run(self) -> int:
        """Attach the load balancer, watch, program until :meth:`stop`; 0 on a clean exit."""
        began = time.monotonic()
        self.proxier.start()
        try:
            for kind, path in (("services", SERVICES_PATH), ("slices", SLICES_PATH)):
                threading.Thread(
                    target=self._watch, args=(kind, path), name=f"watch-{kind}", daemon=True
                ).start()
            ready = False
            while not self.stopping.is_set():
                if self.step(0.5) and not ready:
                    ready = True
                    self._write_ready(time.monotonic() - began)
        finally:
            self.proxier.close()
        return 0

    def _write_ready(self, seconds: float) -> None:
        body = {
            "pid": os.getpid(),
            "ready_at": time.time(),
            "start_seconds": seconds,
            "service_ports": len(self.model.specs),
            "prog_id": self.proxier.prog_id,
        }
        temp = self.state_dir / f".{READY_FILE}.tmp"
        temp.write_text(json.dumps(body))
        temp.replace(self.state_dir / READY_FILE)  # atomic: a reader sees all of it or nothing
        log.info("ready in %.2f s: %d service ports programmed", seconds, len(self.model.specs))

    def stop(self) -> None:
        """Ask :meth:`run` to detach the load balancer and return."""
        self.stopping.set()


def main(argv: list[str] | None = None) -> int:
    """The controller's command line."""
    parser = argparse.ArgumentParser(description="pytest-dataplane lab eBPF service controller")
    parser.add_argument("--kubeconfig", required=True, help="Kubeconfig of the controller")
    parser.add_argument("--cgroup", required=True, help="cgroup v2 dir of the clients")
    parser.add_argument("--state-dir", required=True, help="Dir for bpffs, records, ready.json")
    parser.add_argument("--cache-dir", default=None, help="Cache of the compiled BPF object")
    parser.add_argument("--log-level", default="INFO", help="Logging level (default INFO)")
    args = parser.parse_args(argv)
    # SIGTERM when the lab's owner dies: the controller then detaches and unmounts.
    start_process(args.log_level)
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    controller = Controller(
        args.kubeconfig,
        args.cgroup,
        state_dir,
        None if args.cache_dir is None else Path(args.cache_dir),
    )
    stop_on_signals(controller.stop)
    try:
        return controller.run()
    except DataplaneError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
