"""Finding images in the library: by tag scores, labels and file name (``find``), by likeness
(``similar``), and every score at once (``export_rows``).

A query reads what it needs from Redis (the live bitmap, one score column per tag it names, the
tag's examples) and filters and sorts the library's rows with numpy; the row -> image id table only
grows, so each process keeps it (``RowCache``) and reads only the rows added since. Pages follow a
cursor (the last row's sort key and row), so paging stays in order while scores change.
"""

from __future__ import annotations

import base64
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.core.errors import Conflict, InvalidInput, Unavailable
from shared.core.npy import load_arrays
from shared.core.process import cpu_pool
from shared.data import keys
from shared.data.library import Library, text
from shared.data.store import ObjectNotFound
from shared.domain import catalog
from shared.domain.embeddings import vector_from_bytes
from shared.domain.export import Row
from shared.domain.images import describe, known_image
from shared.domain.library import semantic_unit

if TYPE_CHECKING:
    from shared.domain.services import Services

LABELS = ("positive", "negative", "none")
SORTS = ("score", "date")
SHORTLIST = 100  # /similar ranks this many (or 5 x the limit) with the full vectors
MAX_QUERY_TAGS = 20  # tags one search may name: each costs one score column read (4 bytes per image)


@dataclass(frozen=True)
class Rows:
    """The library's first ``n`` rows as one refresh saw them. A later refresh only appends to these
    lists (or starts new ones when the data was replaced), so a request keeps a consistent view
    while other requests refresh the cache."""

    ids: list[str]
    names: list[str]
    row_of: dict[str, int]  # an id's latest row; may already hold rows past ``n``
    n: int

    def row(self, image_id: str) -> int | None:
        """The id's latest row among the first ``n``, or None."""
        row = self.row_of.get(image_id)
        return row if row is not None and row < self.n else None


