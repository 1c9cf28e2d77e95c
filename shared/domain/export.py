"""Rows of the library's scores as text, a chunk at a time: CSV with a header, or JSON lines."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

COLUMNS = ("image_id", "filename", "tag", "score", "match", "version")
# A spreadsheet opening the CSV would run a cell starting with one of these as a formula (CSV
# injection): such text cells (file names, tags) get a leading apostrophe, as OWASP advises.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A spreadsheet whose list separator is ";" (many European locales), or that splits at tabs,
# reads what follows one inside a text as a cell of its own: a formula start there is defused too
# (a "," is no separator there, and inside the quoted text none in a comma-separated reading).
EMBEDDED_FORMULA = re.compile(r"([;\t][ \"]*)([=+\-@])")

Row = tuple[str, str, str, float, bool, int]  # image id, file name, tag, score, match, version


def csv_lines(chunks: Iterable[list[Row]]) -> Iterator[str]:
    """The header, then one CSV line per row (``match`` as true/false; text quoted, and where a
    spreadsheet would take part of it for a formula, that part starts with an apostrophe), a chunk
    of rows per piece."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
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
    if not isinstance(value, str):
        return value
    value = EMBEDDED_FORMULA.sub(r"\1'\2", value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value
