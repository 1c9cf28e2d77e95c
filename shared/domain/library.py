"""Keeping the library scored: workers embed newly stored images in batches into *packs* (many
rows' feature vectors in one object), score them with every current model, and rescore the whole
library when a tag gets a new version (training, rollback, a loaded state).

Packs are immutable objects in the store, listed in Redis (``Library.packs``); a rescore reads
them one at a time, so its memory is one pack plus one float per image per tag. Many small packs
(images added a few at a time) are merged into one when they pile up, leaving out deleted rows.

Every step is idempotent: a worker killed mid-job leaves its rows waiting (they are taken off the
list only with the pack that holds them), its new pack listed as not scored yet (the next library
job rescores the library once that is ``HEAL_AFTER_S`` old), or its rescore unfinished (the job
runs again); score writes are refused once their version is no longer current
(``Library.write_scores``).
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.core.errors import DomainError
from shared.core.npy import load_arrays
from shared.data import keys
from shared.data.store import ObjectNotFound
from shared.domain import catalog
from shared.domain.embeddings import embed_present_images
from shared.models.heads import HeadMatrix

if TYPE_CHECKING:
    from shared.domain.services import Services

EMBED_ROWS = 256  # rows taken off the waiting list at a time (one pack each)
PACK_ROWS = 4096  # packs smaller than this are merged ...
MERGE_AT = 16  # ... once this many of them pile up
SIMILAR_SIZE = 256  # length of the short vectors /similar searches
MERGE_LOCK_S = 600
# A pack still listed as not scored this long after it was recorded lost its job (killed, or a
# backend failed while it scored): the next library job rescores every tag over the whole library.
HEAL_AFTER_S = 300
# Scores a rescore pass holds at once (4 bytes per image and tag): more tags than fit take more passes.
RESCORE_BYTES = 256 * 2**20
RESCORE_CLAIM_S = 1800  # a rescore's claim on the tags it took from others (it renews nothing: a dead job's lapses)

Report = Callable[[str, float], None]
log = logging.getLogger("tagsmith")


@lru_cache(maxsize=2)
def similar_projection(width: int) -> np.ndarray:
    """A fixed (width, SIMILAR_SIZE) Gaussian random projection: cosine similarities of semantic
    vectors survive it closely enough to shortlist neighbours (the shortlist is then ranked with
    the full vectors). Made from a seeded generator, so every process on every machine has the same."""
    rng = np.random.Generator(np.random.PCG64(20261130))
    projection: np.ndarray = (rng.standard_normal((width, SIMILAR_SIZE)) / np.sqrt(SIMILAR_SIZE)).astype(np.float32)
    return projection


def semantic_unit(features: np.ndarray, width: int) -> np.ndarray:
    """The semantic part of (N, D) features, each row scaled to unit length (float32)."""
    semantic = np.asarray(features[:, :width], dtype=np.float32)
    unit: np.ndarray = semantic / np.maximum(np.linalg.norm(semantic, axis=1, keepdims=True), 1e-12)
    return unit


def short_vectors(features: np.ndarray, width: int) -> np.ndarray:
    """(N, SIMILAR_SIZE) float16 unit vectors that /similar compares."""
    projected = semantic_unit(features, width) @ similar_projection(width)
    short: np.ndarray = (projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)).astype(np.float16)
    return short


def _npz(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def write_pack(services: Services, rows: np.ndarray, features: np.ndarray) -> str:
    """Store the rows' features as a new pack (and its short vectors); returns its key."""
    key = keys.pack_key(services.spec.id, f"{int(rows[0]):012d}-{uuid.uuid4().hex[:12]}")
    rows = np.asarray(rows, dtype=np.int64)
    services.store.put(keys.similar_key(key), _npz(rows=rows, vectors=short_vectors(features, services.spec.embedding_size)))
    services.store.put(key, _npz(rows=rows, features=np.asarray(features, dtype=np.float32)))
    return key


def read_pack(services: Services, key: str) -> tuple[np.ndarray, np.ndarray]:
    rows, features = load_arrays(services.store.get(key), "rows", "features")
    return rows, features


def embed_waiting(services: Services, report: Report) -> dict[str, Any]:
    """Embed every stored image waiting for it into the library, ``EMBED_ROWS`` at a time, and
    score them with every current model; then merge small packs. Returns how many were embedded.

    A training queued meanwhile goes first: after the pack at hand, a new job is queued for the
    rest (behind trainings) and this one ends, so a backlog of thousands of added photos delays a
    training by one pack at most."""
    services.registry.index_library()
    library = services.library
    try:
        heal_unscored(services, report)
    except Exception as exc:  # e.g. a pack that cannot be read: new images are still embedded and scored
        log.error("rescoring the library for packs left unscored failed: %r", exc)
    embedded = gone = 0
    total = library.pending_count()
    while waiting := library.pending(EMBED_ROWS):
        rows = np.array([row for row, _ in waiting], dtype=np.int64)
        features, kept, failed = _embed(services, [image_id for _, image_id in waiting])
        key = write_pack(services, rows[kept], features) if kept else None
        library.add_pack(key, len(kept), [int(r) for r in rows], [int(rows[i]) for i in failed],
                         unscored_since=time.time())
        if key is not None and score_rows(services, rows[kept], features):
            library.mark_scored([key])
        embedded, gone = embedded + len(kept), gone + len(rows) - len(kept)
        report("embedding", min(1.0, (embedded + gone) / max(total, 1)))
        if services.queue.trainings_waiting() and library.pending_count():
            return {"embedded": embedded, "deleted_meanwhile": gone, "packs_merged": 0,
                    "continued_by": services.queue.submit_embedding()}
    merged = merge_small_packs(services)
    return {"embedded": embedded, "deleted_meanwhile": gone, "packs_merged": merged}