class RowCache:
    """The library's row -> (image id, file name) table as far as this process has read it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._names: list[str] = []
        self._row_of: dict[str, int] = {}

    def refresh(self, library: Library) -> Rows:
        """Read the rows added since the last call; the rows as they are now."""
        with self._lock:
            with library.redis.pipeline(transaction=False) as pipe:
                pipe.llen(library.keys.ids)
                pipe.lindex(library.keys.ids, max(len(self._ids) - 1, 0))
                count, last = pipe.execute()
            if self._ids and (count < len(self._ids) or text(last) != self._ids[-1]):  # the data was replaced
                self._ids, self._names, self._row_of = [], [], {}
            ids, names = library.rows(len(self._ids))
            self._row_of.update((image_id, len(self._ids) + i) for i, image_id in enumerate(ids))
            self._ids += ids
            self._names += names
            return Rows(self._ids, self._names, self._row_of, len(self._ids))


@dataclass
class Query:
    """What ``find`` looks for; every part optional."""

    tag: str | None = None
    match: bool | None = None  # of ``tag``: at or above its threshold (true) or scored below it
    min_score: float | None = None
    max_score: float | None = None
    label: str | None = None  # of ``tag``: positive, negative or none (not labelled either way)
    all_of: list[str] = field(default_factory=list)  # matches every one of these tags
    any_of: list[str] = field(default_factory=list)  # matches at least one
    none_of: list[str] = field(default_factory=list)  # matches none
    filename: str | None = None  # a part of the file name, any case
    sort: str | None = None  # score or date; None: score when ``tag`` has a model, else date
    descending: bool = True
    limit: int = 50
    offset: int = 0
    cursor: str | None = None

    def tags(self) -> list[str]:
        named = ([self.tag] if self.tag else []) + self.all_of + self.any_of + self.none_of
        return list(dict.fromkeys(named))


def _encode_cursor(key: float, row: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([key, row]).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        key, row = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (type(key) in (int, float) and math.isfinite(key) and type(row) is int and row >= 0):
            raise ValueError("not a cursor this server makes")
        return float(key), row
    except Exception:
        raise InvalidInput("invalid_cursor", "The cursor is not one this server gave; start again without it.") from None


def find(services: Services, query: Query) -> dict[str, Any]:
    """A page of library images matching ``query``, the number matching, and the cursor of the next page."""
    by_score = query.match is not None or query.min_score is not None or query.max_score is not None \
        or query.sort == "score"
    if (by_score or query.label) and not query.tag:
        raise InvalidInput("missing_parameter", "Give 'tag' to filter or sort by a tag's scores or labels.")
    if len(query.tags()) > MAX_QUERY_TAGS:
        raise InvalidInput("too_many_tags", f"A search may name at most {MAX_QUERY_TAGS} tags.")
    if query.tag:
        catalog.require_tag(services, query.tag)
    models = services.registry.models_of(query.tags())
    if query.sort is None:
        query.sort = "score" if query.tag in models else "date"
    for name in ([query.tag] if query.tag and by_score else []) + query.all_of + query.any_of + query.none_of:
        if name not in models:
            raise catalog.no_model(name)
    services.registry.index_library()
    library = services.library
    rows = services.rows.refresh(library)
    n = rows.n
    live = library.live(n)
    mask = live.copy()
    with_scores = [t for t in query.tags() if t in models]
    columns = dict(zip(with_scores, library.read_scores(with_scores, n), strict=True))

    def matching(name: str) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return columns[name] >= models[name].threshold

    tag = query.tag
    if tag and query.match is not None:
        mask &= matching(tag) if query.match else ~matching(tag) & ~np.isnan(columns[tag])
    with np.errstate(invalid="ignore"):
        if tag and query.min_score is not None:
            mask &= columns[tag] >= query.min_score
        if tag and query.max_score is not None:
            mask &= columns[tag] <= query.max_score
    labels: dict[str, str] = {}
    if tag:
        positives, negatives = services.registry.examples(tag)
        labels = {**dict.fromkeys(negatives, "negative"), **dict.fromkeys(positives, "positive")}
    if tag and query.label:
        labelled = np.zeros(n, dtype=bool)
        wanted = labels if query.label == "none" else {i: t for i, t in labels.items() if t == query.label}
        labelled[[row for i in wanted if (row := rows.row(i)) is not None]] = True
        mask &= ~labelled if query.label == "none" else labelled
    for name in query.all_of:
        mask &= matching(name)
    if query.any_of:
        mask &= np.logical_or.reduce([matching(name) for name in query.any_of])
    for name in query.none_of:
        mask &= ~matching(name)
    if query.filename:
        part = query.filename.casefold()
        named = np.array([part in name.casefold() for name in rows.names[:n]], dtype=bool)
        mask &= named

    order = np.arange(n)
    if query.sort == "score" and tag:
        missing = -1.0 if query.descending else 2.0  # images not scored yet come last
        key = np.where(np.isnan(columns[tag]), missing, columns[tag]).astype(np.float64)
    else:
        key = order.astype(np.float64)
    total = int(mask.sum())
    if query.cursor:
        after_key, after_row = _decode_cursor(query.cursor)
        if query.descending:
            mask &= (key < after_key) | ((key == after_key) & (order < after_row))
        else:
            mask &= (key > after_key) | ((key == after_key) & (order > after_row))
    page, more = _first(np.flatnonzero(mask), key, query.descending, query.offset + query.limit)
    page = page[query.offset :]
    ids = [rows.ids[r] for r in page]
    metas = services.registry.images(ids)
    images = []
    for row, image_id, meta in zip(page.tolist(), ids, metas, strict=True):
        if not meta:
            continue  # deleted since the bitmap was read
        item = describe(image_id, meta)
        for name, column in columns.items():
            if name == tag:
                score = column[row]
                item["score"] = None if np.isnan(score) else round(float(score), 6)
                item["match"] = bool(score >= models[name].threshold) if not np.isnan(score) else None
        if tag:
            item.setdefault("score", None)  # no model yet
            item.setdefault("match", None)
            item["label"] = labels.get(image_id)
        images.append(item)
    scored = library.scored()
    return {
        "total": total,
        "offset": query.offset,
        "limit": query.limit,
        "images": images,
        "next": _encode_cursor(float(key[page[-1]]), int(page[-1])) if more and len(page) else None,
        "tags": {
            name: {"version": models[name].version, "threshold": models[name].threshold,
                   "scores_from": scored.get(name)}
            for name in with_scores
        },
    }


def _first(chosen: np.ndarray, key: np.ndarray, descending: bool, count: int) -> tuple[np.ndarray, bool]:
    """The first ``count`` of the rows ``chosen`` ordered by (key, row), highest first when
    ``descending``, and whether more follow. Only the rows at or beyond the count-th key are
    sorted: a page of 50 out of 100,000 matches sorts about 50."""
    sign = -1.0 if descending else 1.0
    total = len(chosen)
    keys = sign * key[chosen]
    if total > count:
        bound = np.partition(keys, count - 1)[count - 1]
        near = keys <= bound  # ties at the bound all come along
        chosen, keys = chosen[near], keys[near]
    order = chosen[np.lexsort((sign * chosen, keys))]
    return order[:count], total > count


EXPORT_CHUNK = 5000


def export_rows(services: Services, tags: list[str], matches_only: bool) -> Iterator[list[Row]]:
    """One row per (scored image, tag) — image id, file name, tag, score, match, the version the
    scores come from — in chunks, tag by tag (memory: one score column and one chunk). Unknown
    tags are refused here, before the first chunk is asked for."""
    models = catalog.current_models(services, tags)
    services.registry.index_library()
    rows = services.rows.refresh(services.library)
    return _export_chunks(services, [t for t in tags or list(models)], models, rows, matches_only)


def _export_chunks(services: Services, tags: list[str], models: dict[str, Any], rows: Rows,
                   matches_only: bool) -> Iterator[list[Row]]:
    library, n = services.library, rows.n
    live = library.live(n)
    scored = library.scored()
    for tag in tags:
        pointer = models[tag]
        (column,) = library.read_scores([tag], n)
        version = scored.get(tag, pointer.version)
        with np.errstate(invalid="ignore"):
            matches = column >= pointer.threshold
        keep = np.flatnonzero(live & ~np.isnan(column) & (matches if matches_only else True))
        for start in range(0, len(keep), EXPORT_CHUNK):
            chunk = keep[start : start + EXPORT_CHUNK]
            yield [(rows.ids[r], rows.names[r], tag, score, match, version)
                   for r, score, match in zip(chunk.tolist(), np.round(column[chunk].astype(np.float64), 6).tolist(),
                                              matches[chunk].tolist(), strict=True)]


@dataclass(frozen=True)
class ShortVectors:
    rows: np.ndarray  # (N,) the library row of each vector
    vectors: np.ndarray  # (N, SIMILAR_SIZE) float32 unit vectors (float16 has no fast matmul)
    position: dict[int, int]  # row -> index into ``vectors``


class SimilarIndex:
    """The short vectors of every pack, as far as this process has read them (packs never change;
    a merged one is dropped when it leaves the list): about 1 KB per image in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._packs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._listing: tuple[str, ...] = ()
        self._current = ShortVectors(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), {})

    def current(self, services: Services) -> ShortVectors:
        """Every pack's short vectors now, reading only the packs not read before."""
        for _ in range(3):  # a merge may remove a pack between the listing and its read
            listing = tuple(services.library.packs())
            with self._lock:
                if listing == self._listing:
                    return self._current
                try:
                    fresh = {key: self._packs.get(key) or _short_vectors(services, key) for key in listing}
                except ObjectNotFound:
                    continue
                parts = list(fresh.values())
                rows = np.concatenate([r for r, _ in parts]) if parts else np.zeros(0, dtype=np.int64)
                vectors = (np.concatenate([v for _, v in parts]).astype(np.float32) if parts
                           else np.zeros((0, 0), dtype=np.float32))
                self._packs, self._listing = fresh, listing
                self._current = ShortVectors(rows, vectors, {int(row): i for i, row in enumerate(rows.tolist())})
                return self._current
        raise Unavailable("library_busy", "The library's packs are being merged; try again in a moment.")


