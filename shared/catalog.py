"""Model versions: archives in the object store, pointers in Redis, heads stacked for predict."""

from __future__ import annotations

import threading

from shared.context import Services
from shared.models.archive import ModelRecord, pack, unpack
from shared.models.heads import HeadMatrix
from shared.registry import ModelPointer
from shared.store import ObjectNotFound


def model_key(tag: str, version: int) -> str:
    return f"models/{tag}/v{version}.tar"


def save_version(services: Services, record: ModelRecord) -> ModelPointer:
    """Write the record as the tag's next version archive; nothing points at it yet."""
    version = services.registry.next_version(record.tag)
    record = ModelRecord(
        tag=record.tag,
        version=version,
        threshold=record.threshold,
        trained_at=record.trained_at,
        head=record.head,
        form=record.form,
        metrics=record.metrics,
    )
    key = model_key(record.tag, version)
    services.store.put(key, pack([record], services.spec))
    return ModelPointer(
        tag=record.tag,
        version=version,
        key=key,
        threshold=record.threshold,
        trained_at=record.trained_at,
        metrics=record.metrics,
    )


def load_version(services: Services, pointer: ModelPointer) -> ModelRecord:
    (record,) = unpack(services.store.get(pointer.key), services.spec, services.archive_limits)
    return record


def delete_tag(services: Services, tag: str) -> None:
    """Forget the tag's examples, model pointer and versions, then remove its archives (archives a
    crash leaves behind are never listed again: ``Registry.deleted_through``)."""
    services.registry.delete_tag(tag)
    for key in list(services.store.list(f"models/{tag}/")):
        services.store.delete(key)


class HeadCache:
    """The current heads of every tag as one matrix, reloaded only when the generation moves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple[str, str, int] | None = None  # (redis url, key prefix, generation)
        self._records: dict[str, ModelRecord] = {}
        self._matrix: HeadMatrix | None = None

    def current(self, services: Services) -> HeadMatrix:
        stamp = (services.settings.redis_url, services.settings.key_prefix, services.registry.generation())
        matrix = self._matrix
        if stamp == self._stamp and matrix is not None:
            return matrix
        with self._lock:
            if stamp != self._stamp or self._matrix is None:
                self._matrix = self._reload(services, stamp)
            return self._matrix

    def _reload(self, services: Services, stamp: tuple[str, str, int]) -> HeadMatrix:
        same_source = self._stamp is not None and self._stamp[:2] == stamp[:2]
        known = self._records if same_source else {}
        records: dict[str, ModelRecord] = {}
        for pointer in services.registry.models().values():
            cached = known.get(pointer.key)
            if cached is None:
                try:
                    cached = load_version(services, pointer)
                except ObjectNotFound:
                    continue  # deleted between the pointer read and the load; next generation fixes it
            records[pointer.key] = cached
        ordered = sorted(records.values(), key=lambda r: r.tag)
        self._records = records
        self._stamp = stamp
        return HeadMatrix(
            [r.tag for r in ordered],
            [r.head for r in ordered],
            [r.threshold for r in ordered],
            [r.version for r in ordered],
            (services.spec.embedding_size, services.spec.style_size),
        )
