"""Plain HTTPS requests to the platform's management API.

Only what the websockets cannot answer: listing a project's workspaces,
which is also the cheapest request that proves an access key works. It
uses the standard library's HTTP client, with the same TLS context, auth
header or cookie, and proxy settings (``HTTPS_PROXY``, ``NO_PROXY``) as the
websockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from .endpoint import Endpoint
from .errors import (
    AuthRejected,
    ConnectionFailed,
    HandshakeRejected,
    ProtocolViolation,
    TLSFailed,
    WorkspaceNotFound,
)

__all__ = ["Probe", "list_workspaces", "probe"]

# A list is small; a server that takes longer than this is not answering.
REQUEST_TIMEOUT = 20.0

# The collection that holds a project's workspace instances.
_WORKSPACES_PATH = (
    "/kubernetes/management/apis/management.loft.sh/v1"
    "/namespaces/loft-p-{project}/devpodworkspaceinstances"
)


@dataclass(frozen=True)
class Probe:
    """What one workspace-list request tells about the server."""

    workspaces: list[str]
    server_time: datetime | None


async def probe(endpoint: Endpoint) -> Probe:
    """List the project's workspaces and note the server's clock.

    Raises:
        AuthRejected: the server refused the access key.
        WorkspaceNotFound: the project does not exist (404).
        TLSFailed, ConnectionFailed: the server could not be reached.
    """
    return await asyncio.to_thread(_probe, endpoint)


async def list_workspaces(endpoint: Endpoint) -> list[str]:
    """Return the names of the project's workspaces (see ``probe``)."""
    return (await probe(endpoint)).workspaces


def _http_url(endpoint: Endpoint) -> str:
    """Return the workspace collection's URL over http(s)."""
    scheme, rest = endpoint.server.split("://", 1)
    http_scheme = "https" if scheme == "wss" else "http"
    path = _WORKSPACES_PATH.format(project=quote(endpoint.project, safe=""))
    return f"{http_scheme}://{rest}{path}"


def _probe(endpoint: Endpoint) -> Probe:
    """Fetch and parse the workspace list (blocking)."""
    request = urllib.request.Request(
        _http_url(endpoint),
        headers={"Accept": "application/json", **dict(endpoint.auth_headers())},
    )
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=endpoint.ssl_context)
    )
    host = endpoint.display_host
    try:
        with opener.open(request, timeout=REQUEST_TIMEOUT) as response:
            document: Any = json.load(response)
            date_header = response.headers.get("Date")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise AuthRejected(
                f"{host} rejected the access key (HTTP {exc.code})"
            ) from None
        if exc.code == 404:
            raise WorkspaceNotFound(
                f"project {endpoint.project!r} not found on {host} (HTTP 404)"
            ) from None
        raise HandshakeRejected(
            f"{host} answered the workspace list with HTTP {exc.code}", exc.code
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise TLSFailed(
                f"TLS certificate of {host} could not be verified: "
                f"{reason.verify_message}"
            ) from None
        if isinstance(reason, ssl.SSLError):
            raise TLSFailed(f"TLS handshake with {host} failed: {reason}") from None
        text = getattr(reason, "strerror", None) or str(reason)
        raise ConnectionFailed(f"cannot connect to {host}: {text}") from None
    except (TimeoutError, OSError) as exc:
        raise ConnectionFailed(f"cannot connect to {host}: {exc}") from None
    except ValueError as exc:
        raise ProtocolViolation(
            f"{host} sent a workspace list that is not JSON"
        ) from exc
    try:
        names = [str(item["metadata"]["name"]) for item in document["items"]]
    except (KeyError, TypeError) as exc:
        raise ProtocolViolation(
            f"{host} sent a workspace list without items[].metadata.name"
        ) from exc
    server_time = None
    if date_header:
        with contextlib.suppress(TypeError, ValueError):
            server_time = parsedate_to_datetime(date_header)
    return Probe(names, server_time)
