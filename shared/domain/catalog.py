"""Tags and their model versions: archives in the object store, pointers in Redis, and the current
heads stacked into one matrix for predictions.

A version is an archive ``models/<tag>/v<N>.tar`` (``shared.data.keys``); the tag's pointer in
Redis names the current one. Versions are listed from the archives themselves, never from a
second record, and those up to the tag's last delete are never listed again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from shared.core.errors import Conflict, Damaged, DomainError, NotFound, Unavailable
from shared.core.names import fold_case
from shared.data import keys
from shared.data.registry import EpochMoved, ModelPointer
from shared.data.store import ObjectNotFound
from shared.models.archive import MAX_COUNT, ModelRecord, is_whole, pack, unpack
from shared.models.backbone import BackboneSpec
from shared.models.heads import HeadMatrix

if TYPE_CHECKING:
    from shared.domain.services import Services

log = logging.getLogger("tagsmith")


# A version stored and never published (its training or load died between the two) is removed once
# it has waited this long: a load stores up to 10,000 archives before it publishes them all.
UNSETTLED_AFTER_S = 3600


def save_version(services: Services, record: ModelRecord) -> ModelPointer:
    """Write the record as the tag's next version archive; nothing points at it yet, and it is no
    version of the tag until ``publish`` settles it (``remove_unsettled_versions``)."""
    record = dataclasses.replace(record, version=services.registry.next_version(record.tag))
    key = keys.model_key(record.tag, record.version)
    services.registry.journal_version(key)
    services.store.put(key, pack([record], services.spec))
    return ModelPointer(record.tag, record.version, key, record.threshold, record.trained_at, record.metrics)


def load_version(services: Services, tag: str, key: str) -> ModelRecord:
    """The model a version archive of the tag holds (ObjectNotFound if none; Damaged if the stored
    bytes cannot be read as one: the store's fault, not the request's)."""
    try:
        records = unpack(services.store.get(key), services.spec, services.archive_limits, stored=True)
    except DomainError as exc:
        records, reason = [], exc.message
    else:
        reason = f"It holds {len(records)} models, not one."
    if len(records) != 1:
        raise Damaged("damaged_version", f"A stored version of tag '{tag}' ({key}) cannot be read: {reason} "
                      "Roll back to another version, or train the tag again.")
    return records[0]


def _pointer(services: Services, tag: str, version: int) -> ModelPointer:
    """The pointer to an existing version archive, read from the archive (ObjectNotFound if none)."""
    key = keys.model_key(tag, version)
    record = load_version(services, tag, key)
    return ModelPointer(tag, version, key, record.threshold, record.trained_at, record.metrics)


def stored_versions(services: Services, tag: str) -> list[ModelPointer]:
    """Every readable version archive the store holds for the tag since its last delete, oldest
    first, but those not yet published. One damaged in the store is logged and left out: it would
    fail every backup and hide every other version."""
    deleted_through = services.registry.deleted_through(tag)
    found = list(services.store.list(keys.model_prefix(tag)))
    unsettled = services.registry.unsettled(found)
    pointers = []
    for key in found:
        version = keys.model_version(tag, key)
        if version is not None and version > deleted_through and key not in unsettled:
            try:
                pointers.append(_pointer(services, tag, version))
            except ObjectNotFound:
                continue  # deleted while listing
            except Damaged as exc:
                log.error("%s It is left out of the versions and backups.", exc.message)
    return sorted(pointers, key=lambda p: p.version)


def require_tag(services: Services, tag: str) -> None:
    if not services.registry.tag_exists(tag):
        raise NotFound("unknown_tag", f"No tag '{tag}'.")


def no_model(tag: str) -> NotFound:
    return NotFound("unknown_tag", f"Tag '{tag}' has no trained model.")


def current_models(services: Services, tags: list[str] | None = None) -> dict[str, ModelPointer]:
    """Every tag's current model, by tag; NotFound for a tag of ``tags`` that has none."""
    models = services.registry.models()
    for tag in tags or ():
        if tag not in models:
            raise no_model(tag)
    return models


USEFUL_EXAMPLES = 5  # of each kind: below this, cross-validated figures swing from one example to the next


def caution(metrics: dict[str, Any]) -> str | None:
    """What a person should know about a version trained on few examples, or None."""
    if "positives" not in metrics:
        return None  # a version that does not say how it was trained (loaded from elsewhere)
    positives, negatives = _whole(metrics.get("positives")), _whole(metrics.get("negatives"))
    presumed = _whole(metrics.get("presumed_negatives"))
    counted = f"{_count(positives, 'positive example')} and {_count(negatives, 'negative example')}"
    if presumed > negatives:  # no negatives labelled: unlabelled images stood in, which nobody labelled
        counted = f"{_count(positives, 'positive example')} against {_count(presumed, 'unlabelled image')} presumed negative"
        negatives = presumed
    if not metrics.get("folds"):
        return (f"Trained on {counted}: too few to cross-validate, so its threshold is 0.5 and its quality "
                f"was not measured. Label at least 2 of each to measure it, and {USEFUL_EXAMPLES} or more of "
                "each for a first useful model.")
    if min(positives, negatives) < USEFUL_EXAMPLES:
        return (f"Trained on {counted}: its measured quality rests on very few examples. "
                f"{USEFUL_EXAMPLES} or more of each make a first useful model.")
    return None


