"""The lab's ``ebpf`` dataplane: a cgroup/connect4 socket load balancer.

A small BPF program (``bpf/lb4.c``) rewrites the destination of every ``connect()`` that a
process in the client's cgroup makes to a service VIP:port, picking one endpoint at random
from two hash maps (services, backends). No ``KUBE-`` rules exist, whatever the number of
services; endpoint changes are map updates, written in batches with bpf(2).

Life cycle, as the lab drives it: :func:`ebpf_unavailable_reason` (doctor, provider),
``EbpfProxier(cgroup=..., state_dir=..., node_netns=...)``, :meth:`EbpfProxier.start`
(compile or reuse the object, mount a private bpffs under ``state_dir``, load, pin, attach),
any number of :meth:`EbpfProxier.sync`, :meth:`EbpfProxier.close` (detach, unpin, unmount).

The package follows those steps: :mod:`.checks` (can it run here), :mod:`.build` (clang,
cached by content), :mod:`.plan` (the map writes of a sync, pure) and :mod:`.proxier` (the
kernel side: bpffs, bpftool, bpf(2)).
"""

from __future__ import annotations

from .build import BpfObject, build_object, default_cache_dir
from .checks import cgroup2_mounts, ebpf_unavailable_reason
from .proxier import (
    BACKENDS_MAP,
    BPFFS_DIR,
    SERVICES_MAP,
    EbpfProxier,
    read_pinned,
    remove_leftovers,
)

__all__ = [
    "BACKENDS_MAP",
    "BPFFS_DIR",
    "SERVICES_MAP",
    "BpfObject",
    "EbpfProxier",
    "build_object",
    "cgroup2_mounts",
    "default_cache_dir",
    "ebpf_unavailable_reason",
    "read_pinned",
    "remove_leftovers",
]
