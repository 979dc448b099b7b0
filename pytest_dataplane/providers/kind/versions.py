"""Versions the kind provider reasons about: Cilium, Kubernetes, kind. Pure.

Every rule that depends on a version lives here, next to the fact it encodes:

- Cilium 1.14 to 1.18 are supported; 1.12 and 1.13 are end of life, untested on the Kubernetes
  releases kind ships today, and refused;
- Cilium's Helm chart took ``kubeProxyReplacement=strict`` before 1.14 and takes ``true`` from
  1.14 on (``strict`` was deprecated in 1.14 and later removed);
- the agent's debug CLI is ``cilium-dbg`` from 1.15 on and ``cilium`` before;
- kube-proxy's nftables mode is beta (enabled without a feature gate) from Kubernetes 1.31, and
  kind accepts ``kubeProxyMode: nftables`` from v0.23.0.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AGNHOST_IMAGE",
    "CILIUM_CHART_REPO",
    "DEFAULT_CILIUM_VERSION",
    "KIND_DEFAULT_KUBERNETES",
    "NFTABLES_MIN_KIND",
    "NFTABLES_MIN_KUBERNETES",
    "SUPPORTED_CILIUM",
    "Version",
    "cilium_cli",
    "kind_default_kubernetes",
    "kube_proxy_replacement_value",
    "kubernetes_of_image",
    "nftables_problem",
    "parse_cilium_version",
]

_VERSION_RE: Final = re.compile(
    r"^v?(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)(?:-(?P<pre>[0-9A-Za-z.]+))?$"
)


@dataclass(frozen=True, order=True)
class Version:
    """A ``MAJOR.MINOR.PATCH[-PRE]`` version; pre-releases sort before their release."""

    major: int
    minor: int
    patch: int
    # "~" sorts after every pre-release tag, so 1.17.0-rc.1 < 1.17.0.
    pre: str = "~"

    @classmethod
    def parse(cls, text: str, *, what: str = "version") -> Version:
        """Parse ``"1.16.12"``, ``"v1.31.2"`` or ``"1.17.0-rc.1"``; ValueError otherwise."""
        match = _VERSION_RE.match(text.strip())
        if match is None:
            raise ValueError(
                f"{what}: cannot parse {text!r}; accepted: MAJOR.MINOR.PATCH such as 1.16.12 "
                "(a leading v and a -pre-release suffix are allowed)"
            )
        return cls(
            int(match["major"]), int(match["minor"]), int(match["patch"]), match["pre"] or "~"
        )

    @property
    def minor_version(self) -> tuple[int, int]:
        """``(major, minor)``."""
        return (self.major, self.minor)

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.patch}"
        return base if self.pre == "~" else f"{base}-{self.pre}"


# The default is the newest patch of the 1.16 line that we know is published (chart and
# images): 1.16 is the release the project's story was measured on, it has the boolean
# kubeProxyReplacement and the cilium-dbg CLI, and it runs on the node images of every kind
# release from v0.23 on. The tox matrix covers 1.14 to 1.18.
DEFAULT_CILIUM_VERSION: Final = "1.16.12"
# Cilium lines we support, inclusive. 1.12 and 1.13 are end of life and were never tested on
# the Kubernetes releases kind ships today (1.31 and newer), so they are refused rather than
# half-supported; lines newer than 1.18 are not known to us yet.
SUPPORTED_CILIUM: Final = ((1, 14), (1, 18))
CILIUM_CHART_REPO: Final = "https://helm.cilium.io"
_KPR_BOOLEAN_SINCE: Final = (1, 14)
_CILIUM_DBG_SINCE: Final = (1, 15)

NFTABLES_MIN_KUBERNETES: Final = Version(1, 31, 0)
NFTABLES_MIN_KIND: Final = Version(0, 23, 0)

# The Kubernetes e2e test server (``agnhost netexec``): serves /hostname, honours
# --delay-shutdown, and is the image Kubernetes' own Service conformance tests use.
AGNHOST_IMAGE: Final = "registry.k8s.io/e2e-test-images/agnhost:2.53"

# kind release -> Kubernetes version of its default node image, as each release's own
# pkg/apis/config/defaults/image.go names it (read at the release tags). A kind version
# between two entries is taken to default to at least the lower entry's.
KIND_DEFAULT_KUBERNETES: Final = {
    Version(0, 19, 0): Version(1, 27, 1),
    Version(0, 20, 0): Version(1, 27, 3),
    Version(0, 21, 0): Version(1, 29, 1),
    Version(0, 22, 0): Version(1, 29, 2),
    Version(0, 23, 0): Version(1, 30, 0),
    Version(0, 24, 0): Version(1, 31, 0),
    Version(0, 25, 0): Version(1, 31, 2),
    Version(0, 26, 0): Version(1, 32, 0),
    Version(0, 27, 0): Version(1, 32, 2),
    Version(0, 28, 0): Version(1, 33, 1),
    Version(0, 29, 0): Version(1, 33, 1),
    Version(0, 30, 0): Version(1, 34, 0),
    Version(0, 31, 0): Version(1, 35, 0),
    Version(0, 32, 0): Version(1, 36, 1),
}


def parse_cilium_version(value: str, *, name: str = "--cilium-version") -> Version:
    """Validate a Cilium version: well-formed and in :data:`SUPPORTED_CILIUM` (ValueError
    naming the version and the supported range otherwise; the plugin turns it into a
    ``pytest.UsageError``)."""
    version = Version.parse(str(value), what=name)
    low, high = SUPPORTED_CILIUM
    accepted = (
        f"accepted: {low[0]}.{low[1]}.x to {high[0]}.{high[1]}.x (e.g. {DEFAULT_CILIUM_VERSION})"
    )
    if version.minor_version < low:
        raise ValueError(
            f"{name}: Cilium {version} is not supported: the {version.major}.{version.minor} "
            f"line is end of life and untested on the Kubernetes releases kind ships; {accepted}"
        )
    if version.minor_version > high:
        raise ValueError(f"{name}: Cilium {version} is not supported yet; {accepted}")
    return version


def kube_proxy_replacement_value(version: Version) -> str:
    """The Helm value that turns on Cilium's full kube-proxy replacement at ``version``."""
    return "true" if version.minor_version >= _KPR_BOOLEAN_SINCE else "strict"


