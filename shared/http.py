"""What every function app shares: JSON errors, the request body limit, upload reading, request ids,
logs and metrics, and the operations and documentation routes."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import redis
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import openapi, ops
from shared.auth import ApiKeys
from shared.errors import ApiError, bad_request, too_large
from shared.observability import RequestObserver
from shared.process import tune_process
from shared.responses import JSONResponse
from shared.settings import get_settings
from shared.store import ObjectNotFound, StoreUnavailable

log = logging.getLogger("tagsmith")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 408: "body_timeout", 413: "too_large"}


def json_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
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


async def _object_gone(request: Request, exc: Exception) -> Response:
    """An object (an image's bytes, say) deleted by another request between our check and our read."""
    return json_error(404, "not_found", "What this request needs was deleted meanwhile.")


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return json_error(500, "internal_error", "The server failed to handle this request.")


class BodyLimit:
    """Refuses request bodies over a per-path byte limit, whether or not Content-Length is sent,
    and bodies that stall: waiting more than ``timeout()`` seconds for the next piece is a 408."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], timeout: Callable[[], float]) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timeout = timeout

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
        received, complete, timeout = 0, False, self.timeout()

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body only a disconnect can come: no deadline
                return await receive()
            try:
                with anyio.fail_after(timeout):
                    message = await receive()
            except TimeoutError:
                raise ApiError(408, "body_timeout", f"The request body stalled for over {timeout:g} s.") from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > limit:
                raise too_large("too_large", f"The request body is larger than {limit} bytes.")
            return message

        await self.app(scope, limited_receive, send)


def body_limit_for_path(path: str) -> int:
    """State archives and batches may be larger than one image upload; 64 KiB covers multipart framing."""
    settings = get_settings()
    limits = {"/set_state": settings.max_archive_bytes, "/custom/add_many": settings.max_batch_bytes}
    return limits.get(path.rstrip("/"), settings.max_upload_bytes) + 64 * 1024


async def _parse_form(request: Request, field: str, max_files: int, max_fields: int) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):  # media types ignore case
        raise bad_request("missing_field", f"Send the file as multipart/form-data in the field '{field}'.")
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except ApiError:
        raise
    except Exception as exc:  # malformed multipart bodies raise several types
        raise bad_request("malformed_body", f"The multipart body cannot be parsed: {exc}") from None


async def read_uploads(
    request: Request, limit: int, max_files: int, field: str = "data"
) -> tuple[list[tuple[str, bytes | ApiError]], FormData]:
    """Every file of the multipart field ``field`` as (file name, bytes, or the 413 it earned), in
    order, and the form's other fields; 400 without files or with more than ``max_files``."""
    form = await _parse_form(request, field, max_files + 4, 4 * max_files + 16)
    try:
        uploads = form.getlist(field)
        if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
            raise bad_request("missing_field", f"Send one or more files in the multipart field '{field}'.")
        if len(uploads) > max_files:
            raise bad_request("too_many_files", f"Send at most {max_files} files in one request.")
        files: list[tuple[str, bytes | ApiError]] = []
        for upload in uploads:
            assert isinstance(upload, UploadFile)
            data = await upload.read(limit + 1)
            too_big = too_large("too_large", f"The file is larger than {limit} bytes.")
            files.append((upload.filename or "", too_big if len(data) > limit else data))
        return files, form
    finally:
        await form.close()


class _OneFile:
    """python-multipart callbacks that keep only the bytes of one file field, straight into one
    buffer: no form, temp files or per-part writes, and no second copy (``BytesIO.getvalue`` hands
    over its buffer). Parts and limits are as Starlette's form parser sees them: the last part
    named ``field`` wins, and more than 4 files or 16 other fields is a malformed body."""

    max_files, max_fields = 4, 16

    def __init__(self, field: str, limit: int) -> None:
        self.field = field.encode()
        self.limit = limit
        self.files = self.fields = 0
        self.header_name = self.header_value = self.disposition = b""
        self.buffer: io.BytesIO | None = None  # the part being read, when it is the wanted file
        self.found: io.BytesIO | bool | None = None  # the last complete wanted part; False: not a file

    def on_part_begin(self) -> None:
        self.disposition = b""
        self.buffer = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise ValueError('The Content-Disposition header field "name" must be provided.')
        is_file = b"filename" in options
        if is_file:
            self.files += 1
            if self.files > self.max_files:
                raise ValueError(f"Too many files. Maximum number of files is {self.max_files}.")
        else:
            self.fields += 1
            if self.fields > self.max_fields:
                raise ValueError(f"Too many fields. Maximum number of fields is {self.max_fields}.")
        if options[b"name"] == self.field:
            if is_file:
                self.buffer = io.BytesIO()
            else:
                self.found = False

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.buffer is not None:
            if self.buffer.tell() + end - start > self.limit:
                raise too_large("too_large", f"The file is larger than {self.limit} bytes.")
            self.buffer.write(memoryview(data)[start:end])

    def on_part_end(self) -> None:
        if self.buffer is not None:
            self.found, self.buffer = self.buffer, None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                 "on_headers_finished", "on_part_data", "on_part_end")
        return {name: getattr(self, name) for name in names}


async def read_upload(request: Request, limit: int, field: str = "data") -> bytes:
    """The bytes of the multipart file field ``field``; 400 if absent, 413 if over ``limit``.

    The body is parsed as it arrives and only that file is kept, in one buffer."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):  # media types ignore case
        raise bad_request("missing_field", f"Send the file as multipart/form-data in the field '{field}'.")
    wanted = _OneFile(field, limit)
    try:
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise ValueError("Missing boundary in multipart.")
        parser = MultipartParser(boundary, wanted.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # malformed multipart bodies raise several types
        raise bad_request("malformed_body", f"The multipart body cannot be parsed: {exc}") from None
    if wanted.found is None:
        raise bad_request("missing_field", f"The multipart field '{field}' is missing.")
    if wanted.found is False:
        raise bad_request("missing_field", f"The field '{field}' must be a file upload.")
    assert isinstance(wanted.found, io.BytesIO)
    return wanted.found.getvalue()


def create_app(routes: Sequence[BaseRoute], **kwargs: Any) -> Starlette:
    """A Starlette app with tagsmith's error handling, body limit, request ids, access logs and
    metrics around ``routes``, plus ``/health``, ``/ready``, ``/metrics``, ``/openapi.json`` and ``/docs``."""
    tune_process()  # however the app is started: tagsmith serve, uvicorn, tests
    return Starlette(
        routes=[*ops.routes, *openapi.routes, *routes],
        middleware=[
            Middleware(RequestObserver),
            Middleware(ApiKeys, keys=lambda: get_settings().api_key_list),
            Middleware(BodyLimit, limit_for=body_limit_for_path, timeout=lambda: get_settings().body_read_timeout_s),
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            redis.RedisError: _backend_down,
            StoreUnavailable: _backend_down,
            ObjectNotFound: _object_gone,
            Exception: _unexpected,
        },
        **kwargs,
    )


def query_int(request: Request, name: str, default: int, lowest: int, highest: int) -> int:
    """An integer query parameter within [lowest, highest], or a 400 saying so."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lowest - 1
    if not lowest <= value <= highest:
        raise bad_request("invalid_parameter", f"'{name}' must be a whole number from {lowest} to {highest}.")
    return value