def _whole(value: Any) -> int:
    """A count from metrics: uploads are checked (``archive.COUNT_METRICS``), but a version stored
    by an earlier release may hold anything; 0 for what is not a whole number."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if is_whole(value, 0, MAX_COUNT) else 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe_model(pointer: ModelPointer | None) -> dict[str, Any] | None:
    if pointer is None:
        return None
    return {"version": pointer.version, "threshold": pointer.threshold, "trained_at": pointer.trained_at,
            "metrics": pointer.metrics, "caution": caution(pointer.metrics)}


def tags_overview(services: Services, contains: str = "", after: str = "", limit: int | None = None) -> dict[str, Any]:
    """The tags, sorted by name, with their example counts and current models: every one, or those
    whose name holds ``contains`` (any case), after the name ``after``, at most ``limit`` of them;
    ``next`` is the name to pass as ``after`` for the rest (None when there is none)."""
    registry = services.registry
    needle = fold_case(contains)
    tags = [tag for tag in registry.tags() if tag > after and needle in fold_case(tag)]
    page = tags if limit is None else tags[:limit]
    models = registry.models_of(page)
    counts = registry.example_counts(page)
    return {"tags": [{"tag": tag, "positives": p, "negatives": n, "model": describe_model(models.get(tag))}
                     for tag, (p, n) in zip(page, counts, strict=True)],
            "next": page[-1] if len(page) < len(tags) else None}


def tag_details(services: Services, tag: str) -> dict[str, Any]:
    require_tag(services, tag)
    positives, negatives = services.registry.examples(tag)
    return {"tag": tag, "positives": positives, "negatives": negatives,
            "model": describe_model(services.registry.model(tag))}


def version_list(services: Services, tag: str) -> dict[str, Any]:
    require_tag(services, tag)
    current = services.registry.model(tag)
    current_version = current.version if current else None
    versions = [
        {"version": p.version, "current": p.version == current_version, "threshold": p.threshold,
         "trained_at": p.trained_at, "metrics": p.metrics, "caution": caution(p.metrics)}
        for p in stored_versions(services, tag)
    ]
    return {"tag": tag, "current": current_version, "versions": versions}


def publish(services: Services, pointers: list[ModelPointer], epochs: dict[str, int], rollback: bool = False,
            max_tags: int = 0) -> list[str]:
    """Make the versions current (``Registry.publish``) and queue a rescore of the library for the
    tags that moved; returns those tags."""
    moved = services.registry.publish(pointers, epochs=epochs, rollback=rollback, max_tags=max_tags)
    if moved:
        try:
            services.queue.submit_rescore(moved)
        except Exception as exc:  # published: the caller must not take it for a failure and remove the archives
            log.error("the library's scores of %s were not queued for rescoring: %r; the next rescore catches up",
                      moved, exc)
    return moved


def remove_unsettled_versions(services: Services, older_than: float = UNSETTLED_AFTER_S) -> int:
    """Remove the version archives stored more than ``older_than`` seconds ago and never published
    (their training or load died in between); returns how many. They had come back as versions of
    the tag, even of an unrelated tag made later under the same name, which a rollback then made
    current. One at or below its tag's current version is kept (its publication may have happened
    and not been heard of)."""
    removed = 0
    for key in services.registry.unsettled_since(older_than):
        named = keys.model_of_key(key)
        current = services.registry.model(named[0]) if named else None
        if named and (current is None or named[1] > current.version):
            services.store.delete(key)
            removed += 1
        services.registry.settle_versions([key])
    return removed


# A rollback and a pruning of the same tag take turns (a lease in Redis, for every process): a
# rollback publishing a version the pruning had just found not current would point at an archive
# the pruning then removed. Each holds it for a few store calls; a lease lapses if its holder dies.
VERSIONS_LEASE_S = 30
VERSIONS_WAIT_S = 10.0


@contextmanager
def versions_held(services: Services, tag: str, wait: float = VERSIONS_WAIT_S) -> Iterator[None]:
    """Hold the tag's versions lease (Unavailable if another holder keeps it past ``wait`` seconds)."""
    name, token = f"versions:{tag}", uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while not services.registry.claim_lease(name, token, VERSIONS_LEASE_S):
        if time.monotonic() > deadline:
            raise Unavailable("busy", f"The versions of tag '{tag}' are being changed right now; try again.")
        time.sleep(0.02)
    try:
        yield
    finally:
        services.registry.release_lease(name, token)


