"""Backends started ahead of need, so that a new pod does not wait for an interpreter."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["Spares", "start_backend"]

log = logging.getLogger("pytest_dataplane.lab.agent")


def start_backend(argv: list[str], log_path: Path, *, stdin: int) -> subprocess.Popen[bytes]:
    """Start a lab backend process: its stdout a pipe (it prints ``READY`` there), its stderr
    appended to ``log_path``, in a session of its own. OSError if it cannot start."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=log_file, start_new_session=True
        )


class Spares:
    """Backends started ahead of need (``backend --spare``): each has done its imports and
    waits on stdin for the pod it will be, so a new pod does not wait for an interpreter.

    They are forked by one thread that lives as long as the agent: a child's parent-death
    signal follows the thread that forked it, and a pod's backend must outlive the worker
    that asked for it no more than the agent.
    """

    def __init__(self, count: int, run_dir: str) -> None:
        self.count = count
        self.run_dir = run_dir
        self.ready: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self.requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.lock = threading.Lock()  # close() and a spawn never interleave
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="spares", daemon=True)

    def start(self) -> None:
        """Order the first spares and start the thread that forks them."""
        for _ in range(self.count):
            self.requests.put(True)
        self.thread.start()

    def _run(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "pytest_dataplane.providers.lab.backend",
            "--spare",
            "--parent",
            str(os.getpid()),
        ]
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        while self.requests.get():
            with self.lock:
                if self.closed:
                    break
                try:
                    process = start_backend(
                        argv, Path(self.run_dir) / "spares.log", stdin=subprocess.PIPE
                    )
                except OSError as exc:
                    log.warning("cannot start a spare backend: %s", exc)
                    continue
                self.ready.put(process)
        # Stay alive until the agent exits: the spares and the pods they became are
        # children of this thread (see the class docstring).
        threading.Event().wait()

    def take(self) -> subprocess.Popen[bytes] | None:
        """A waiting spare (and a replacement ordered), or None if none is ready."""
        while not self.closed:
            try:
                process = self.ready.get_nowait()
            except queue.Empty:
                return None
            self.requests.put(True)
            if process.poll() is None:
                return process
        return None

    def close(self) -> None:
        """Let the unused spares go (their stdin closes: they exit)."""
        with self.lock:
            self.closed = True
        self.requests.put(False)
        while True:
            try:
                process = self.ready.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
