"""The Kubernetes binaries the lab runs: the cached build of the repository's ``kube/`` module,
or a directory of official release binaries (``--dataplane-kube-bin``).

``kube/`` is one Go program holding etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kube-proxy and kubectl, each chosen by the name the program is called by. It
is built once per user into ``${XDG_CACHE_HOME:-~/.cache}/pytest-dataplane/kube/<key>/``,
where ``<key>`` hashes what decides the binary (go.mod, go.sum, the Go sources, the build
flags); the directory also holds a link named after each component. :func:`locate` only
looks; :func:`build` (``python -m pytest_dataplane kube build``) is the only thing that runs
the Go toolchain, and it downloads modules only through the ordinary ``go`` command.

Why one module of some 500 lines: locating, checking and building are one cache with one key;
half of the module is the build's error handling (no Go, an old Go, a failed download), each
case with the message a user needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ...errors import DataplaneError

__all__ = [
    "BUILD_COMMAND",
    "COMPONENTS",
    "GO_MINIMUM",
    "KubeBinaries",
    "build",
    "cache_key",
    "cache_root",
    "locate",
    "module_dir",
]

COMPONENTS: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
)
# Official release directories often lack kubectl (it ships in its own archive); the cluster
# runs without it, so a directory is accepted without one.
_DIR_REQUIRED: Final = COMPONENTS[:-1]
BUILD_COMMAND: Final = "python -m pytest_dataplane kube build"
GO_MINIMUM: Final = (1, 26)
BINARY: Final = "kube"
_INFO: Final = "build.json"

# What upstream's release builds use for these components (hack/lib/golang.sh): static, no
# symbol tables, trimmed paths, and the tags that drop test-only and grpc tracing code.
_TAGS: Final = "selinux,notest,grpcnotrace"
_GO_FLAGS: Final = ("-trimpath", f"-tags={_TAGS}")
_LD_FLAGS: Final = "-s -w"
_VERSION_PACKAGES: Final = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
_PINNED: Final = re.compile(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v1\.(\d+)\.\d+)\b", re.M)
_GO_VERSION: Final = re.compile(r"\bgo(\d+)\.(\d+)")
_VERSION_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class KubeBinaries:
    """Where each component's program is, and how to run it.

    ``source`` is ``"built:<cache dir>"`` or ``"dir:<path>"``; ``directory`` holds one
    executable per component (links to the multi-call binary for a build); ``kubectl_dir`` is
    a directory with an executable ``kubectl`` to put on PATH, or None when there is none.
    """

    source: str
    directory: Path
    kubectl_dir: Path | None
    _versions: dict[str, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def argv(self, component: str) -> list[str]:
        """The command line prefix that runs ``component``, e.g. ``[".../kube-apiserver"]``.

        For the build this is the component's link to the multi-call binary, so the process
        is named after the component (``ps``, ``/proc/PID/comm``) and chooses it by argv[0].
        """
        if component not in COMPONENTS:
            raise ValueError(f"component: unknown {component!r}; accepted: {', '.join(COMPONENTS)}")
        path = self.directory / component
        if component == "kubectl" and self.kubectl_dir is None:
            raise DataplaneError(
                f"no kubectl in {self.directory}; put one there or use the built binaries "
                f"({BUILD_COMMAND})"
            )
        return [str(path)]

    def version(self, component: str) -> str | None:
        """The release ``component`` reports (``v1.37.2``, etcd ``3.7.0``); None if it fails.

        Runs the program once (``--version``, or ``version --client`` for kubectl) and keeps
        the answer.
        """
        if component not in self._versions:
            self._versions[component] = _run_version(self, component)
        return self._versions[component]


def _run_version(binaries: KubeBinaries, component: str) -> str | None:
    try:
        argv = binaries.argv(component)
    except DataplaneError:
        return None
    extra = ["version", "--client"] if component == "kubectl" else ["--version"]
    try:
        proc = subprocess.run(
            [*argv, *extra],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return parse_version(component, proc.stdout)


def parse_version(component: str, output: str) -> str | None:
    """The version in a component's version output, or None when it has none.

    ``Kubernetes v1.37.2`` (control-plane components), ``Client Version: v1.37.2`` (kubectl),
    ``etcd Version: 3.7.0`` (etcd).
    """
    if component == "etcd":
        pattern = r"^etcd Version:\s*(\S+)"
    elif component == "kubectl":
        pattern = r"^Client Version:\s*(v\S+)"
    else:
        pattern = r"^Kubernetes\s+(v\S+)"
    match = re.search(pattern, output, re.M)
    return match.group(1) if match else None


def module_dir() -> Path | None:
    """The repository's ``kube/`` module next to this package (an editable install), or None."""
    candidate = Path(__file__).resolve().parents[3] / "kube"
    return candidate if (candidate / "go.mod").is_file() else None


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/pytest-dataplane/kube``: one directory per build key."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-dataplane" / "kube"


