"""Middleware around every app: a request id, one JSON access log line and metrics per request."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.core.logs import request_id
from shared.web import metrics
from shared.web.errors import internal_error

access_log = logging.getLogger("tagsmith.access")
log = logging.getLogger("tagsmith")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_CONVERTER = re.compile(r":\w+}")  # {tag:path} -> {tag}, as in the OpenAPI schema
_QUIET_ROUTES = {"/health", "/ready", "/metrics"}  # probes and scrapes log at DEBUG


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/status/{task_id}``), so metrics stay low-cardinality."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return _CONVERTER.sub("}", path) if isinstance(path, str) and path else "<unmatched>"


class RequestObserver:
    """Gives each request an id (a client's ``X-Request-ID`` when sane), echoed in the response,
    set for the logs, and counts and times the request by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        rid = supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status, response_started = 500, False

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if response_started:
                raise
            await internal_error({"X-Request-ID": rid})(scope, receive, send)
            status = 500
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            metrics.REQUESTS.labels(method, route, str(status)).inc()
            metrics.LATENCY.labels(method, route).observe(seconds)
            access_log.log(
                logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"method": scope["method"], "path": scope["path"], "route": route, "status": status,
                       "duration_ms": round(seconds * 1000, 2)},
            )
            request_id.reset(token)
