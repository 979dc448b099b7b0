"""``--dataplane-plan``: what the kind provider would do, printed without running anything.

For each selected dataplane: the cluster name, the kind config, the ``kind create cluster``
command, the images to preload, the complete Helm command (ebpf) and the order of steps.
Building a plan only reads options and, when kind is installed, asks it its version.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..k8s.versions import Version
from .cluster import state_root
from .config import KindSettings, cluster_name, helm_install_argv, kind_config, preload_images
from .tools import Tools, find_tools, kind_version
from .versions import kind_default_image, kind_default_kubernetes, nftables_problem

__all__ = ["ClusterPlan", "build_plan", "check_plan", "command_line", "render_plans"]


@dataclass(frozen=True)
class ClusterPlan:
    """Everything the kind provider does for one dataplane, as text and argv."""

    dataplane: str
    name: str
    kind_config_yaml: str
    config_path: str
    create_argv: tuple[str, ...]
    images: tuple[str, ...]
    helm_argv: tuple[str, ...] | None
    node_image: str
    steps: tuple[str, ...]
    problem: str | None


def build_plan(
    dataplane: str,
    settings: KindSettings,
    *,
    kind_version: Version | None,
    tools: Tools | None = None,
    root: Path | None = None,
) -> ClusterPlan:
    """The plan for ``dataplane`` (pure but for the paths it names)."""
    import yaml

    name = cluster_name(dataplane, settings, kind_version)
    directory = (root or state_root()) / name
    config_path = directory / "kind-config.yaml"
    kubeconfig = directory / "kubeconfig"
    kind = (tools.kind if tools else None) or "kind"
    create = [kind, "create", "cluster", f"--name={name}", f"--kubeconfig={kubeconfig}"]
    if settings.node_image:
        create.append(f"--image={settings.node_image}")
        node_image = settings.node_image
    elif kind_version is not None:
        exact = kind_default_image(kind_version)
        default = kind_default_kubernetes(kind_version)
        if exact is not None:
            node_image = f"{exact} (kind {kind_version}'s default)"
        else:
            node_image = f"kind {kind_version}'s default" + (
                f" (Kubernetes {default} or newer)" if default else ""
            )
    else:
        node_image = "kind's default (kind not found: version unknown)"
    create += ["--config", str(config_path)]
    images = preload_images(dataplane, settings)
    helm = (
        helm_install_argv(
            settings,
            name,
            kubeconfig=str(kubeconfig),
            helm=(tools.helm if tools else None) or "helm",
        )
        if dataplane == "ebpf"
        else None
    )
    steps = [
        f"write the kind config to {config_path}",
        f"reuse cluster {name} if `kind get clusters` lists it and its setup completed, "
        "else create it: " + shlex.join(create),
    ]
    steps += [
        f"preload {image}: `docker pull` if the host lacks it, then "
        f"`kind load docker-image --name {name} {image}` (if that fails, as under Docker's "
        "containerd image store: `docker save --platform <engine's os/arch>` and `kind load "
        "image-archive`; if that fails too, a warning and the nodes pull it)"
        for image in images
    ]
    if helm is not None:
        steps.append("install Cilium: " + shlex.join(helm))
    steps += [
        "wait until every node is Ready and the "
        + ("cilium" if dataplane == "ebpf" else "kube-proxy")
        + " DaemonSet is rolled out; mark the setup complete (ConfigMap kube-system/"
        "pytest-dataplane)",
        "create the session namespace dpt-<session>; tests deploy agnhost netexec "
        "Deployments behind NodePort Services reached at the worker's address",
        "after the session: delete the namespace, and `kind delete cluster --name "
        f"{name}` unless --dataplane-keep (a cluster whose setup fails is deleted at once)",
    ]
    problem = (
        nftables_problem(kind_version, settings.node_image) if dataplane == "nftables" else None
    )
    return ClusterPlan(
        dataplane=dataplane,
        name=name,
        kind_config_yaml=yaml.safe_dump(kind_config(dataplane, settings), sort_keys=False),
        config_path=str(config_path),
        create_argv=tuple(create),
        images=tuple(images),
        helm_argv=tuple(helm) if helm else None,
        node_image=node_image,
        steps=tuple(steps),
        problem=problem,
    )


def check_plan(plans: Sequence[ClusterPlan]) -> None:
    """ValueError naming every dataplane that cannot run with these versions."""
    problems = [f"{p.dataplane}: {p.problem}" for p in plans if p.problem]
    if problems:
        raise ValueError("; ".join(problems))


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else line for line in text.rstrip().splitlines())


def render_plans(
    plans: Sequence[ClusterPlan],
    settings: KindSettings,
    *,
    kind_version: Version | None,
    missing: str | None = None,
) -> str:
    """The text ``--dataplane-plan`` prints."""
    lines = [
        f"pytest-dataplane plan: provider kind, {len(plans)} dataplane(s): "
        + ", ".join(p.dataplane for p in plans),
        f"kind: {kind_version if kind_version else 'not found'}; Cilium "
        f"{settings.cilium_version}; workers {settings.workers}; hubble "
        f"{'on' if settings.hubble else 'off'}; keep clusters: "
        f"{'yes' if settings.keep else 'no'}",
    ]
    if missing:
        lines.append(f"note: {missing}")
    for plan in plans:
        lines += [
            "",
            f"== {plan.dataplane}: cluster {plan.name} ==",
            f"node image: {plan.node_image}",
            f"kind config ({plan.config_path}):",
            _indent(plan.kind_config_yaml),
            "kind command:",
            "    " + shlex.join(plan.create_argv),
            "images to preload (kind load docker-image):",
            *[f"    {image}" for image in plan.images],
        ]
        if plan.helm_argv is not None:
            lines += ["helm command:", "    " + shlex.join(plan.helm_argv)]
        else:
            lines.append("helm command: none (kube-proxy is the dataplane)")
        lines.append("steps:")
        lines += [f"    {i}. {step}" for i, step in enumerate(plan.steps, 1)]
        if plan.problem:
            lines.append(f"PROBLEM: {plan.problem}")
    return "\n".join(lines) + "\n"


def command_line(option: Callable[[str], Any], *, plan: bool) -> str | None:
    """The plugin's early step for the kind provider: validate the kind options before
    anything is collected (ValueError names the bad value), and with ``plan`` return the text
    to print. Touches no Docker and no cluster; runs ``kind version`` when kind is installed
    and the answer matters (a plan, or nftables selected)."""
    from .provider import settings_from_options

    settings = settings_from_options(option)
    dataplanes = tuple(option("dataplane"))
    tools = find_tools(kind_bin=option("kind_bin"), kubectl_bin=option("kind_kubectl_bin"))
    version = (
        kind_version(tools.kind) if tools.kind and (plan or "nftables" in dataplanes) else None
    )
    plans = [build_plan(d, settings, kind_version=version, tools=tools) for d in dataplanes]
    check_plan(plans)
    if not plan:
        return None
    missing = [
        name
        for name, path in (
            ("docker", tools.docker),
            ("kind", tools.kind),
            ("kubectl", tools.kubectl),
            ("helm", tools.helm),
        )
        if path is None
    ]
    note = (
        f"not found on PATH: {', '.join(missing)} (needed to run this plan, not to print it)"
        if missing
        else None
    )
    return render_plans(plans, settings, kind_version=version, missing=note)
