"""Versions the kind provider reasons about: Cilium, Kubernetes, kind. Pure.

:class:`~pytest_dataplane.providers.k8s.versions.Version` and the Cilium facts every
provider needs (the agent's debug CLI) live in the shared Kubernetes layer.

Every rule that depends on a version lives here, next to the fact it encodes:

- Cilium 1.14 to 1.18 are supported; 1.12 and 1.13 are end of life, untested on the Kubernetes
  releases kind ships today, and refused;
- Cilium's Helm chart took ``kubeProxyReplacement=strict`` before 1.14 and takes ``true`` from
  1.14 on (``strict`` was deprecated in 1.14 and later removed);
- kube-proxy's nftables mode is beta (enabled without a feature gate) from Kubernetes 1.31, and
  kind accepts ``kubeProxyMode: nftables`` from v0.23.0.
"""

from __future__ import annotations

from typing import Final

from ..k8s.versions import Version

__all__ = [
    "CILIUM_CHART_REPO",
    "DEFAULT_CILIUM_VERSION",
    "KIND_DEFAULT_IMAGES",
    "KIND_DEFAULT_KUBERNETES",
    "NFTABLES_MIN_KIND",
    "NFTABLES_MIN_KUBERNETES",
    "SUPPORTED_CILIUM",
    "kind_default_image",
    "kind_default_kubernetes",
    "kube_proxy_replacement_value",
    "kubernetes_of_image",
    "nftables_problem",
    "parse_cilium_version",
]

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

NFTABLES_MIN_KUBERNETES: Final = Version(1, 31, 0)
NFTABLES_MIN_KIND: Final = Version(0, 23, 0)

# kind release -> its default node image, as the release's own
# pkg/apis/config/defaults/image.go names it (read at each release tag). A kind version between
# two entries is taken to default to at least the lower entry's Kubernetes.
KIND_DEFAULT_IMAGES: Final = {
    Version(0, 19, 0): (
        "kindest/node:v1.27.1"
        "@sha256:b7d12ed662b873bd8510879c1846e87c7e676a79fefc93e17b2a52989d3ff42b"
    ),
    Version(0, 20, 0): (
        "kindest/node:v1.27.3"
        "@sha256:3966ac761ae0136263ffdb6cfd4db23ef8a83cba8a463690e98317add2c9ba72"
    ),
    Version(0, 21, 0): (
        "kindest/node:v1.29.1"
        "@sha256:a0cc28af37cf39b019e2b448c54d1a3f789de32536cb5a5db61a49623e527144"
    ),
    Version(0, 22, 0): (
        "kindest/node:v1.29.2"
        "@sha256:51a1434a5397193442f0be2a297b488b6c919ce8a3931be0ce822606ea5ca245"
    ),
    Version(0, 23, 0): (
        "kindest/node:v1.30.0"
        "@sha256:047357ac0cfea04663786a612ba1eaba9702bef25227a794b52890dd8bcd692e"
    ),
    Version(0, 24, 0): (
        "kindest/node:v1.31.0"
        "@sha256:53df588e04085fd41ae12de0c3fe4c72f7013bba32a20e7325357a1ac94ba865"
    ),
    Version(0, 25, 0): (
        "kindest/node:v1.31.2"
        "@sha256:18fbefc20a7113353c7b75b5c869d7145a6abd6269154825872dc59c1329912e"
    ),
    Version(0, 26, 0): (
        "kindest/node:v1.32.0"
        "@sha256:c48c62eac5da28cdadcf560d1d8616cfa6783b58f0d94cf63ad1bf49600cb027"
    ),
    Version(0, 27, 0): (
        "kindest/node:v1.32.2"
        "@sha256:f226345927d7e348497136874b6d207e0b32cc52154ad8323129352923a3142f"
    ),
    Version(0, 28, 0): (
        "kindest/node:v1.33.1"
        "@sha256:8d866994839cd096b3590681c55a6fa4a071fdaf33be7b9660e5697d2ed13002"
    ),
    Version(0, 29, 0): (
        "kindest/node:v1.33.1"
        "@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f"
    ),
    Version(0, 30, 0): (
        "kindest/node:v1.34.0"
        "@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"
    ),
    Version(0, 31, 0): (
        "kindest/node:v1.35.0"
        "@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"
    ),
    Version(0, 32, 0): (
        "kindest/node:v1.36.1"
        "@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
    ),
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


# kind release -> Kubernetes version of its default node image.
KIND_DEFAULT_KUBERNETES: Final = {
    kind: version
    for kind, image in KIND_DEFAULT_IMAGES.items()
    if (version := kubernetes_of_image(image)) is not None
}


def kind_default_image(kind_version: Version) -> str | None:
    """The default node image of exactly this kind release (None when it is not in
    :data:`KIND_DEFAULT_IMAGES`)."""
    return KIND_DEFAULT_IMAGES.get(kind_version)


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
