"""The lab's node agent: it plays the kubelet for one node of a lab Kubernetes cluster.

Run as ``python -m pytest_dataplane.providers.lab.kube.agent --kubeconfig PATH --node-config
PATH`` (the control plane starts one per node, in that node's network namespace). It

- registers the Node (InternalIP, capacity, podCIDR, a Ready condition with heartbeats) and
  renews its Lease in ``kube-node-lease`` as a kubelet does (every 10 s, for 40 s);
- watches the pods bound to the node (a field selector), resuming from the last
  resourceVersion and relisting when the API answers 410 Gone;
- runs each pod in a network namespace of its own on the node's bridge, with an address from
  the node's pod CIDR, each container as the lab backend process
  (:mod:`pytest_dataplane.providers.lab.backend`), whose version label comes from the image
  (``backend:v2`` answers ``X-Version: v2``); the Kubernetes e2e image ``agnhost`` running
  ``netexec`` (what the kind and kubeconfig providers deploy) runs as the same backend, which
  answers ``/hostname`` and every other path with the pod's name, as netexec's ``/hostname``
  does, on netexec's ``--http-port``, keeping netexec's ``--delay-shutdown``; the pod is
  Ready once every backend listens
  (each prints ``READY`` on its stdout when its socket accepts connections); two spare
  backends wait ready-imported (``backend --spare``), so a pod does not wait for an
  interpreter to start;
- restarts containers that exit as the pod's restart policy says, with the kubelet's back-off;
- on deletion keeps the pod serving through its grace period (or its preStop sleep), then
  stops the processes (SIGTERM, SIGKILL when the time is up), removes the pod's namespace and
  deletes the Pod, as a kubelet finalises it.

The computing part is pure and unit-tested: :mod:`.config` (the node's configuration and pod
addresses), :mod:`.containers` (images, container plans, the agnhost netexec arguments, stop
and restart schedules) and :mod:`.status` (pod statuses, the Node and its Lease). The I/O part
is one thread per purpose, each with its own API client (:mod:`..daemon`): the heartbeats
(Node status and Lease) and the pod watch in :mod:`.node`, one worker per pod that owns the
pod's processes and namespace and writes its status (:mod:`.pods`), and the spare backends
(:mod:`.spares`).
"""

from __future__ import annotations

from .config import NodeConfig, PodAddresses, veth_name
from .containers import (
    ACCEPTED_IMAGES,
    ContainerPlan,
    PodConfigError,
    StopSchedule,
    image_ref,
    image_version,
    netexec_args,
    plan_container,
    pod_grace,
    prestop_sleep,
    restart_delay,
    should_restart,
    stop_schedule,
)
from .node import Agent, main
from .status import (
    ContainerView,
    Terminated,
    lease_body,
    lift_not_ready_taint,
    node_body,
    node_status,
    pod_phase,
    pod_status,
    rfc3339,
)

__all__ = [
    "ACCEPTED_IMAGES",
    "Agent",
    "ContainerPlan",
    "ContainerView",
    "NodeConfig",
    "PodAddresses",
    "PodConfigError",
    "StopSchedule",
    "Terminated",
    "image_ref",
    "image_version",
    "lease_body",
    "lift_not_ready_taint",
    "main",
    "netexec_args",
    "node_body",
    "node_status",
    "plan_container",
    "pod_grace",
    "pod_phase",
    "pod_status",
    "prestop_sleep",
    "restart_delay",
    "rfc3339",
    "should_restart",
    "stop_schedule",
    "veth_name",
]