def _embed(services: Services, image_ids: list[str]) -> tuple[np.ndarray, list[int], list[int]]:
    """``embed_present_images`` and the positions that failed; if the batch fails, each image on
    its own, leaving out (and logging) those that fail, so one image that cannot be embedded never
    holds up the library."""
    try:
        return (*embed_present_images(services, image_ids), [])
    except (DomainError, OSError, ValueError) as exc:
        log.warning("embedding a batch of %d images failed (%s); embedding them one at a time", len(image_ids), exc)
    vectors, kept, failed = [], [], []
    for i, image_id in enumerate(image_ids):
        try:
            features, here = embed_present_images(services, [image_id])
        except (DomainError, OSError, ValueError) as exc:
            log.warning("image %s cannot be embedded into the library: %s", image_id, exc)
            failed.append(i)
            continue
        if here:
            vectors.append(features[0])
            kept.append(i)
    width = services.spec.embedding_size + services.spec.style_size
    return (np.stack(vectors) if vectors else np.zeros((0, width), dtype=np.float32)), kept, failed


def score_rows(services: Services, rows: np.ndarray, features: np.ndarray) -> bool:
    """Score new rows with every current model; False if versions kept being published meanwhile
    (five tries). A version published meanwhile refuses the write; the heads are then read again
    (a rescore for that version may have listed the packs before this one was recorded)."""
    for _ in range(5):
        heads = services.heads.current(services)
        if not heads.tags:
            return True
        scores = heads.scores(features)
        stale = [
            tag for j, tag in enumerate(heads.tags)
            if not services.library.write_scores(tag, heads.versions[j], rows, scores[:, j], whole=False)
        ]
        if not stale:
            return True
    return False


def heal_unscored(services: Services, report: Report) -> None:
    """Rescore every tag over the whole library if a pack was left unscored (``HEAL_AFTER_S``)."""
    lost = services.library.unscored(before=time.time() - HEAL_AFTER_S)
    if lost:
        log.warning("%d library packs were recorded but never scored; rescoring the library", len(lost))
        rescore(services, services.heads.current(services).tags, report, every=True)
        services.library.mark_scored(lost)


def rescore(services: Services, tags: list[str], report: Report, every: bool = False) -> dict[str, Any]:
    """Score every embedded image with the current versions of ``tags`` whose whole-library scores
    do not come from them yet (``every``: all of ``tags``), and of every other such tag that no
    other rescore has claimed (a burst of trainings queues a job each: the first takes them all
    in one pass, and the rest find their own tags done; with several workers, each job adds only
    its own tags to what another already took). Each pass reads every pack once for a group of
    tags holding ``RESCORE_BYTES`` of scores."""
    if not every:
        heal_unscored(services, report)
    heads = services.heads.current(services)
    scored = services.library.scored()
    stale = {t for t in heads.tags if scored.get(t) != heads.versions[heads.index[t]]}
    own = {t for t in tags if t in heads.index and (every or t in stale)}
    taken, claims = _claim_rescores(services, heads, own, stale - own)
    wanted = sorted(own | taken)
    if not wanted:
        return {"rescored": [], "images": 0}
    images = sum(services.library.packs().values())
    group = max(1, RESCORE_BYTES // (4 * max(images, 1)))
    written: list[str] = []
    try:
        for start in range(0, len(wanted), group):
            part = wanted[start : start + group]

            def step(stage: str, done: float, first: int = start, size: int = len(part)) -> None:
                report(stage, (first + done * size) / len(wanted))

            written += _rescore_group(services, heads.select(part), step)
    finally:
        services.redis.delete(*claims)
    return {"rescored": written, "images": images}


def _claim_keys(services: Services, heads: HeadMatrix, tags: set[str]) -> dict[str, str]:
    prefix = f"{services.settings.key_prefix}:library:rescoring"
    return {t: f"{prefix}:{heads.versions[heads.index[t]]}:{t}" for t in sorted(tags)}


def _claim_rescores(services: Services, heads: HeadMatrix, own: set[str],
                    others: set[str]) -> tuple[set[str], list[str]]:
    """Claim the current versions of ``own`` tags (whatever other job has them too) and of those
    ``others`` no other job has claimed, for ``RESCORE_CLAIM_S``; returns the others taken and the
    keys of every claim made, to delete once done. A claim left by a job that died lapses; its
    tags' own jobs still run."""
    mine, theirs = _claim_keys(services, heads, own), _claim_keys(services, heads, others)
    with services.redis.pipeline(transaction=False) as pipe:
        for key in mine.values():
            pipe.set(key, "1", ex=RESCORE_CLAIM_S)
        for key in theirs.values():
            pipe.set(key, "1", nx=True, ex=RESCORE_CLAIM_S)
        answers = pipe.execute()[len(mine):]
    taken = {tag: key for (tag, key), ok in zip(theirs.items(), answers, strict=True) if ok}
    return set(taken), [*mine.values(), *taken.values()]


def _rescore_group(services: Services, chosen: HeadMatrix, report: Report) -> list[str]:
    """One pass over the packs for ``chosen``'s tags, their scores written; the tags whose scores
    were written (not those no longer current)."""
    for _ in range(3):  # a merge may remove a pack between the listing and its read
        try:
            rows, scores = _score_packs(services, chosen, report)
            break
        except ObjectNotFound:
            continue
    else:
        raise RuntimeError("the library's packs kept changing during the rescore; it will run again")
    order = np.argsort(rows, kind="stable")
    rows, scores = rows[order], scores[order]
    written = [
        tag for j, tag in enumerate(chosen.tags)
        if services.library.write_scores(tag, chosen.versions[j], rows, scores[:, j], whole=True)
    ]
    return written


def _score_packs(services: Services, heads: HeadMatrix, report: Report) -> tuple[np.ndarray, np.ndarray]:
    packs = services.library.packs()
    all_rows, all_scores = [], []
    for k, key in enumerate(packs):
        rows, features = read_pack(services, key)
        all_rows.append(rows)
        all_scores.append(bulk_scores(heads, features))
        report("scoring", (k + 1) / len(packs))
    if not all_rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(heads.tags)), dtype=np.float32)
    return np.concatenate(all_rows), np.concatenate(all_scores)