def cilium_cli(version: Version) -> str:
    """Name of the debug CLI inside the cilium-agent container at ``version``."""
    return "cilium-dbg" if version.minor_version >= _CILIUM_DBG_SINCE else "cilium"


def kind_default_kubernetes(kind_version: Version) -> Version | None:
    """Kubernetes version of ``kind_version``'s default node image (a lower bound), or None
    for kind releases older than the table."""
    known = [k for k in KIND_DEFAULT_KUBERNETES if k <= kind_version]
    return KIND_DEFAULT_KUBERNETES[max(known)] if known else None


def kubernetes_of_image(image: str) -> Version | None:
    """Kubernetes version named by a node image's tag (``kindest/node:v1.31.2@sha256:…``)."""
    reference = image.split("@", 1)[0]
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:
        return None
    try:
        return Version.parse(tag)
    except ValueError:
        return None


def nftables_problem(kind_version: Version | None, image: str | None) -> str | None:
    """Why ``kubeProxyMode: nftables`` cannot work with this kind and node image, or None.

    Unknown versions (no kind found, a custom image tag) are not refused here; kind itself
    refuses them when the cluster is created.
    """
    if kind_version is not None and kind_version < NFTABLES_MIN_KIND:
        return (
            f"kube-proxy's nftables mode needs kind >= {NFTABLES_MIN_KIND} (found kind "
            f"{kind_version}); upgrade kind"
        )
    kubernetes: Version | None = None
    source = ""
    if image:
        kubernetes, source = kubernetes_of_image(image), f"--kind-image={image}"
    elif kind_version is not None:
        kubernetes = kind_default_kubernetes(kind_version)
        source = f"kind {kind_version}'s default node image"
    if kubernetes is not None and kubernetes < NFTABLES_MIN_KUBERNETES:
        return (
            f"kube-proxy's nftables mode needs Kubernetes >= 1.31 (found {kubernetes} from "
            f"{source}); pass --kind-image=kindest/node:v1.31.x or newer, or upgrade kind"
        )
    return None
