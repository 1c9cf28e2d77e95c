"""What every function app shares: JSON errors, the request body limit and upload reading."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ApiError, bad_request, too_large
from shared.settings import get_settings
from shared.store import StoreUnavailable

log = logging.getLogger("tagsmith")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "too_large"}


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_error(exc.status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "No such route." if exc.status_code == 404 else str(exc.detail)
    return json_error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), message, exc.headers)


async def _backend_down(request: Request, exc: Exception) -> Response:
    backend = "Redis" if isinstance(exc, redis.RedisError) else "the object store"
    log.warning("backend unavailable: %s", exc)
    return json_error(503, "backend_unavailable", f"{backend} is unavailable; try again shortly.")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return json_error(500, "internal_error", "The server failed to handle this request.")


class BodyLimit:
    """Refuses request bodies over a per-path byte limit, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await json_error(413, "too_large", f"The request body is larger than {limit} bytes.")(
                    scope, receive, send
                )
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large("too_large", f"The request body is larger than {limit} bytes.")
            return message

        await self.app(scope, limited_receive, send)


def body_limit_for_path(path: str) -> int:
    """State archives may be larger than image uploads; 64 KiB covers multipart framing."""
    settings = get_settings()
    limit = settings.max_archive_bytes if path.rstrip("/") == "/set_state" else settings.max_upload_bytes
    return limit + 64 * 1024


async def read_upload(request: Request, limit: int, field: str = "data") -> bytes:
    """The bytes of the multipart file field ``field``; 400 if absent, 413 if over ``limit``."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise bad_request("missing_field", f"Send the file as multipart/form-data in the field '{field}'.")
    try:
        form = await request.form(max_files=4, max_fields=16)
    except ApiError:
        raise
    except Exception as exc:  # malformed multipart bodies raise several types
        raise bad_request("malformed_body", f"The multipart body cannot be parsed: {exc}") from None
    try:
        upload = form.get(field)
        if upload is None:
            raise bad_request("missing_field", f"The multipart field '{field}' is missing.")
        if not isinstance(upload, UploadFile):
            raise bad_request("missing_field", f"The field '{field}' must be a file upload.")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise too_large("too_large", f"The file is larger than {limit} bytes.")
        return data
    finally:
        await form.close()


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers."""
    return JSONResponse({"status": "ok"})


def create_app(routes: Sequence[BaseRoute], **kwargs: Any) -> Starlette:
    """A Starlette app with tagsmith's error handling, body limit and ``/health`` around ``routes``."""
    return Starlette(
        routes=[Route("/health", health, methods=["GET"]), *routes],
        middleware=[Middleware(BodyLimit, limit_for=body_limit_for_path)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            redis.RedisError: _backend_down,
            StoreUnavailable: _backend_down,
            Exception: _unexpected,
        },
        **kwargs,
    )