def bulk_scores(heads: HeadMatrix, features: np.ndarray) -> np.ndarray:
    """``heads.scores`` in float32 throughout, for a pack of thousands of rows: a quarter of the
    memory traffic; the scores differ from /predict's float64 normalisation by about 1e-7."""
    z = np.empty(features.shape, dtype=np.float32)
    start = 0
    for size in heads.sizes:
        group = np.asarray(features[:, start : start + size], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", group, group))
        np.multiply(group, (np.float32(np.sqrt(size)) / np.maximum(norms, np.float32(1e-12)))[:, None], out=z[:, start : start + size])
        start += size
    logits = z @ heads.columns + heads.biases
    scores: np.ndarray = (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)
    return scores


def merge_small_packs(services: Services) -> int:
    """Merge the packs under ``PACK_ROWS`` rows into one once ``MERGE_AT`` of them pile up, leaving
    out rows whose images were deleted; returns how many were merged (one merge at a time)."""
    library = services.library
    small = [key for key, size in library.packs().items() if size < PACK_ROWS]
    if len(small) < MERGE_AT:
        return 0
    lock = f"{services.settings.key_prefix}:library:merging"
    if not services.redis.set(lock, "1", nx=True, ex=MERGE_LOCK_S):
        return 0
    try:
        parts = [read_pack(services, key) for key in small]
        rows = np.concatenate([rows for rows, _ in parts])
        features = np.concatenate([features for _, features in parts])
        live = library.live(int(rows.max()) + 1)[rows]
        rows, features = rows[live], features[live]
        order = np.argsort(rows, kind="stable")
        merged = write_pack(services, rows[order], features[order]) if len(rows) else None
        library.replace_packs(small, merged, len(rows))
        for key in small:
            services.store.delete(key)
            services.store.delete(keys.similar_key(key))
        return len(small)
    finally:
        services.redis.delete(lock)


def summary(services: Services, tags: list[str] | None = None) -> dict[str, Any]:
    """How far the library is: images, embedded, waiting, failed (cannot be decoded any more, e.g.
    its bytes were damaged in the store; the worker's log names them), the library jobs queued or running (their
    progress is at /status/<task_id>), and per tag the version its scores come from (null while a
    rescore for its current version is still to run) and whether every embedded image is scored
    with it. ``tags``: only those tags (each must have a model); default every tag with one."""
    models = catalog.current_models(services, tags)
    services.registry.index_library()
    library = services.library
    images = services.registry.image_count()
    waiting = library.pending_count()
    failed_rows = library.failed_rows()
    failed = int(library.live(failed_rows[-1] + 1)[failed_rows].sum()) if failed_rows else 0
    scored = library.scored()
    unscored = bool(library.unscored())  # new rows being scored now, or left by a job that failed
    return {
        "images": images,
        "embedded": max(images - waiting - failed, 0),
        "pending": waiting,
        "failed": failed,
        "packs": len(library.packs()),
        "tasks": services.queue.library_tasks(),
        "tags": {
            tag: {"version": pointer.version, "scores_from": scored.get(tag),
                  "up_to_date": scored.get(tag) == pointer.version and not unscored}
            for tag, pointer in ((t, models[t]) for t in (tags or models))
        },
    }
