"""Version numbers as the Kubernetes layer and the providers compare them. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Version"]

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