def _short_vectors(services: Services, pack: str) -> tuple[np.ndarray, np.ndarray]:
    rows, vectors = load_arrays(services.store.get(keys.similar_key(pack)), "rows", "vectors")
    return rows, vectors


def similar(services: Services, image_id: str, limit: int) -> dict[str, Any]:
    """The stored images most like ``image_id`` in what they show (cosine of semantic embeddings),
    most similar first: shortlisted with the short vectors, ranked with the full ones."""
    known_image(services, image_id)
    services.registry.index_library()
    rows = services.rows.refresh(services.library)
    index = services.similar.current(services)
    row = rows.row(image_id)
    at = index.position.get(row) if row is not None else None
    if at is None:
        raise Conflict("not_embedded", f"Image '{image_id}' is not embedded into the library yet; a worker "
                       "does that shortly after it is added. Try again in a moment.")
    sims = index.vectors @ index.vectors[at]
    live = np.append(services.library.live(rows.n), False)  # rows embedded since the refresh: left out
    sims[~live[np.minimum(index.rows, rows.n)]] = -np.inf
    sims[at] = -np.inf
    count = int(np.isfinite(sims).sum())
    k = min(max(SHORTLIST, 5 * limit), count)
    shortlist = np.argpartition(-sims, k - 1)[:k] if k else np.zeros(0, dtype=np.int64)
    candidates = [rows.ids[int(index.rows[i])] for i in shortlist]
    exact = _exact_similarities(services, image_id, candidates)
    ranked = sorted(
        zip(candidates, [e if e is not None else float(sims[i]) for e, i in zip(exact, shortlist, strict=True)],
            strict=True),
        key=lambda pair: (-pair[1], pair[0]),
    )[:limit]
    metas = services.registry.images([c for c, _ in ranked])
    return {
        "image_id": image_id,
        "similar": [{**describe(c, meta), "similarity": round(s, 4)} for (c, s), meta in zip(ranked, metas, strict=True) if meta],
    }


def _exact_similarities(services: Services, image_id: str, candidates: list[str]) -> list[float | None]:
    """Cosine of the full semantic vectors (from the embedding cache) of each candidate with the
    image's; None where a vector is not cached."""
    spec = services.spec
    width = spec.embedding_size + spec.style_size

    def vector(one: str) -> np.ndarray | None:
        try:
            return vector_from_bytes(services.store.get(keys.embedding_key(spec.id, one)), width)
        except ObjectNotFound:
            return None

    vectors = list(cpu_pool().map(vector, [image_id, *candidates]))
    if vectors[0] is None:
        return [None] * len(candidates)
    query = semantic_unit(vectors[0][None, :], spec.embedding_size)[0]
    return [None if v is None else float(semantic_unit(v[None, :], spec.embedding_size)[0] @ query) for v in vectors[1:]]