def rollback(services: Services, tag: str, version: int) -> dict[str, Any]:
    """Make an earlier version current again; the next training fine-tunes from it."""
    with versions_held(services, tag):
        return _rollback(services, tag, version)


def _rollback(services: Services, tag: str, version: int) -> dict[str, Any]:
    epoch = services.registry.epoch(tag)
    pointer = None
    key = keys.model_key(tag, version)
    # Earlier ones belonged to the tag before its delete; one not yet published is no version yet.
    if version > services.registry.deleted_through(tag) and not services.registry.unsettled([key]):
        try:
            pointer = _pointer(services, tag, version)
        except ObjectNotFound:
            pointer = None
    if pointer is None:
        raise NotFound("unknown_version", f"Tag '{tag}' has no version {version}.")
    previous = services.registry.model(tag)
    try:
        publish(services, [pointer], epochs={tag: epoch}, rollback=True)
    except EpochMoved:
        raise Conflict("tag_deleted", f"Tag '{tag}' was deleted meanwhile.") from None
    return {"tag": tag, "version": version, "previous": previous.version if previous else None,
            "threshold": pointer.threshold}


def prune_versions(services: Services, tag: str) -> list[int]:
    """Remove the tag's version archives older than the current one beyond the ``keep_versions``
    newest of them; returns the versions removed. A version newer than the current one is never
    removed: it may be saved and not yet published (another training or load of the tag, which
    would then point at a removed archive), or current until a rollback. It runs after a publish, so it never
    fails the training or load that called it: while a rollback of the tag holds the versions it
    prunes nothing (the next pruning catches up)."""
    try:
        with versions_held(services, tag, wait=0.0):
            return _prune(services, tag)
    except Unavailable:
        return []


def _prune(services: Services, tag: str) -> list[int]:
    current = services.registry.model(tag)
    if current is None:  # deleted meanwhile: the delete removes its archives
        return []
    found = [keys.model_version(tag, key) for key in services.store.list(keys.model_prefix(tag))]
    older = sorted((v for v in found if v is not None and v < current.version), reverse=True)
    removed = older[services.settings.keep_versions :]
    for version in removed:
        services.store.delete(keys.model_key(tag, version))
    return removed


def delete_tag(services: Services, tag: str) -> None:
    """Forget the tag's examples, model pointer and versions, then remove its archives (archives a
    crash leaves behind are never listed again: ``Registry.deleted_through``)."""
    require_tag(services, tag)
    services.registry.delete_tag(tag)
    services.registry.unjournal("tags", tag)  # a tag made again under this name is not a restore's
    through = services.registry.deleted_through(tag)  # versions after it are a new tag's of that name
    for key in list(services.store.list(keys.model_prefix(tag))):
        version = keys.model_version(tag, key)
        if version is None or version <= through:
            services.store.delete(key)


def stack(records: list[ModelRecord], spec: BackboneSpec) -> HeadMatrix:
    """Heads of several tags as one matrix, in the order given."""
    return HeadMatrix(
        [r.tag for r in records], [r.head for r in records], [r.threshold for r in records],
        [r.version for r in records], (spec.embedding_size, spec.style_size),
    )


class HeadCache:
    """The current heads of every tag as one matrix, reloaded only when the generation moves.

    One per process (``Services.heads``); archives already loaded are kept across reloads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation: int | None = None
        # By the whole pointer, not the archive's key alone: a restore stores another model under a
        # deleted tag's key (its version numbers start again), and the deleted one went on predicting.
        self._records: dict[str, ModelRecord] = {}
        self._matrix: HeadMatrix | None = None

    def current(self, services: Services) -> HeadMatrix:
        generation = services.registry.generation()
        matrix = self._matrix
        if generation == self._generation and matrix is not None:
            return matrix
        with self._lock:
            if generation != self._generation or self._matrix is None:
                self._matrix = self._reload(services, generation)
            return self._matrix

    def _reload(self, services: Services, generation: int) -> HeadMatrix:
        records: dict[str, ModelRecord] = {}
        for identity in services.registry.models_as_stored().values():  # the stored JSON: parsed only if new
            cached = self._records.get(identity)
            if cached is None:
                pointer = ModelPointer.from_json(identity)
                try:
                    cached = load_version(services, pointer.tag, pointer.key)
                except ObjectNotFound:
                    continue  # deleted between the pointer read and the load; next generation fixes it
                except Damaged as exc:  # the other tags still predict
                    log.error("%s It is left out of predictions.", exc.message)
                    continue
            records[identity] = cached
        self._records = records
        self._generation = generation
        return stack(sorted(records.values(), key=lambda r: r.tag), services.spec)