def _sources(module: Path) -> list[Path]:
    # Only what the Go build reads: go.mod, go.sum and the main package's sources (hack/ and
    # tests are not part of the binary, so editing them must not force a rebuild).
    files = [module / "go.mod", module / "go.sum"]
    files += sorted(p for p in module.glob("*.go") if not p.name.endswith("_test.go"))
    return files


def cache_key(module: Path) -> str:
    """Hash of what decides the binary: go.mod, go.sum, the Go sources and the build flags.

    The Go toolchain's version is left out on purpose: :func:`locate` must work on machines
    without Go (it only looks), and a toolchain update alone does not change what runs.
    """
    digest = hashlib.sha256()
    digest.update(f"flags {' '.join(_GO_FLAGS)} ldflags {_LD_FLAGS}\n".encode())
    for path in _sources(module):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataplaneError(
                f"{path} is missing; the kube/ module needs it (run `go mod tidy` in {module})"
            ) from None
        digest.update(f"{path.name} {len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def pinned_release(module: Path) -> tuple[str, str]:
    """``(version, minor)`` of the k8s.io/kubernetes release kube/go.mod pins."""
    text = (module / "go.mod").read_text()
    match = _PINNED.search(text)
    if match is None:
        raise DataplaneError(f"{module / 'go.mod'} does not require k8s.io/kubernetes v1.M.P")
    return match.group(1), match.group(2)


def ldflags(version: str, minor: str, build_date: str) -> str:
    """The linker flags: stripped, with the release stamped where ``--version`` reads it."""
    values = {
        "gitVersion": version,
        "gitMajor": "1",
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    stamps = [
        f"-X {pkg}.{key}={value}" for pkg in _VERSION_PACKAGES for key, value in values.items()
    ]
    return " ".join([_LD_FLAGS, *stamps])


def _missing(directory: Path) -> list[str]:
    """Components missing from a build directory (empty when it is usable)."""
    missing = [] if os.access(directory / BINARY, os.X_OK) else [BINARY]
    missing += [c for c in COMPONENTS if not os.access(directory / c, os.X_OK)]
    return missing


def _from_dir(kube_bin_dir: str | os.PathLike[str]) -> KubeBinaries:
    directory = Path(kube_bin_dir).expanduser().resolve()
    if not directory.is_dir():
        raise DataplaneError(
            f"--dataplane-kube-bin: {str(kube_bin_dir)!r} is not a directory; give a directory "
            f"holding {', '.join(_DIR_REQUIRED)} (and optionally kubectl)"
        )
    missing = [c for c in _DIR_REQUIRED if not os.access(directory / c, os.X_OK)]
    if missing:
        raise DataplaneError(
            f"--dataplane-kube-bin {directory}: no executable {', '.join(missing)} in it; it "
            f"needs {', '.join(_DIR_REQUIRED)} (official release binaries), or drop the option "
            f"to use the build of kube/ ({BUILD_COMMAND})"
        )
    kubectl = directory if os.access(directory / "kubectl", os.X_OK) else None
    return KubeBinaries(f"dir:{directory}", directory, kubectl)


def locate(kube_bin_dir: str | os.PathLike[str] | None = None) -> KubeBinaries:
    """Prebuilt binaries from ``kube_bin_dir`` if given, else the cached build of ``kube/``.

    Never builds or downloads. Raises :class:`DataplaneError` naming what is missing and the
    command that builds it.
    """
    if kube_bin_dir is not None:
        return _from_dir(kube_bin_dir)
    module = module_dir()
    if module is None:
        raise DataplaneError(
            "no Kubernetes binaries: this installation has no kube/ module to build them from "
            "(it comes with the repository, in an editable install); pass "
            "--dataplane-kube-bin DIR with a directory of official release binaries "
            f"({', '.join(_DIR_REQUIRED)})"
        )
    directory = cache_root() / cache_key(module)
    missing = _missing(directory)
    if missing:
        what = "nothing is built" if not directory.exists() else f"missing {', '.join(missing)}"
        raise DataplaneError(
            f"Kubernetes binaries not built for {module} ({what} in {directory}; needed: "
            f"{', '.join(COMPONENTS)}); build them with `{BUILD_COMMAND}` (Go >= "
            f"{GO_MINIMUM[0]}.{GO_MINIMUM[1]}), or pass --dataplane-kube-bin DIR"
        )
    return KubeBinaries(f"built:{directory}", directory, directory)


def find_go() -> str:
    """The ``go`` command to build with: on PATH, else the official tarball's location.

    Raises :class:`DataplaneError` when there is none or it is older than :data:`GO_MINIMUM`.
    """
    go = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
    need = f"Go >= {GO_MINIMUM[0]}.{GO_MINIMUM[1]}"
    if go is None:
        raise DataplaneError(
            f"building kube/ needs {need} and there is no `go` on PATH or in /usr/local/go/bin "
            "(install it from https://go.dev/dl/; Debian 12's golang package is too old), or "
            "pass --dataplane-kube-bin DIR with official release binaries"
        )
    proc = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    match = _GO_VERSION.search(proc.stdout)
    found = (int(match.group(1)), int(match.group(2))) if match else None
    if found is None or found < GO_MINIMUM:
        raise DataplaneError(
            f"building kube/ needs {need}; {go} reports {proc.stdout.strip() or proc.stderr!r}"
        )
    return go


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    # Two `kube build`s at once would each compile Kubernetes; the second waits and then
    # finds the first one's result.
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _go(
    go: str,
    args: Sequence[str],
    module: Path,
    *,
    on_line: Callable[[str], None] | None = None,
) -> list[str]:
    """Run ``go args`` in ``module``; returns its stdout lines, raises on failure.

    Each stderr line goes to ``on_line`` as it comes (``go build -v`` names each package it
    compiles there); the last ones are kept for the error.
    """
    out: list[str] = []
    err: list[str] = []
    with subprocess.Popen(
        [go, *args],
        cwd=module,
        env={**os.environ, "CGO_ENABLED": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        stdout, stderr = process.stdout, process.stderr
        if stdout is None or stderr is None:
            raise DataplaneError("go: no pipes to read from")  # cannot happen with PIPE

        # stdout is drained on its own thread so neither pipe can fill up and stall go.
        reader = threading.Thread(target=lambda: out.extend(stdout), daemon=True)
        reader.start()
        for line in stderr:
            err.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(err[-1])
        reader.join()
    if process.returncode != 0:
        tail = "\n".join(err[-40:])
        raise DataplaneError(f"`go {' '.join(args)}` in {module} failed:\n{tail}")
    return [line.rstrip("\n") for line in out]


def build(*, progress: Callable[[str], None] = _stderr, module: Path | None = None) -> KubeBinaries:
    """Build ``kube/`` into the per-user cache unless that build is already there.

    Prints each phase with its elapsed time through ``progress``. The build lands in a
    temporary directory renamed into place, so an interrupted build leaves nothing that
    :func:`locate` would take for a result.
    """
    module = module or module_dir()
    if module is None:
        raise DataplaneError(
            "no kube/ module to build: it comes with the repository (install it editable, "
            "`pip install -e .`), or pass --dataplane-kube-bin DIR with official binaries"
        )
    root = cache_root()
    key = cache_key(module)
    final = root / key
    if not _missing(final):
        progress(f"kube: reusing {final}")
        return locate()
    go = find_go()
    with _locked(root):
        if not _missing(final):  # built by another process while this one waited
            progress(f"kube: reusing {final}")
            return locate()
        started = time.monotonic()
        version, minor = pinned_release(module)
        progress(f"kube: building Kubernetes {version} from {module} into {final}")

        phase = time.monotonic()
        progress("kube: resolving modules (go downloads missing ones through the module proxy)...")
        info = json.loads("\n".join(_go(go, ["list", "-m", "-json", "k8s.io/kubernetes"], module)))
        packages = _go(go, ["list", *_GO_FLAGS, "-deps", "-f", "{{.ImportPath}}", "."], module)
        progress(
            f"kube: modules ready in {_elapsed(time.monotonic() - phase)} "
            f"({len(packages)} packages)"
        )

        phase = time.monotonic()
        progress("kube: compiling (a cold build takes many minutes; later ones reuse Go's cache)")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            compiled = 0
            last = time.monotonic()

            def count(line: str) -> None:
                nonlocal compiled, last
                if " " in line or not line:
                    return  # a diagnostic, not a package name
                compiled += 1
                now = time.monotonic()
                if now - last >= 30:
                    last = now
                    progress(
                        f"kube: compiled {compiled} of at most {len(packages)} packages, "
                        f"{_elapsed(now - phase)}"
                    )

            # The release's own date keeps the stamp reproducible; now is the fallback.
            date = info.get("Time") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            flags = ldflags(version, minor, date)
            _go(
                go,
                ["build", "-v", *_GO_FLAGS, f"-ldflags={flags}", "-o", str(tmp / BINARY), "."],
                module,
                on_line=count,
            )
            for component in COMPONENTS:
                (tmp / component).symlink_to(BINARY)
            size = (tmp / BINARY).stat().st_size
            (tmp / _INFO).write_text(
                json.dumps(
                    {
                        "kubernetes": version,
                        "key": key,
                        "module": str(module),
                        "go": subprocess.run(
                            [go, "env", "GOVERSION"], capture_output=True, text=True, check=False
                        ).stdout.strip(),
                        "flags": [*_GO_FLAGS, f"-ldflags={flags}"],
                        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "seconds": round(time.monotonic() - started, 1),
                    },
                    indent=2,
                )
                + "\n"
            )
            tmp.chmod(0o755)
            if final.exists():  # damaged by hand (a link deleted): replaced, under the lock
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(
            f"kube: compiled {compiled} packages and linked in "
            f"{_elapsed(time.monotonic() - phase)}; binary {size / 1e6:.0f} MB"
        )
        progress(f"kube: done in {_elapsed(time.monotonic() - started)}: {final}")
    return locate()


def status(kube_bin_dir: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """What :func:`locate` finds, each component's version, and the builds in the cache."""
    module = module_dir()
    report: dict[str, object] = {"module": str(module) if module else None}
    report["cache"] = str(cache_root())
    if module is not None:
        report["key"] = cache_key(module)
    try:
        binaries = locate(kube_bin_dir)
    except DataplaneError as exc:
        report["error"] = str(exc)
    else:
        report["source"] = binaries.source
        report["versions"] = {c: binaries.version(c) for c in COMPONENTS}
        info = binaries.directory / _INFO
        if info.is_file():
            report["build"] = json.loads(info.read_text())
    root = cache_root()
    entries = list(root.iterdir()) if root.is_dir() else []
    report["builds"] = sorted(p.name for p in entries if p.is_dir() and not p.name.startswith("."))
    return report


def main(action: str, *, kube_bin: str | None = None, json_output: bool = False) -> int:
    """``python -m pytest_dataplane kube build|status|where``; returns the exit status."""
    if action == "build":
        try:
            binaries = build()
        except DataplaneError as exc:
            _stderr(f"kube build: {exc}")
            return 1
        print(binaries.directory)
        return 0
    if action == "where":
        try:
            print(locate().directory)
        except DataplaneError as exc:
            _stderr(str(exc))
            return 1
        return 0
    if action == "status":
        report = status(kube_bin)
        if json_output:
            print(json.dumps(report, indent=2))
        else:
            for key, value in report.items():
                if isinstance(value, dict):
                    print(f"{key}:")
                    for name, item in value.items():
                        print(f"    {name}: {item}")
                else:
                    print(f"{key}: {value}")
        return 1 if "error" in report else 0
    raise ValueError(f"kube: unknown action {action!r}; accepted: build, status, where")
