"""Requests from other sites, and pages other sites could abuse.

- **Host**: a request must name one of this server's hosts (``TAGSMITH_ALLOWED_HOSTS``, by default
  the loopback names, plus the address ``serve`` binds when it is a specific one). A web page
  that rebinds its own name to 127.0.0.1 (DNS rebinding) is then refused: its requests carry its
  name. The probes (``/health``, ``/ready``) answer any host.
- **Cross-site writes**: a request that changes data (any method but GET, HEAD and OPTIONS, and
  the seed's GET forms of assign, unassign, train, delete and rollback) is refused when the
  browser marks it as coming from another site: ``Sec-Fetch-Site`` other than ``same-origin`` or
  ``none`` (a typed URL), or an ``Origin`` that is not this host. Requests without either header
  (curl, scripts, the Python client) are not browsers acting for a page, and pass.
- **Cross-site costly reads**: the same for the GETs that cost the server much work
  (``routing.costly_path``: backups, state archives, the ONNX export, the library's scores,
  suggestions, similar images): another site's page cannot read them, but could have browsers ask
  for them over and over. A link to one on another site (or another port of this host) is refused
  too; a typed or bookmarked address is not.
- Those GET forms take no HEAD (``ApiRoute``): Starlette answers HEAD by running the GET, and link
  checkers and prefetchers send HEAD as a harmless probe.
- **Headers on every answer**: ``X-Content-Type-Options: nosniff``, frames denied
  (``X-Frame-Options``, CSP ``frame-ancestors``), and a Content-Security-Policy that lets the
  web page and the docs load only their own files. Answers that set no ``Cache-Control`` of their
  own get ``no-store`` (data, possibly behind an API key, is kept by no cache), except the
  page's and the docs' static files.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.core.settings import Settings
from shared.web.errors import error_response
from shared.web.openapi import DOCS_STYLE
from shared.web.routing import changes_data, costly_read

ANY_HOST_PATHS = frozenset({"/health", "/ready"})
CACHEABLE_PREFIXES = ("/static/", "/docs/")  # the same files for everyone
_DOCS_STYLE_HASH = base64.b64encode(hashlib.sha256(DOCS_STYLE.encode()).digest()).decode()
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; "
        f"style-src 'self' 'sha256-{_DOCS_STYLE_HASH}'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
}


def hostname(host: str) -> str:
    """The name in a Host header or an origin's netloc, lower case, without port or brackets; ''
    unless what follows the name is a port (``localhost:evil.example`` and ``[::1]evil`` had
    passed as the names before them)."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:5000
        end = host.find("]")
        name, rest = (host[1:end], host[end + 1 :]) if end > 0 else ("", "")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
        rest = ":" + port
    else:
        name, rest = host, ""
    port = rest.removeprefix(":")
    return name if not rest or (rest.startswith(":") and (not port or (port.isascii() and port.isdigit()))) else ""


def allowed_hosts(settings: Settings) -> set[str]:
    names = {hostname(name) for name in settings.allowed_hosts.split(",") if name.strip()}
    if settings.host not in ("0.0.0.0", "::", ""):
        names.add(hostname(settings.host))
    names.discard("")  # a malformed entry ("http://tagsmith.lan") names no host: it allows none
    return names


# Headers the checks below read, each of which a request may send once.
ONE_ONLY = (b"host", b"origin", b"sec-fetch-site")


def cross_site(headers: dict[bytes, bytes], host: str) -> bool:
    """Whether a browser says this request comes from a page of another site."""
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return True
    origin = headers.get(b"origin")
    if origin is None:
        return False
    netloc = urlsplit(origin.decode("latin-1")).netloc
    return not netloc or netloc.lower() != host.strip().lower()  # "null" (sandboxed, file:) has no netloc


class SameOrigin:
    """Refuses requests for other hosts and cross-site writes; adds the security headers."""

    def __init__(self, app: ASGIApp, settings: Callable[[Scope], Settings]) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings(scope)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        hosts = allowed_hosts(settings)
        refusal = None
        named = [name for name, _ in scope["headers"] if name in ONE_ONLY]
        repeated = [name.decode() for name in ONE_ONLY if named.count(name) > 1]
        if repeated:  # which one would count? (the last one had: a second Origin passed a cross-site write)
            refusal = error_response(400, "bad_request", f"The request has more than one {repeated[0].title()} header.")
        elif "*" not in hosts and hostname(host) not in hosts and scope["path"] not in ANY_HOST_PATHS:
            refusal = error_response(400, "host_not_allowed", f"This server does not answer for the host "
                                     f"{host!r}; add its name to TAGSMITH_ALLOWED_HOSTS to allow it.")
        elif changes_data(scope["method"], scope["path"]) and cross_site(headers, host):
            refusal = error_response(403, "cross_site_request", "A page this server did not serve asked to "
                                     "change data here; requests that change data must come from this server's "
                                     "own page or from a program (curl, a script, the Python client).")
        elif costly_read(scope["method"], scope["path"]) and cross_site(headers, host):
            refusal = error_response(403, "cross_site_request", "A page this server did not serve asked for an "
                                     "answer that costs this server much work; ask for it from this server's own "
                                     "page, by its address typed into the browser, or from a program.")

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    response_headers.setdefault(name, value)
                # The page's files may be stored, but are asked for again each time (304 while
                # unchanged): unversioned, a browser had kept an old app.js after an upgrade.
                cacheable = scope["path"].startswith(CACHEABLE_PREFIXES)
                response_headers.setdefault("Cache-Control", "no-cache" if cacheable else "no-store")
            await send(message)

        await (refusal or self.app)(scope, receive, secured)
