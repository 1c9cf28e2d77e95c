"""Rows of the library's scores as text, a line at a time: CSV with a header, or JSON lines."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

COLUMNS = ("image_id", "filename", "tag", "score", "match", "version")
# A spreadsheet opening the CSV would run a cell starting with one of these as a formula (CSV
# injection): such text cells (file names, tags) get a leading apostrophe, as OWASP advises.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINES_PER_CHUNK = 2000  # rows joined into one piece of the stream


def csv_lines(first: dict[str, Any] | None, rest: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The header, then one CSV line per row (``match`` as true/false; text that a spreadsheet
    would take for a formula starts with an apostrophe)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in _rows(first, rest):
        writer.writerow([str(row[c]).lower() if c == "match" else _cell(row[c]) for c in COLUMNS])
        if out.tell() > 64 * 1024:
            yield out.getvalue()
            out.seek(0)
            out.truncate()
    yield out.getvalue()


def _cell(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def json_lines(first: dict[str, Any] | None, rest: Iterable[dict[str, Any]]) -> Iterator[str]:
    chunk: list[str] = []
    for row in _rows(first, rest):
        chunk.append(json.dumps(row, ensure_ascii=False))
        if len(chunk) >= LINES_PER_CHUNK:
            yield "\n".join(chunk) + "\n"
            chunk = []
    if chunk:
        yield "\n".join(chunk) + "\n"


def _rows(first: dict[str, Any] | None, rest: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    if first is not None:
        yield first
        yield from rest
