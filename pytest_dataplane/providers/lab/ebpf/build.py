"""Building the load balancer's BPF object with clang, cached by content."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ....errors import DataplaneError, DataplaneUnavailable
from .. import _proc
from .checks import INCLUDE_ROOTS, INSTALL_TOOLCHAIN, include_dirs

__all__ = ["CLANG_FLAGS", "SOURCE", "BpfObject", "build_object", "default_cache_dir"]

SOURCE: Final = Path(__file__).parent.parent / "bpf" / "lb4.c"
CLANG_FLAGS: Final = ("-O2", "-g", "-Wall", "-target", "bpf")


@dataclass(frozen=True)
class BpfObject:
    """A compiled BPF object: its path, whether it came from the cache, what building cost."""

    path: Path
    cached: bool
    wall: float = 0.0
    cpu: float = 0.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-dataplane/bpf`` (``~/.cache/...`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-dataplane" / "bpf"


def _file_identity(path: Path) -> bytes:
    # Path, size and modification time stand for the version: they change when the package
    # is upgraded, and reading them costs no process (a cache hit must not run clang at all).
    real = Path(os.path.realpath(path))
    stat = real.stat()
    return f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()


def build_object(*, source: Path | None = None, cache_dir: Path | None = None) -> BpfObject:
    """Compile ``source`` (default: the packaged ``lb4.c``) with clang, or reuse the cache.

    The cache key hashes the source, the flags, and the identity of clang and of the libbpf
    headers. Concurrent builders are safe: each compiles into its own temporary file in the
    cache directory and renames it into place (rename is atomic), so a reader sees either no
    object or a complete one.
    """
    source = SOURCE if source is None else source
    clang = _proc.which("clang")
    if clang is None:
        raise DataplaneUnavailable(f"clang not found: {INSTALL_TOOLCHAIN}")
    includes = include_dirs()
    flags = [*CLANG_FLAGS, *(f"-I{d}" for d in includes)]
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise DataplaneError(f"cannot read the BPF source {source}: {exc.strerror}") from None
    digest = hashlib.sha256()
    digest.update(text)
    digest.update("\0".join(flags).encode())
    digest.update(_file_identity(Path(clang)))
    for root in INCLUDE_ROOTS:
        header = root / "bpf" / "bpf_helper_defs.h"
        if header.is_file():
            digest.update(_file_identity(header))
    cache = default_cache_dir() if cache_dir is None else cache_dir
    target = cache / f"{source.stem}-{digest.hexdigest()[:32]}.o"
    with contextlib.suppress(OSError), target.open("rb") as existing:
        if existing.read(4) == b"\x7fELF":
            return BpfObject(target, cached=True)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=cache, prefix=f".{source.stem}-", suffix=".tmp")
    except OSError as exc:
        raise DataplaneError(f"cannot write to the BPF object cache {cache}: {exc}") from None
    os.close(handle)
    temp = Path(temp_name)
    try:
        done = _proc.run([clang, *flags, "-c", str(source), "-o", str(temp)], check=False)
        if done.returncode != 0:
            raise DataplaneError(
                f"clang could not compile {source} (exit status {done.returncode}):\n"
                f"{done.stderr.strip()[:4000]}"
            )
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return BpfObject(target, cached=False, wall=done.wall, cpu=done.cpu)
