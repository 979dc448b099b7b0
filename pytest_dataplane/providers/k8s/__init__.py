"""The Kubernetes layer: the Cluster and Service protocols over the Kubernetes API, once.

Every provider that runs a real Kubernetes cluster builds a
:class:`~.cluster.KubeCluster` and supplies only what differs between them: an API client
(:class:`~.api.KubeApi`) for the cluster it obtained, a :class:`~.nodes.NodeAccess` that runs
a command on a node and returns its output (kind: ``docker exec``; an existing cluster: a
node-access DaemonSet), and a :class:`~.traffic.TrafficPath` that says how requests reach a
Service, plus one :class:`~.hooks.ClusterHooks` for what it knows beyond the API (its
backend, CPU and programming sources, how to wait for its dataplane, whether the run owns
the cluster). Deployments and Services carry deploy, scale and rollout (the real Deployment
controller does maxSurge / maxUnavailable); background services are selectorless Services
with their own EndpointSlices; an EndpointSlice watch makes events and times programming.

Modules: :mod:`.api` (the API client), :mod:`.resources` (the objects sent; pure),
:mod:`.cluster` (the protocols), :mod:`.hooks` (what a provider plugs in), :mod:`.watch`,
:mod:`.nodes` (node access and rule counting), :mod:`.dataplane` (the dataplane agent's pods
and CPU sampling), :mod:`.metrics` (kube-proxy's histogram and CPU counters; pure),
:mod:`.probe`, :mod:`.traffic`, :mod:`.cilium`, :mod:`.versions`, :mod:`.testing` (an
in-memory API for tests). This package imports no provider: lab, kind and kubeconfig import it.
"""
