"""Optional API keys: with ``TAGSMITH_API_KEYS`` set, every route but the public ones needs one.

A key comes in ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` and is compared with every
configured key in constant time. Public: the probes (``/health``, ``/ready``) and the web page's
own files (``/`` and ``/static/...``, which hold no data: the page asks for a key and sends it).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from shared.web.errors import error_response

PUBLIC_PATHS = frozenset({"/health", "/ready", "/"})
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries, from ``X-API-Key`` or ``Authorization: Bearer``."""
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
    return None


def key_matches(presented: bytes, keys: list[bytes]) -> bool:
    """Whether ``presented`` is one of ``keys``; every key is compared, each in constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented, key)
    return found


class ApiKeys:
    """Answers 401 JSON to a request without a valid key, unless no keys are configured."""

    def __init__(self, app: ASGIApp, keys: Callable[[Scope], list[str]]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self.keys(scope) if scope["type"] == "http" else []
        if not keys or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope["headers"])
        if presented is not None and key_matches(presented, [k.encode() for k in keys]):
            await self.app(scope, receive, send)
            return
        message = ("This server needs an API key: send it in the X-API-Key header or as "
                   "'Authorization: Bearer <key>'." if presented is None else "The API key is not valid.")
        response = error_response(401, "unauthorized", message, {"WWW-Authenticate": 'Bearer realm="tagsmith"'})
        await response(scope, receive, send)
