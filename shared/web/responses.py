"""JSON responses rendered by orjson: several times faster than the standard library on large bodies
(a prediction over a thousand tags), with the same compact output."""

from __future__ import annotations

from typing import Any

import orjson
from starlette import responses


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
