"""Reading multipart uploads: one file streamed into one buffer, or every file of a field."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from shared.core.errors import DomainError, InvalidInput, TooLarge


def _malformed(exc: Exception) -> InvalidInput:
    """What the multipart parser found wrong: its words (Starlette's HTTPException: its detail,
    without the "400: " its text adds)."""
    reason = str(getattr(exc, "detail", exc)).rstrip(".")
    return InvalidInput("malformed_body", f"The multipart body cannot be parsed: {reason}.")


async def _parse_form(request: Request, field: str, max_files: int, max_fields: int) -> FormData:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):  # media types ignore case
        raise InvalidInput("missing_field", f"Send the file as multipart/form-data in the field '{field}'.")
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except DomainError:
        raise
    except Exception as exc:  # malformed multipart bodies raise several types
        raise _malformed(exc) from None


async def read_uploads(
    request: Request, limit: int, max_files: int, field: str = "data"
) -> tuple[list[tuple[str, bytes | DomainError]], FormData]:
    """Every file of the multipart field ``field`` as (file name, bytes, or the TooLarge it earned), in
    order, and the form's other fields; 400 without files or with more than ``max_files``."""
    form = await _parse_form(request, field, max_files + 4, 4 * max_files + 16)
    try:
        uploads = form.getlist(field)
        if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
            raise InvalidInput("missing_field", f"Send one or more files in the multipart field '{field}'.")
        if len(uploads) > max_files:
            raise InvalidInput("too_many_files", f"Send at most {max_files} files in one request.")
        files: list[tuple[str, bytes | DomainError]] = []
        for upload in uploads:
            assert isinstance(upload, UploadFile)
            data = await upload.read(limit + 1)
            too_big = TooLarge("too_large", f"The file is larger than {limit} bytes ({limit / 2**20:.4g} MiB).")
            files.append((upload.filename or "", too_big if len(data) > limit else data))
        return files, form
    finally:
        await form.close()


def _file_name(raw: bytes) -> str:
    """A part's file name as Starlette's form parser reads it (``read_uploads``): UTF-8, or Latin-1
    where it is not valid UTF-8, so that one file gets one name from every upload endpoint."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class _OneFile:
    """python-multipart callbacks that keep only the bytes of one file field, straight into one
    buffer: no form, temp files or per-part writes, and no second copy (``BytesIO.getvalue`` hands
    over its buffer). Parts and limits are as Starlette's form parser sees them: the last part
    named ``field`` wins, and more than 4 files or 16 other fields is a malformed body."""

    max_files, max_fields = 4, 16

    def __init__(self, field: str, limit: int, sink: BinaryIO | None = None) -> None:
        self.field = field.encode()
        self.sink = sink  # the file the wanted part goes to, instead of a buffer of its own
        self.limit = limit
        self.files = self.fields = 0
        self.header_name = self.header_value = self.disposition = b""
        self.buffer: BinaryIO | None = None  # the part being read, when it is the wanted file
        self.found: BinaryIO | bool | None = None  # the last complete wanted part; False: not a file
        self.filename = self.reading = ""  # the found part's file name; the one being read

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
                self.buffer = io.BytesIO() if self.sink is None else self.sink
                self.buffer.seek(0)
                self.buffer.truncate()
                self.reading = _file_name(options[b"filename"])
            else:
                self.found = False

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.buffer is not None:
            if self.buffer.tell() + end - start > self.limit:
                raise TooLarge("too_large", f"The file is larger than {self.limit} bytes ({self.limit / 2**20:.4g} MiB).")
            self.buffer.write(memoryview(data)[start:end])

    def on_part_end(self) -> None:
        if self.buffer is not None:
            self.found, self.buffer, self.filename = self.buffer, None, self.reading

    def callbacks(self) -> dict[str, Callable[..., None]]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end",
                 "on_headers_finished", "on_part_data", "on_part_end")
        return {name: getattr(self, name) for name in names}


async def read_upload(request: Request, limit: int, field: str = "data") -> bytes:
    """The bytes of the multipart file field ``field``; 400 if absent, 413 if over ``limit``."""
    return (await read_named_upload(request, limit, field))[0]


async def read_named_upload(request: Request, limit: int, field: str = "data") -> tuple[bytes, str]:
    """The bytes and file name of the multipart file field ``field``; 400 if absent, 413 if over ``limit``.

    The body is parsed as it arrives and only that file is kept, in one buffer."""
    wanted = await _parse_one(request, _OneFile(field, limit), field)
    assert isinstance(wanted.found, io.BytesIO)
    return wanted.found.getvalue(), wanted.filename


async def read_upload_to_file(request: Request, limit: int, file: BinaryIO, field: str = "data") -> str:
    """Write the multipart file field ``field`` into ``file`` (a temporary file: an upload too
    large to hold in memory) and return its file name; 400 if absent, 413 if over ``limit``.
    The writes run in the threadpool; ``file`` is left at its start."""
    wanted = await _parse_one(request, _OneFile(field, limit, sink=file), field, in_threadpool=True)
    file.seek(0)
    return wanted.filename


async def _parse_one(request: Request, wanted: _OneFile, field: str, in_threadpool: bool = False) -> _OneFile:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):  # media types ignore case
        raise InvalidInput("missing_field", f"Send the file as multipart/form-data in the field '{field}'.")
    try:
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise ValueError("Missing boundary in multipart.")
        parser = MultipartParser(boundary, wanted.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            if in_threadpool:
                await run_in_threadpool(parser.write, chunk)
            else:
                parser.write(chunk)
        parser.finalize()
    except DomainError:
        raise
    except Exception as exc:  # malformed multipart bodies raise several types
        raise _malformed(exc) from None
    if wanted.found is None:
        raise InvalidInput("missing_field", f"The multipart field '{field}' is missing.")
    if wanted.found is False:
        raise InvalidInput("missing_field", f"The field '{field}' must be a file upload.")
    return wanted
