"""A TCP forwarder from the root namespace's loopback into the control-plane namespace.

kubectl in the root namespace reaches the API server at ``https://127.0.0.1:<port>``: the
listening socket is an ordinary one of this process (in the root namespace, on loopback),
and each accepted connection is relayed to a socket created by a thread that entered the
control-plane namespace — a socket stays in the namespace it was created in. No route,
address, firewall rule or sysctl of the root namespace changes. TLS passes through untouched
(the API server's certificate names 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from ..netns import in_netns

_CHUNK = 65536


class Forwarder:
    """Relays ``127.0.0.1:<port>`` here to ``target`` inside network namespace ``netns``."""

    def __init__(self, netns: str, target: tuple[str, int], *, port: int = 0) -> None:
        self.netns = netns
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(
            target=self._accept, name=f"forward-{self.port}", daemon=True
        )

    def start(self) -> Forwarder:
        """Start accepting connections."""
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = in_netns(
                self.netns, lambda: socket.create_connection(self.target, timeout=10)
            )
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._open |= {client, upstream}
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._open -= {client, upstream}
        client.close()
        upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        with self._lock:
            self._closed = True
            sockets, self._open = set(self._open), set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(5)
