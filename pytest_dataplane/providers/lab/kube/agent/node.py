"""The agent itself: the Node's registration and heartbeats, the pod watch, a worker per pod,
and the command line (``python -m pytest_dataplane.providers.lab.kube.agent``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time
from typing import Any, Final
from urllib.parse import quote

from .....errors import DataplaneError
from ..daemon import Api, ApiError, list_and_watch, start_process, stop_on_signals
from .config import NodeConfig, PodAddresses
from .containers import MIN_KILL_GRACE
from .pods import PodWorker
from .spares import Spares
from .status import (
    LEASE_DURATION,
    LEASE_NAMESPACE,
    NOT_READY_TAINT,
    lease_body,
    lift_not_ready_taint,
    micro_time,
    node_body,
    node_status,
)

__all__ = ["Agent", "main"]

log = logging.getLogger("pytest_dataplane.lab.agent")

LEASE_RENEW: Final = 10.0  # a quarter of the duration, as the kubelet renews
NODE_STATUS_PERIOD: Final = 60.0  # heartbeats in the Node's conditions (the Lease is the beat)
SPARES: Final = 2  # backends kept started, waiting to become the next pods


class Agent:
    """The node agent: registration, heartbeats, the pod watch and the pod workers."""

    def __init__(self, config: NodeConfig, kubeconfig: str) -> None:
        self.config = config
        self.kubeconfig = kubeconfig
        self.addresses = PodAddresses(config.pod_cidr, config.gateway)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self.cleanup_errors: list[str] = []
        self.node_api = Api(kubeconfig, "node")
        self.watch_api = Api(kubeconfig, "watch")
        self.status_api = Api(kubeconfig, "pods")
        self.spares = Spares(SPARES, config.run_dir)
        self.spares.start()
        # Imported now rather than by the first pod, whose start it would delay by ~0.1 s.
        from pyroute2 import IPRoute  # noqa: F401

        from ... import _proc, netns  # noqa: F401

        self.node_uid: str | None = None
        self.ready_since = time.time()
        self.version = ""

    # ------------------------------------------------------------------ node and lease

    def register(self) -> None:
        """Create the Node (or take over the existing one) and write its status."""
        api = self.node_api
        self.version = str(api.request("GET", "/version").get("gitVersion") or "")
        pods = self.config.max_pods or self.addresses.capacity
        body = node_body(self.config, pods=pods, wall=time.time(), version=self.version)
        path = f"/api/v1/nodes/{quote(self.config.name)}"
        try:
            node = api.request("POST", "/api/v1/nodes", body=body)
            log.info("registered node %s", self.config.name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = api.request("GET", path)
            cidr = (node.get("spec") or {}).get("podCIDR")
            if cidr and cidr != self.config.pod_cidr:
                raise DataplaneError(
                    f"node {self.config.name} exists with podCIDR {cidr}, not "
                    f"{self.config.pod_cidr}"
                ) from None
            self._patch_node_status()
            log.info("took over existing node %s", self.config.name)
        self.node_uid = str(node["metadata"]["uid"])
        while (patch := lift_not_ready_taint(node)) is not None:
            try:
                api.request("PATCH", path, body=patch, content_type="application/merge-patch+json")
                log.info("lifted the %s taint (the node is Ready)", NOT_READY_TAINT)
                break
            except ApiError as exc:
                if exc.status != 409:
                    raise
                node = api.request("GET", path)  # changed meanwhile: look again

    def _patch_node_status(self) -> None:
        api = self.node_api
        status = node_status(
            self.config,
            pods=self.config.max_pods or self.addresses.capacity,
            wall=time.time(),
            ready_since=self.ready_since,
            version=self.version,
        )
        api.request(
            "PATCH",
            f"/api/v1/nodes/{quote(self.config.name)}/status",
            body={"status": status},
            content_type="application/strategic-merge-patch+json",
        )

    def _renew_lease(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        api = self.node_api
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        path = f"{leases}/{quote(self.config.name)}"
        if lease is None:
            try:
                lease = api.request("GET", path)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                body = lease_body(self.config.name, self.node_uid, wall=time.time())
                return api.request("POST", leases, body=body)
        lease["spec"]["holderIdentity"] = self.config.name
        lease["spec"]["leaseDurationSeconds"] = LEASE_DURATION
        lease["spec"]["renewTime"] = micro_time(time.time())
        # An update carrying the resourceVersion read: a conflict means someone else wrote it.
        return api.request("PUT", path, body=lease)

    def _heartbeats(self) -> None:
        lease: dict[str, Any] | None = None
        next_status = time.monotonic() + NODE_STATUS_PERIOD
        while not self.stopping.is_set():
            try:
                lease = self._renew_lease(lease)
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)
                lease = None  # read it again: it may have changed or gone
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + NODE_STATUS_PERIOD
                try:
                    self._patch_node_status()
                except Exception as exc:
                    log.warning("node status update failed: %s", exc)
            self.stopping.wait(LEASE_RENEW if lease is not None else 1.0)

    # ------------------------------------------------------------------ pods

    def _selector(self) -> str:
        return f"spec.nodeName={self.config.name}"

    def _listed(self, data: dict[str, Any]) -> None:
        pods = data.get("items") or []
        present = {str(p["metadata"]["uid"]) for p in pods}
        with self.lock:
            vanished = [w for uid, w in self.workers.items() if uid not in present]
        for worker in vanished:
            worker.post("gone")
        for pod in pods:
            self._dispatch("MODIFIED", pod)

    def _watch(self) -> None:
        list_and_watch(
            self.watch_api,
            "/api/v1/pods",
            query={"fieldSelector": self._selector()},
            stopping=self.stopping,
            on_list=self._listed,
            on_event=self._dispatch,
            what="pod",
            log=log,
        )

    def _dispatch(self, kind: str, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        with self.lock:
            if self.stopping.is_set():
                return
            worker = self.workers.get(uid)
            if worker is None:
                if kind == "DELETED" or uid in self.finished:
                    return
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.post("gone" if kind == "DELETED" else "pod", pod)

    def worker_done(self, worker: PodWorker) -> None:
        """Forget a pod worker whose thread ends (its pod is not taken up again)."""
        with self.lock:
            self.workers.pop(worker.uid, None)
            self.finished.add(worker.uid)

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Register, start the heartbeats and the pod watch, and serve until :meth:`stop`."""
        delay = 0.2
        while not self.stopping.is_set():
            try:
                self.register()
                break
            except ApiError as exc:  # the API server is not up (or not ready) yet
                log.warning("cannot register node %s yet: %s", self.config.name, exc)
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
        threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True).start()
        threading.Thread(target=self._watch, name="pod-watch", daemon=True).start()
        self.stopping.wait()
        return self.shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to stop every pod and return."""
        self.stopping.set()

    def shutdown(self) -> int:
        """Stop every pod (SIGTERM, SIGKILL 2 s later) and remove its namespace; 0 if all
        went, 1 if something could not be removed."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.post("shutdown")
        for worker in workers:
            worker.thread.join(MIN_KILL_GRACE + 10.0)
            if worker.thread.is_alive():
                self.cleanup_errors.append(f"pod {worker.key}: did not stop")
        self.spares.close()
        for api in (self.node_api, self.watch_api, self.status_api):
            with contextlib.suppress(Exception):  # closing pools cannot matter now
                api.close()
        for error in self.cleanup_errors:
            log.error("cleanup: %s", error)
        return 1 if self.cleanup_errors else 0


def main(argv: list[str] | None = None) -> int:
    """The agent's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_dataplane.providers.lab.kube.agent",
        description="pytest-dataplane lab node agent",
    )
    parser.add_argument("--kubeconfig", required=True, help="Kubeconfig of the node's identity")
    parser.add_argument("--node-config", required=True, help="The node config JSON file")
    parser.add_argument("--parent", type=int, default=None, help="Exit if this pid is gone")
    parser.add_argument("--log-level", default="INFO", help="Logging level (default INFO)")
    args = parser.parse_args(argv)
    if not start_process(args.log_level, parent=args.parent):
        return 0
    try:
        config = NodeConfig.load(args.node_config)
    except ValueError as exc:
        parser.error(str(exc))
    agent = Agent(config, args.kubeconfig)
    stop_on_signals(agent.stop)
    try:
        return agent.run()
    except DataplaneError as exc:
        log.error("%s", exc)
        agent.shutdown()
        return 1
