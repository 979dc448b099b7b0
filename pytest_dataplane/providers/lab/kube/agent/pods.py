"""One worker per pod: its network namespace, address, processes and status.

Over 500 lines, on purpose: the module is one class, a single thread's state machine (see
:class:`PodWorker`). Every field of a pod's life belongs to that thread, which is what makes
it safe without locks; split across modules, its transitions (start, exit and restart,
deletion, SIGTERM and SIGKILL deadlines, status writes, removal) could no longer be read
together. The pure parts it relies on (plans, schedules, statuses) live in
:mod:`.containers` and :mod:`.status`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .....errors import DataplaneError
from ..daemon import ApiError, status_code
from .config import veth_name
from .containers import (
    BACKOFF_RESET,
    MIN_KILL_GRACE,
    ContainerPlan,
    PodConfigError,
    StopSchedule,
    plan_container,
    pod_grace,
    restart_delay,
    should_restart,
    stop_schedule,
)
from .spares import start_backend
from .status import ContainerRun, ContainerView, Terminated, ended_phase, pod_status

if TYPE_CHECKING:
    from .node import Agent

__all__ = ["PodWorker"]

log = logging.getLogger("pytest_dataplane.lab.agent")


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"


class PodWorker:
    """Owns one pod: its namespace, address, processes and status, on one thread.

    Everything that happens to the pod (a new version of the object, a backend ready or
    exited, the pod gone, the agent stopping) arrives as a message on its queue; timers
    (back-offs, SIGTERM and SIGKILL deadlines, retries) are the queue's wait timeout. The
    processes are started from this thread, which lives until they are gone: their parent-
    death signal follows the thread that forked them.
    """

    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.agent = agent
        self.pod = pod
        self.uid = str(meta["uid"])
        self.name = str(meta["name"])
        self.namespace = str(meta.get("namespace") or "default")
        self.key = f"{self.namespace}/{self.name}"
        self.messages: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.netns: str | None = None
        self.ip: str | None = None
        self.start_wall = time.time()
        self.seen = time.monotonic()  # for the start-up timings in the log
        self.sandbox_seconds: float | None = None
        self.containers: list[ContainerRun] = []
        self.conditions: dict[str, tuple[bool, float]] = {}
        self.last_status: dict[str, Any] | None = None
        self.status_retry_at: float | None = None
        self.sandbox_error: str | None = None
        self.sandbox_retry_at: float | None = None
        self.sandbox_failures = 0
        self.terminating = False
        self.deletion_seen: float | None = None
        self.grace: float | None = None
        self.api_gone = False  # the Pod object is gone (or the agent is stopping): no API calls
        self.delete_retry_at: float | None = None
        self.passive = False  # an ended pod found at start: never write its status
        self.warned_images: set[str] = set()
        self.done = False
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.key}", daemon=True)

    # ------------------------------------------------------------------ messages

    def start(self) -> None:
        """Start the worker's thread."""
        self.thread.start()

    def post(self, *message: Any) -> None:
        """Queue a message for the worker (see the class docstring)."""
        self.messages.put(message)

    def _run(self) -> None:
        try:
            self._begin()
            while True:
                self._tick()
                if self.done:
                    break
                deadline = self._next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    message = self.messages.get(timeout=timeout)
                except queue.Empty:
                    continue
                self._handle(message)
                while True:  # take what queued meanwhile: one status write for all of it
                    try:
                        self._handle(self.messages.get_nowait())
                    except queue.Empty:
                        break
        except Exception:
            log.exception("pod %s: worker failed; stopping its processes", self.key)
            self._kill_all(signal.SIGKILL)
            self._remove_sandbox()
        finally:
            self.agent.worker_done(self)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "pod":
            self.pod = message[1]
            if (self.pod.get("metadata") or {}).get("deletionTimestamp"):
                self._begin_termination()
            images = {
                str(c.get("name")): str(c.get("image") or "")
                for c in (self.pod.get("spec") or {}).get("containers") or []
            }
            for each in self.containers:
                image = images.get(each.spec_name, each.spec_image)
                if image != each.spec_image and image not in self.warned_images:
                    # Deployments roll images with new pods; an image changed in place on a
                    # running pod is a case the lab does not handle: say so, once.
                    self.warned_images.add(image)
                    log.warning(
                        "pod %s: image of %s changed to %s in place; the lab agent keeps "
                        "running %s (replace the pod instead)",
                        self.key,
                        each.spec_name,
                        image,
                        each.spec_image,
                    )
        elif kind in ("gone", "shutdown"):
            self.api_gone = True
            self._begin_termination(immediate=True)
        elif kind == "ready":
            container = self._container(message[1], message[2])
            if container is not None and container.process is not None:
                container.ready = True
                log.info(
                    "pod %s: %s ready %.0f ms after the pod was seen (namespace %.0f ms)",
                    self.key,
                    container.spec_name,
                    1000 * (time.monotonic() - self.seen),
                    1000 * (self.sandbox_seconds or 0.0),
                )
        elif kind == "exited":
            container = self._container(message[1], message[2])
            if container is not None:
                self._exited(container, int(message[3]), float(message[4]))

    def _container(self, name: str, generation: int) -> ContainerRun | None:
        for container in self.containers:
            if container.spec_name == name and container.generation == generation:
                return container
        return None  # a message about a run that has been replaced

    # ------------------------------------------------------------------ life cycle

    def _begin(self) -> None:
        spec = self.pod.get("spec") or {}
        meta = self.pod.get("metadata") or {}
        previous = {
            str(s.get("name")): int(s.get("restartCount") or 0)
            for s in (self.pod.get("status") or {}).get("containerStatuses") or []
        }
        for container in spec.get("containers") or []:
            name = str(container.get("name"))
            plan: ContainerPlan | None = None
            error: PodConfigError | None = None
            try:
                plan = plan_container(container)
            except PodConfigError as exc:
                error = exc
                log.warning("pod %s: container %s cannot run: %s", self.key, name, exc)
            self.containers.append(
                ContainerRun(
                    name,
                    str(container.get("image") or ""),
                    plan,
                    error,
                    restart_count=previous.get(name, 0),
                )
            )
        if spec.get("initContainers"):
            for container in self.containers:
                container.plan = None
                container.error = PodConfigError(
                    "CreateContainerConfigError",
                    "init containers are not supported by the lab node agent",
                )
        phase = (self.pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            # A pod that has ended runs nothing again; its status stays as written, and it
            # is removed from the API when it is deleted.
            self.passive = True
        if meta.get("deletionTimestamp"):
            self._begin_termination()
        if self.passive or self.terminating:
            return
        self._create_sandbox()
        if self.netns is not None:
            for container in self.containers:
                if container.plan is not None:
                    self._start(container)

    def _create_sandbox(self) -> None:
        from ... import netns

        agent = self.agent
        previous_ip = (self.pod.get("status") or {}).get("podIP")
        try:
            with agent.lock:
                if previous_ip and agent.addresses.reserve(str(previous_ip)):
                    ip = str(previous_ip)
                else:
                    ip = agent.addresses.allocate()
            self.ip = ip
            name = agent.config.pod_netns(self.name, self.uid)
            netns.delete(name)  # left by an agent that was killed: start clean
            netns.add_pod_netns(
                name,
                node_netns=agent.config.netns,
                bridge=agent.config.bridge,
                veth=veth_name(agent.config.prefix, agent.addresses.offset(ip)),
                ip=ip,
                prefixlen=agent.addresses.prefixlen,
                gateway=agent.config.gateway,
            )
            self.netns = name
            self.sandbox_seconds = time.monotonic() - self.seen
            self.sandbox_error = None
            self.sandbox_retry_at = None
        except (OSError, DataplaneError) as exc:
            self.sandbox_failures += 1
            self.sandbox_error = f"failed to create the pod's network namespace: {exc}"
            log.error("pod %s: %s", self.key, self.sandbox_error)
            self._remove_sandbox()
            delay = min(2.0 ** (self.sandbox_failures - 1), 30.0)
            self.sandbox_retry_at = time.monotonic() + delay

    def _remove_sandbox(self) -> None:
        from ... import netns

        name = self.netns or self.agent.config.pod_netns(self.name, self.uid)
        try:
            netns.delete(name)
        except (OSError, DataplaneError) as exc:
            log.error("pod %s: could not remove namespace %s: %s", self.key, name, exc)
            self.agent.cleanup_errors.append(f"{name}: {exc}")
        self.netns = None
        if self.ip is not None:
            with self.agent.lock:
                self.agent.addresses.release(self.ip)
            self.ip = None

    def _start(self, container: ContainerRun) -> None:
        plan = container.plan
        if plan is None or self.netns is None:  # pragma: no cover - checked by callers
            return
        from ... import _proc

        container.generation += 1
        container.ready = False
        container.terminated = None
        container.restart_at = None
        log_dir = Path(self.agent.config.run_dir) / f"{self.namespace}_{self.name}_{self.uid}"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{plan.name}.log"
        process = self.agent.spares.take()
        if process is not None and process.stdin is not None:
            try:
                netns_path = f"{_proc.NETNS_DIR}/{self.netns}"
                process.stdin.write(plan.spare_line(self.name, netns_path, str(log_path)))
                process.stdin.close()
            except OSError:  # it died meanwhile: start one the slow way
                process.kill()
                process.wait()
                if process.stdout is not None:
                    process.stdout.close()
                process = None
        if process is None:
            argv = _proc.in_netns(self.netns, plan.argv(self.name, os.getpid()))
            try:
                process = start_backend(argv, log_path, stdin=subprocess.DEVNULL)
            except OSError as exc:
                container.error = PodConfigError("RunContainerError", f"cannot start: {exc}")
                return
        container.process = process
        container.started_at = time.time()
        container.started_mono = time.monotonic()
        threading.Thread(
            target=self._follow,
            args=(container.spec_name, container.generation, process),
            name=f"out-{self.key}/{container.spec_name}",
            daemon=True,
        ).start()

    def _follow(self, name: str, generation: int, process: subprocess.Popen[bytes]) -> None:
        stdout = process.stdout
        if stdout is None:  # pragma: no cover - PIPE given
            return
        if stdout.readline().startswith(b"READY"):
            self.post("ready", name, generation)
        stdout.read()  # until the backend exits
        stdout.close()
        code = process.wait()
        self.post("exited", name, generation, code, time.time())

    def _exited(self, container: ContainerRun, code: int, finished: float) -> None:
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        run = Terminated(
            exit_code=exit_code,
            reason="Completed" if exit_code == 0 else "Error",
            started_at=container.started_at or finished,
            finished_at=finished,
            container_id=container.container_id(self.uid),
        )
        container.process = None
        container.ready = False
        policy = str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")
        if self.terminating or not should_restart(policy, exit_code):
            container.terminated = run
            if not self.terminating:
                log.info("pod %s: container %s exited %d", self.key, container.spec_name, code)
            return
        if time.monotonic() - container.started_mono > BACKOFF_RESET:
            container.crashes = 0
        container.crashes += 1
        container.restart_count += 1
        container.last_terminated = run
        delay = restart_delay(container.crashes)
        log.warning(
            "pod %s: container %s exited %d; restart %d in %g s",
            self.key,
            container.spec_name,
            exit_code,
            container.restart_count,
            delay,
        )
        container.restart_at = time.monotonic() + delay

    def _begin_termination(self, *, immediate: bool = False) -> None:
        now = time.monotonic()
        grace = 0.0 if immediate else pod_grace(self.pod)
        if self.terminating and self.grace is not None and grace >= self.grace:
            return  # a later deletion may only shorten the grace period
        if not self.terminating:
            self.deletion_seen = now
            if immediate:
                log.info("pod %s: stopping now (gone from the API, or the agent stops)", self.key)
            else:
                log.info("pod %s: deleted, grace %g s", self.key, grace)
        self.terminating = True
        self.grace = grace
        seen = now if immediate else (self.deletion_seen or now)
        for container in self.containers:
            container.restart_at = None
            if immediate:
                schedule = StopSchedule(0.0, MIN_KILL_GRACE)
            else:
                plan = container.plan
                if plan is not None and plan.prestop_unsupported:
                    log.warning(
                        "pod %s: %s not run: %s",
                        self.key,
                        container.spec_name,
                        plan.prestop_unsupported,
                    )
                schedule = stop_schedule(
                    grace,
                    plan.prestop_sleep if plan else None,
                    plan.shutdown_delay if plan else None,
                )
            term_at, kill_at = seen + schedule.term_after, seen + schedule.kill_after
            container.term_at = min(term_at, container.term_at or term_at)
            container.kill_at = min(kill_at, container.kill_at or kill_at)

    def _kill_all(self, sig: int) -> None:
        for container in self.containers:
            if container.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    container.process.send_signal(sig)

    def _tick(self) -> None:
        """Act on every deadline that has passed, then write the status if it changed."""
        now = time.monotonic()
        if self.sandbox_retry_at is not None and now >= self.sandbox_retry_at:
            if self.terminating:
                self.sandbox_retry_at = None
            else:
                self._create_sandbox()
                if self.netns is not None:
                    for container in self.containers:
                        if container.plan is not None:
                            self._start(container)
        for container in self.containers:
            restart_due = container.restart_at is not None and now >= container.restart_at
            if restart_due and self.netns is not None and not self.terminating:
                self._start(container)
            process = container.process
            if process is None:
                continue
            kill_due = container.kill_at is not None and now >= container.kill_at
            term_due = container.term_at is not None and now >= container.term_at
            if kill_due and not container.kill_sent:
                container.kill_sent = True
                process.kill()
            elif term_due and not container.term_sent:
                container.term_sent = True
                # The backend stops accepting connections on SIGTERM: no longer ready.
                container.ready = False
                process.terminate()
        if self.terminating and all(c.process is None for c in self.containers):
            self._finish()
            return
        self._write_status()

    def _next_deadline(self) -> float | None:
        deadlines = [self.sandbox_retry_at, self.status_retry_at, self.delete_retry_at]
        for container in self.containers:
            deadlines.append(container.restart_at)
            if container.process is not None:
                if not container.term_sent:
                    deadlines.append(container.term_at)
                if not container.kill_sent:
                    deadlines.append(container.kill_at)
        pending = [d for d in deadlines if d is not None]
        return min(pending) if pending else None

    # ------------------------------------------------------------------ status and deletion

    def _views(self) -> list[ContainerView]:
        return [c.view(self.uid) for c in self.containers]

    def _status_body(self, phase: str | None = None) -> dict[str, Any]:
        status = self.pod.get("status") or {}
        conditions = {str(c.get("type")): c for c in status.get("conditions") or []}
        gates = [
            str(g.get("conditionType"))
            for g in (self.pod.get("spec") or {}).get("readinessGates") or []
        ]
        views = self._views()
        body = pod_status(
            containers=views,
            restart_policy=str((self.pod.get("spec") or {}).get("restartPolicy") or "Always"),
            pod_ip=self.ip,
            host_ip=self.agent.config.internal_ip,
            start_time=self.start_wall,
            wall=time.time(),
            previous=self.conditions,
            sandbox_ready=self.netns is not None,
            scheduled="PodScheduled" in conditions,
            readiness_gates=gates,
            gate_status={g: conditions.get(g, {}).get("status") == "True" for g in gates},
            phase=phase,
        )
        if self.sandbox_error:
            for container in body["containerStatuses"]:
                waiting = container["state"].get("waiting")
                if waiting is not None and waiting.get("reason") == "ContainerCreating":
                    waiting["message"] = self.sandbox_error
        return body

    def _write_status(self, phase: str | None = None) -> None:
        if self.api_gone or self.passive:
            return
        if self.status_retry_at is not None and time.monotonic() < self.status_retry_at:
            return
        body = self._status_body(phase)
        if body == self.last_status:
            return
        patch = {"metadata": {"uid": self.uid}, "status": body}
        try:
            self.agent.status_api.request(
                "PATCH",
                _pod_path(self.namespace, self.name) + "/status",
                body=patch,
                content_type="application/strategic-merge-patch+json",
            )
        except ApiError as exc:
            code = status_code(exc)
            if code in (404, 409, 422):
                # Gone, or a different pod of the same name now: this one is no more.
                log.info("pod %s: status write refused (%s); treating it as gone", self.key, code)
                self.post("gone")
                return
            log.warning("pod %s: status write failed (%s); retrying in 1 s", self.key, exc)
            self.status_retry_at = time.monotonic() + 1.0
            return
        self.status_retry_at = None
        self.last_status = body
        wall = time.time()
        for condition in body["conditions"]:
            ok = condition["status"] == "True"
            before = self.conditions.get(condition["type"])
            if before is None or before[0] != ok:
                self.conditions[condition["type"]] = (ok, wall)

    def _finish(self) -> None:
        """Every process is gone: write the final status, remove the namespace, delete the Pod."""
        if not self.api_gone and self.delete_retry_at is None:
            views = self._views()
            self._write_status(phase=ended_phase(views) if views else "Failed")
        if self.netns is not None or self.ip is not None:
            self._remove_sandbox()
        if self.api_gone:
            self.done = True
            return
        if self.delete_retry_at is not None and time.monotonic() < self.delete_retry_at:
            return
        try:
            self.agent.status_api.request(
                "DELETE",
                _pod_path(self.namespace, self.name),
                # Options in the body, which the API server reads instead of the query.
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
        except ApiError as exc:
            if status_code(exc) not in (404, 409):
                log.warning("pod %s: delete failed (%s); retrying in 1 s", self.key, exc)
                self.delete_retry_at = time.monotonic() + 1.0
                return
        log.info("pod %s: removed", self.key)
        self.done = True
