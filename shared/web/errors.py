"""The JSON error contract: every error answer is ``{"error": <code>, "message": <text>}`` with its
status, built here and nowhere else; domain errors map to their status in ``STATUS``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import redis
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from shared.core.errors import (
    Conflict,
    Damaged,
    DomainError,
    InvalidInput,
    NotFound,
    TooLarge,
    Unavailable,
    Unsupported,
)
from shared.data.store import ObjectNotFound, StoreUnavailable
from shared.web.responses import JSONResponse

log = logging.getLogger("tagsmith")

STATUS: dict[type[DomainError], int] = {
    InvalidInput: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Unsupported: 415,
    Unavailable: 503,
    Damaged: 500,
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 408: "body_timeout", 413: "too_large"}


class HttpError(DomainError):
    """An error only HTTP knows (a stalled body, a missing API key), with its own status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def status_of(error: DomainError) -> int:
    if isinstance(error, HttpError):
        return error.status
    return next(status for kind, status in STATUS.items() if isinstance(error, kind))


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The one builder of error answers."""
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def error_row(error: DomainError) -> dict[str, object]:
    """An error inside a larger answer (one file of a batch): its status, code and message."""
    return {"status": status_of(error), "error": error.code, "message": error.message}


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return error_response(status_of(exc), exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "No such route." if exc.status_code == 404 else str(exc.detail)
    headers = exc.headers
    if exc.status_code == 405:  # say what to send instead
        allowed = _allowed_methods(request, (headers or {}).get("Allow", ""))
        message = f"This route does not take {request.method}; it takes {' or '.join(allowed)}."
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message, headers)


def _allowed_methods(request: Request, first: str) -> list[str]:
    """The methods the path takes, sorted: Starlette's 405 names only the first route of the path
    (``first``, its Allow header), and a path may have a route per method (GET and DELETE)."""
    methods = {method for method in first.split(", ") if method}
    for route in getattr(request.app, "routes", ()):
        if getattr(route, "methods", None) and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    return sorted(methods)


async def _backend_down(request: Request, exc: Exception) -> Response:
    backend = "Redis" if isinstance(exc, redis.RedisError) else "the object store"
    log.warning("backend unavailable: %s", exc)
    return error_response(503, "backend_unavailable", f"{backend} is unavailable; try again shortly.")


async def _object_gone(request: Request, exc: Exception) -> Response:
    """An object (an image's bytes, say) deleted by another request between our check and our read."""
    return error_response(404, "not_found", "What this request needs was deleted meanwhile.")


def internal_error(headers: Mapping[str, str] | None = None) -> JSONResponse:
    return error_response(500, "internal_error", "The server failed to handle this request.", headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return internal_error()


HANDLERS = {
    DomainError: _domain_error,
    HTTPException: _http_error,
    redis.RedisError: _backend_down,
    StoreUnavailable: _backend_down,
    ObjectNotFound: _object_gone,
    Exception: _unexpected,
}
