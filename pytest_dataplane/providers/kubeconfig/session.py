"""The session namespace on an existing cluster: its name, labels, and the cleanup that
finds what killed runs left behind. Everything the plugin creates lives in it."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Final

from ..k8s import resources
from ..k8s.api import KubeApi

__all__ = ["CLEANUP_SELECTOR", "cleanup", "new_session", "session_namespace"]

# Cleanup selects on the plugin's own label only, so it never touches anything else.
CLEANUP_SELECTOR: Final = "=".join(resources.MANAGED_BY)
CREATED_ANNOTATION: Final = "pytest-dataplane/created"


def new_session() -> str:
    """A fresh session id (6 hex digits)."""
    return secrets.token_hex(3)


def session_namespace(session: str, *, privileged: bool = False) -> dict[str, Any]:
    """The namespace object for ``session``: ``dpt-<session>``, labelled for cleanup,
    privileged (Pod Security) only when the node agent must run in it."""
    obj = resources.namespace(f"dpt-{session}", session, privileged=privileged)
    obj["metadata"]["annotations"] = {
        CREATED_ANNOTATION: datetime.now(timezone.utc).isoformat(timespec="seconds")
    }
    return obj


def cleanup(
    api: KubeApi,
    *,
    dry_run: bool = False,
    session: str | None = None,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Delete every namespace the plugin created (only ``session``'s when given); returns
    their names. Deleting a namespace deletes everything in it, node agent included."""
    selector = CLEANUP_SELECTOR + (f",{resources.SESSION_LABEL}={session}" if session else "")
    items, _ = api.list_items("v1", "Namespace", label_selector=selector)
    names = []
    for item in sorted(items, key=lambda i: str(i["metadata"]["name"])):
        name = item["metadata"]["name"]
        created = (item["metadata"].get("annotations") or {}).get(CREATED_ANNOTATION, "?")
        if dry_run:
            say(f"would delete namespace {name} (created {created})")
        else:
            api.delete("v1", "Namespace", name)
            say(f"deleted namespace {name} (created {created})")
        names.append(name)
    if not names:
        say(f"nothing to clean up (no namespace labelled {selector})")
    return names
