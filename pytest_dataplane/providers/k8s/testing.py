"""An in-memory :class:`~pytest_dataplane.providers.k8s.api.KubeApi` for tests.

It stores objects, records every call, matches label selectors the way the API server does
(equality, inequality, existence), bumps ``generation`` on spec changes, replays a scripted
watch stream, and lets a test play a controller through ``reactors`` (called after each
create/patch/delete). It talks to no server; code that runs against it runs against a real
one through :class:`~pytest_dataplane.providers.k8s.api.KubernetesApi` unchanged.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .api import ExecResult, NotFound

__all__ = ["Call", "MemoryApi", "matches_selector"]

CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PersistentVolume",
        "StorageClass",
    }
)


def matches_selector(labels: Mapping[str, str], selector: str | None) -> bool:
    """Whether ``labels`` match a label selector such as ``a=b,c!=d,e,!f``."""
    if not selector:
        return True
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "==" in term or "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass(frozen=True)
class Call:
    """One recorded call: verb, kind, namespace, name and the body or argv sent."""

    verb: str
    kind: str
    namespace: str | None
    name: str | None
    body: Any = None


def _merge(base: Any, patch: Any) -> Any:
    """JSON merge patch, with strategic-merge's merge-by-name for lists of named dicts."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _merge(base.get(key), value)
        return out
    if (
        isinstance(base, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in base + patch)
    ):
        by_name = {x["name"]: x for x in base}
        for item in patch:
            by_name[item["name"]] = _merge(by_name.get(item["name"]), item)
        return list(by_name.values())
    return copy.deepcopy(patch)


