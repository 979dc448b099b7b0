"""HTTP(S) requests made from inside one of the cluster's namespaces (readiness checks)."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from ..netns import in_netns


def get(
    netns: str,
    url: str,
    *,
    token: str | None = None,
    ca_file: str | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    """GET ``url`` from inside ``netns``; returns (status, body), status 0 when the request
    did not get an answer (refused, reset, timed out, TLS failure)."""
    return send(netns, "GET", url, token=token, ca_file=ca_file, timeout=timeout)


def send(
    netns: str,
    method: str,
    url: str,
    *,
    body: Any = None,
    token: str | None = None,
    ca_file: str | None = None,
    timeout: float = 2.0,
) -> tuple[int, bytes]:
    """``method`` ``url`` from inside ``netns`` with ``body`` (sent as JSON unless None);
    returns (status, body) as :func:`get` does."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    payload = None if body is None else json.dumps(body).encode()

    def request() -> tuple[int, bytes]:
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            if ca_file is None:
                # The controller-manager's and scheduler's serving certificates are
                # self-signed on the fly; the check asks only whether they answer.
                context = ssl._create_unverified_context()
            else:
                context = ssl.create_default_context(cafile=ca_file)
            connection = http.client.HTTPSConnection(
                host, parts.port or 443, timeout=timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, parts.port or 80, timeout=timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path or "/", body=payload, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return 0, b""
        finally:
            connection.close()

    return in_netns(netns, request)


def ok(netns: str, url: str, **kwargs: Any) -> bool:
    """Whether ``url`` answers 200 from inside ``netns``."""
    return get(netns, url, **kwargs)[0] == 200


def get_json(netns: str, url: str, **kwargs: Any) -> Any:
    """The decoded JSON body of a 200 answer, else None."""
    status, body = get(netns, url, **kwargs)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def metric(text: str, name: str) -> float | None:
    """The value of the first sample of metric ``name`` in Prometheus text ``text``."""
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if head.split("{", 1)[0] == name:
                try:
                    return float(value)
                except ValueError:
                    return None
    return None
