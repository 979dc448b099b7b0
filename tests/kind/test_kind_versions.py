"""Version rules of the kind provider: Cilium values, CLI names, nftables requirements."""

from __future__ import annotations

import pytest

from pytest_dataplane.providers.k8s.cilium import cilium_cli
from pytest_dataplane.providers.k8s.versions import Version
from pytest_dataplane.providers.kind.versions import (
    DEFAULT_CILIUM_VERSION,
    kind_default_image,
    kind_default_kubernetes,
    kube_proxy_replacement_value,
    kubernetes_of_image,
    nftables_problem,
    parse_cilium_version,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.16.12", Version(1, 16, 12)),
        ("v1.31.2", Version(1, 31, 2)),
        (" 1.17.0-rc.1 ", Version(1, 17, 0, "rc.1")),
    ],
)
def test_version_parse(text: str, expected: Version) -> None:
    assert Version.parse(text) == expected


def test_prerelease_sorts_before_release_and_prints_back() -> None:
    rc = Version.parse("1.17.0-rc.1")
    assert rc < Version.parse("1.17.0") < Version.parse("1.17.1")
    assert str(rc) == "1.17.0-rc.1"
    assert str(Version.parse("v1.16.3")) == "1.16.3"


@pytest.mark.parametrize("bad", ["1.16", "latest", "1.16.x", "", "v1", "1.16.3.4"])
def test_malformed_cilium_version_names_value_and_form(bad: str) -> None:
    with pytest.raises(ValueError, match="--cilium-version") as info:
        parse_cilium_version(bad)
    assert repr(bad) in str(info.value)
    assert "MAJOR.MINOR.PATCH" in str(info.value)


@pytest.mark.parametrize("unsupported", ["1.11.20", "1.12.19", "1.13.4", "0.9.0"])
def test_end_of_life_cilium_is_refused_naming_version_and_range(unsupported: str) -> None:
    with pytest.raises(ValueError, match=r"accepted: 1\.14\.x to 1\.18\.x") as info:
        parse_cilium_version(unsupported)
    assert f"Cilium {unsupported} is not supported" in str(info.value)
    assert "end of life" in str(info.value)


@pytest.mark.parametrize("unsupported", ["2.0.0", "1.19.1"])
def test_newer_cilium_is_not_supported_yet(unsupported: str) -> None:
    with pytest.raises(ValueError, match=r"not supported yet; accepted: 1\.14\.x to 1\.18\.x"):
        parse_cilium_version(unsupported)


@pytest.mark.parametrize(
    "supported", ["1.14.0", "1.14.19", "1.15.19", "1.16.12", "1.17.4", "1.18.0"]
)
def test_supported_cilium_lines(supported: str) -> None:
    assert str(parse_cilium_version(supported)) == supported


def test_default_cilium_version_is_supported() -> None:
    assert parse_cilium_version(DEFAULT_CILIUM_VERSION).minor_version == (1, 16)


@pytest.mark.parametrize(
    ("version", "value"),
    [("1.12.19", "strict"), ("1.13.4", "strict"), ("1.14.0", "true"), ("1.16.12", "true")],
)
def test_kube_proxy_replacement_value_by_version(version: str, value: str) -> None:
    assert kube_proxy_replacement_value(Version.parse(version)) == value


def test_cilium_cli_renamed_in_1_15() -> None:
    assert cilium_cli(Version.parse("1.14.17")) == "cilium"
    assert cilium_cli(Version.parse("1.15.0")) == "cilium-dbg"


def test_kind_default_kubernetes_is_a_lower_bound() -> None:
    assert kind_default_kubernetes(Version.parse("0.25.0")) == Version(1, 31, 2)
    # Between two known releases: at least the older one's default.
    assert kind_default_kubernetes(Version.parse("0.27.5")) == Version(1, 32, 2)
    assert kind_default_kubernetes(Version.parse("0.18.0")) is None


@pytest.mark.parametrize(
    ("kind", "kubernetes"),
    # Each release's pkg/apis/config/defaults/image.go, read at its tag.
    [("0.28.0", "1.33.1"), ("0.29.0", "1.33.1"), ("0.31.0", "1.35.0"), ("0.32.0", "1.36.1")],
)
def test_kind_default_node_images(kind: str, kubernetes: str) -> None:
    assert kind_default_kubernetes(Version.parse(kind)) == Version.parse(kubernetes)
    image = kind_default_image(Version.parse(kind))
    assert image is not None and image.startswith(f"kindest/node:v{kubernetes}@sha256:")


def test_exact_default_images_of_the_added_releases() -> None:
    assert kind_default_image(Version(0, 28, 0)) == (
        "kindest/node:v1.33.1@sha256:8d866994839cd096b3590681c55a6fa4a071fdaf33be7b9660e5697d2ed13002"
    )
    assert kind_default_image(Version(0, 32, 0)) == (
        "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
    )
    assert kind_default_image(Version(0, 27, 5)) is None  # only releases the table names


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("kindest/node:v1.31.2@sha256:18fbefc20a71", Version(1, 31, 2)),
        ("kindest/node:v1.29.1", Version(1, 29, 1)),
        ("registry.local:5000/kindest/node", None),
        ("my/custom:latest", None),
    ],
)
def test_kubernetes_of_image(image: str, expected: Version | None) -> None:
    assert kubernetes_of_image(image) == expected


def test_nftables_refused_on_old_kind() -> None:
    problem = nftables_problem(Version.parse("0.22.0"), None)
    assert problem is not None
    assert "kind >= 0.23.0" in problem
    assert "0.22.0" in problem


def test_nftables_refused_on_old_kubernetes_image() -> None:
    problem = nftables_problem(Version.parse("0.24.0"), "kindest/node:v1.30.6")
    assert problem is not None
    assert "Kubernetes >= 1.31" in problem
    assert "--kind-image=kindest/node:v1.30.6" in problem


def test_nftables_refused_on_old_default_image() -> None:
    # kind 0.23 supports the mode but defaults to Kubernetes 1.30.
    problem = nftables_problem(Version.parse("0.23.0"), None)
    assert problem is not None
    assert "kind 0.23.0's default node image" in problem


@pytest.mark.parametrize(
    ("kind", "image"),
    [("0.24.0", None), ("0.23.0", "kindest/node:v1.31.0"), (None, None), (None, "my/node:dev")],
)
def test_nftables_accepted(kind: str | None, image: str | None) -> None:
    assert nftables_problem(Version.parse(kind) if kind else None, image) is None
