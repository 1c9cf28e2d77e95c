"""Routes whose path parameters are validated in one place, before any endpoint runs, and the
query parameters' parsing.

Every function's routes are ``ApiRoute``s: a ``tag``, ``image_id``, ``type`` or ``version`` in
the path reaches the endpoint already checked and in canonical form (tags in NFC, versions as
ints), or the request ends in a 400 saying what is wrong.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from shared.core.errors import InvalidInput
from shared.core.names import (
    validate_image_id,
    validate_sample_type,
    validate_tag,
    validate_task_id,
    validate_version,
)

# Path parameter name -> its check. A tag named in a path may exist under a length limit since
# lowered; a new one made by name meets the limit where it is made (``labels.check_new_tags``).
PATH_PARAMETERS: dict[str, Callable[[str], Any]] = {
    "tag": validate_tag,
    "image_id": validate_image_id,
    "type": validate_sample_type,
    "version": validate_version,
    "task_id": validate_task_id,
}

# Numbers in query parameters as people write them: ASCII digits only (Python's int() and float()
# would also take "1_0", " 5 ", Arabic-Indic digits, "inf").
WHOLE_NUMBER = re.compile(r"[-+]?[0-9]{1,18}", re.ASCII)
DECIMAL_NUMBER = re.compile(r"[-+]?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3})?", re.ASCII)


# The seed calls these with GET, so a GET to them changes data.
WRITING_GETS = ("/custom/assign/", "/custom/unassign/", "/custom/train/", "/custom/delete/", "/custom/rollback/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def changes_data(method: str, path: str) -> bool:
    """Whether a request may change data: any method but GET, HEAD and OPTIONS, and the seed's GETs above."""
    return method not in SAFE_METHODS or path.startswith(WRITING_GETS)


# Reads that cost the server much work: a whole backup or state archive, the ONNX export, every
# library score, suggestions that may embed a thousand images. A page of another site cannot read
# their answers, but could have its visitors' browsers ask for them over and over (``<img src>``).
COSTLY_READS = frozenset({"/backup", "/get_state", "/export/onnx", "/custom/library/export"})
COSTLY_READ_PREFIXES = ("/custom/suggest/",)
COSTLY_IMAGE_READS = ("/similar",)  # under /custom/images/<id>: up to a thousand stored vectors a call


def costly_path(path: str) -> bool:
    """Whether a GET of ``path`` asks for one of the costly answers above."""
    return path in COSTLY_READS or path.startswith(COSTLY_READ_PREFIXES) or (
        path.startswith("/custom/images/") and path.endswith(COSTLY_IMAGE_READS))


def costly_read(method: str, path: str) -> bool:
    """Whether a GET or HEAD asks for one of the costly answers above."""
    return method in ("GET", "HEAD") and costly_path(path)


class ApiRoute(Route):
    """A route that validates its path parameters (``PATH_PARAMETERS``) before its endpoint runs,
    and refuses a URL whose percent-escapes are not UTF-8 (servers decode them with replacement
    characters: ``caf%E9`` would silently become the tag ``caf\ufffd``).

    A route whose GET changes data (``WRITING_GETS``) or costs much work (``costly_path``) takes
    no HEAD (405, its methods in ``Allow``): Starlette would answer HEAD by running the GET (a
    whole backup, made and thrown away), and link checkers and prefetchers send HEAD as a harmless
    probe."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self.methods and (path.startswith(WRITING_GETS) or costly_path(path)):
            self.methods.discard("HEAD")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:  # Starlette answers 405 first
            await super().handle(scope, receive, send)
            return
        _require_utf8(scope)
        params = scope.get("path_params", {})
        if any(name in PATH_PARAMETERS for name in params):
            scope["path_params"] = {
                name: PATH_PARAMETERS[name](value) if name in PATH_PARAMETERS else value
                for name, value in params.items()
            }
        await super().handle(scope, receive, send)


def _require_utf8(scope: Scope) -> None:
    raw_path: bytes = scope.get("raw_path") or b""
    query: bytes = scope.get("query_string") or b""
    try:
        unquote_to_bytes(raw_path).decode()
        unquote_to_bytes(query.replace(b"+", b" ")).decode()
    except UnicodeDecodeError:
        raise InvalidInput("invalid_encoding", "The URL's percent-escapes are not UTF-8 (encode the text as "
                           "UTF-8 before percent-encoding it).") from None


def query_text(request: Request, name: str) -> str:
    """A text query parameter ('' when absent) in NFC, as tags and file names are stored: "café"
    typed with a combining accent finds "café"."""
    return unicodedata.normalize("NFC", request.query_params.get(name, ""))


def query_int(request: Request, name: str, default: int, lowest: int, highest: int) -> int:
    """An integer query parameter within [lowest, highest], or InvalidInput saying so."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = int(raw) if WHOLE_NUMBER.fullmatch(raw) else lowest - 1
    if not lowest <= value <= highest:
        raise InvalidInput("invalid_parameter", f"'{name}' must be a whole number from {lowest} to {highest}.")
    return value


def query_tags(request: Request, name: str) -> list[str]:
    """The tags a repeatable query parameter names, each validated, in order, each once (a tag named
    again would only repeat work)."""
    return list(dict.fromkeys(validate_tag(tag) for tag in request.query_params.getlist(name)))


def query_float(request: Request, name: str, lowest: float, highest: float) -> float | None:
    """A number query parameter within [lowest, highest] (None when absent), or InvalidInput saying so."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    value = float(raw) if DECIMAL_NUMBER.fullmatch(raw) else math.nan
    if not lowest <= value <= highest:  # NaN fails too
        raise InvalidInput("invalid_parameter", f"'{name}' must be a number from {lowest:g} to {highest:g}.")
    return value


def query_choice(request: Request, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
    """A query parameter that must be one of ``choices`` (``default`` when absent)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise InvalidInput("invalid_parameter", f"'{name}' must be one of: {', '.join(choices)}.")
    return raw


def query_bool(request: Request, name: str) -> bool | None:
    """A true/false query parameter (None when absent)."""
    raw = query_choice(request, name, ("true", "false", "1", "0"))
    return None if raw is None else raw in ("true", "1")
