"""Rows of the library's scores as text, a chunk at a time: CSV with a header, or JSON lines."""

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

Row = tuple[str, str, str, float, bool, int]  # image id, file name, tag, score, match, version


def csv_lines(chunks: Iterable[list[Row]]) -> Iterator[str]:
    """The header, then one CSV line per row (``match`` as true/false; text that a spreadsheet
    would take for a formula starts with an apostrophe), a chunk of rows per piece."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for chunk in chunks:
        writer.writerows((image_id, _cell(name), _cell(tag), score, "true" if match else "false", version)
                         for image_id, name, tag, score, match, version in chunk)
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    yield out.getvalue()


def json_lines(chunks: Iterable[list[Row]]) -> Iterator[str]:
    """One JSON object per row and line, a chunk of rows per piece."""
    for chunk in chunks:
        yield "".join(json.dumps(dict(zip(COLUMNS, row, strict=True)), ensure_ascii=False) + "\n" for row in chunk)


def _cell(value: Any) -> Any:
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value