@dataclass
class MemoryApi:
    """In-memory API server; see the module docstring."""

    version: str = "v1.31.2"
    objects: dict[tuple[str, str, str | None, str], dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    watch_script: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    exec_handler: Callable[[str, str, str | None, list[str]], ExecResult] | None = None
    pod_logs: dict[str, str] = field(default_factory=dict)
    reactors: list[Callable[[MemoryApi, str, dict[str, Any]], None]] = field(default_factory=list)
    unsupported_collections: set[str] = field(default_factory=set)
    closed: bool = False
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _watches_stopped: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def _key(
        api_version: str, kind: str, namespace: str | None, name: str
    ) -> tuple[str, str, str | None, str]:
        return (api_version, kind, None if kind in CLUSTER_SCOPED else namespace, name)

    def add(self, *objects: Mapping[str, Any]) -> None:
        """Put objects in place without recording calls (the cluster's initial state)."""
        for obj in objects:
            meta = obj.get("metadata") or {}
            stored = copy.deepcopy(dict(obj))
            stored.setdefault("metadata", {}).setdefault("generation", 1)
            stored["metadata"]["resourceVersion"] = str(next(self._rv))
            self.objects[
                self._key(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
            ] = stored

    def _react(self, verb: str, obj: dict[str, Any]) -> None:
        for reactor in list(self.reactors):
            reactor(self, verb, obj)

    def namespaced(self, api_version: str, kind: str) -> bool:
        return kind not in CLUSTER_SCOPED

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        with self._lock:
            self.calls.append(Call("get", kind, namespace, name))
            key = self._key(api_version, kind, namespace, name)
            if key not in self.objects:
                raise NotFound(f"{kind} {namespace}/{name} not found")
            return copy.deepcopy(self.objects[key])

    def list_items(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        with self._lock:
            self.calls.append(Call("list", kind, namespace, None, label_selector))
            items = [
                copy.deepcopy(obj)
                for (version, k, ns, _), obj in sorted(
                    self.objects.items(), key=lambda kv: str(kv[0])
                )
                if version == api_version
                and k == kind
                and (namespace is None or ns == namespace)
                and matches_selector(
                    (obj.get("metadata") or {}).get("labels") or {}, label_selector
                )
            ]
            return items, str(next(self._rv))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            meta = obj.get("metadata") or {}
            self.calls.append(
                Call(
                    "create",
                    obj["kind"],
                    meta.get("namespace"),
                    meta.get("name"),
                    copy.deepcopy(dict(obj)),
                )
            )
            key = self._key(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
            if key in self.objects:
                raise ValueError(f"{obj['kind']} {meta['name']} already exists (409)")
            self.add(obj)
            stored = self.objects[key]
            self._react("create", stored)
            return copy.deepcopy(self.objects[key])

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            meta = obj.get("metadata") or {}
            self.calls.append(
                Call(
                    "apply",
                    obj["kind"],
                    meta.get("namespace"),
                    meta.get("name"),
                    copy.deepcopy(dict(obj)),
                )
            )
            key = self._key(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
            if key in self.objects:
                self.objects[key] = _merge(self.objects[key], copy.deepcopy(dict(obj)))
            else:
                self.add(obj)
            self._react("apply", self.objects[key])
            return copy.deepcopy(self.objects[key])

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        strategic: bool = True,
    ) -> dict[str, Any]:
        with self._lock:
            self.calls.append(
                Call(
                    "patch" if strategic else "merge-patch",
                    kind,
                    namespace,
                    name,
                    copy.deepcopy(dict(body)),
                )
            )
            key = self._key(api_version, kind, namespace, name)
            if key not in self.objects:
                raise NotFound(f"{kind} {namespace}/{name} not found")
            before = self.objects[key]
            after = _merge(before, copy.deepcopy(dict(body)))
            if after.get("spec") != before.get("spec"):
                after["metadata"]["generation"] = before["metadata"].get("generation", 1) + 1
            after["metadata"]["resourceVersion"] = str(next(self._rv))
            self.objects[key] = after
            self._react("patch", after)
            return copy.deepcopy(after)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        with self._lock:
            self.calls.append(Call("delete", kind, namespace, name))
            obj = self.objects.pop(self._key(api_version, kind, namespace, name), None)
            if obj is not None:
                self._react("delete", obj)
            return obj is not None

    def delete_collection(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        label_selector: str,
        grace_period_seconds: int | None = None,
    ) -> None:
        # The call's body: the selector, with the grace period when one was given.
        body: Any = (
            label_selector
            if grace_period_seconds is None
            else (label_selector, grace_period_seconds)
        )
        with self._lock:
            self.calls.append(Call("deletecollection", kind, namespace, None, body))
            if kind in self.unsupported_collections:
                items, _ = self.list_items(
                    api_version, kind, namespace, label_selector=label_selector
                )
                for item in items:
                    self.delete(api_version, kind, item["metadata"]["name"], namespace)
                return
            for key in [
                k
                for k, obj in self.objects.items()
                if k[0] == api_version
                and k[1] == kind
                and k[2] == namespace
                and matches_selector(
                    (obj.get("metadata") or {}).get("labels") or {}, label_selector
                )
            ]:
                self._react("delete", self.objects.pop(key))

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        resource_version: str,
        timeout: float,
        label_selector: str | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            self.calls.append(Call("watch", kind, namespace, None, resource_version))
            script, self.watch_script = self.watch_script, []
        for event_type, obj in script:
            # The store follows the stream, as a real server's would.
            meta = obj.get("metadata") or {}
            if not matches_selector(meta.get("labels") or {}, label_selector):
                continue
            key = self._key(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
            with self._lock:
                if event_type == "DELETED":
                    self.objects.pop(key, None)
                elif event_type in ("ADDED", "MODIFIED"):
                    self.objects[key] = copy.deepcopy(obj)
            yield event_type, obj
        self._watches_stopped.wait(min(timeout, 0.05))

    def stop_watches(self) -> None:
        self._watches_stopped.set()

    def exec(
        self, namespace: str, pod: str, container: str | None, argv: list[str], *, timeout: float
    ) -> ExecResult:
        with self._lock:
            self.calls.append(Call("exec", "Pod", namespace, pod, list(argv)))
        if self.exec_handler is None:
            return ExecResult("", "exec not scripted", 1)
        return self.exec_handler(namespace, pod, container, list(argv))

    def logs(
        self,
        namespace: str,
        pod: str,
        container: str | None,
        *,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
    ) -> str:
        with self._lock:
            self.calls.append(Call("logs", "Pod", namespace, pod, since_seconds))
        return self.pod_logs.get(pod, "")

    def server_version(self) -> str:
        return self.version

    def close(self) -> None:
        self.closed = True

    def verbs(self, kind: str | None = None) -> list[str]:
        """Verbs called so far (for ``kind`` only when given), in order."""
        return [c.verb for c in self.calls if kind is None or c.kind == kind]
