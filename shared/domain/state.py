"""State archives in and out: loading models from an archive, exporting the current ones, and the
ONNX file for devices (the backbone and the chosen heads in one graph)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from shared.core.errors import Conflict, Damaged, NotFound
from shared.data.registry import EpochMoved, ModelPointer, utc_now
from shared.domain import catalog, labels
from shared.models.archive import ModelRecord, pack, unpack
from shared.models.backbone.exported import export_onnx
from shared.models.edge import build_edge_model

if TYPE_CHECKING:
    from shared.domain.services import Services

log = logging.getLogger("tagsmith")


ARCHIVE_ORIGIN = "state archive"


def with_origin(record: ModelRecord, loaded_at: str) -> ModelRecord:
    """The record with ``metrics["origin"]`` saying where it came from: a state archive, the
    version number and training date it had there (the new version gets the tag's next number
    here), and when it was loaded. An origin the archive carried (a loaded version exported
    again) is replaced: the origin names the archive this version came from."""
    origin = {"loaded_from": ARCHIVE_ORIGIN, "version": record.version, "trained_at": record.trained_at,
              "loaded_at": loaded_at}
    return dataclasses.replace(record, metrics={**record.metrics, "origin": origin})


def load_state(services: Services, data: bytes) -> list[dict[str, Any]]:
    """Validate the whole archive, store every model as a new version, then publish them together.
    If a model cannot be stored or published, those stored are removed again (as far as the store
    lets us): a failed load adds no versions. Each version's metrics record its ``origin``."""
    loaded_at = utc_now()
    records = [with_origin(r, loaded_at) for r in unpack(data, services.spec, services.archive_limits)]
    max_tags, tags = services.settings.max_tags, list(dict.fromkeys(record.tag for record in records))
    labels.check_new_tags(services, tags)  # before storing anything: names a new tag may not have, lookalikes
    services.registry.check_room_for(tags, max_tags)
    # A tag deleted while its version is stored loses that archive (the delete removes the tag's
    # archives): the publication, one atomic step, checks no tag was deleted since this read.
    epochs = {record.tag: services.registry.epoch(record.tag) for record in records}
    pointers: list[ModelPointer] = []
    moved: list[str] = []
    try:
        for record in records:
            pointers.append(catalog.save_version(services, record))
        if pointers:  # checks the limit again, atomically with publishing: loads may run concurrently
            with labels.creating_tags(services, tags):  # and the names, against tags made meanwhile
                moved = catalog.publish(services, pointers, epochs=epochs, max_tags=max_tags)
    except EpochMoved:
        for pointer in pointers:
            with contextlib.suppress(Exception):
                services.store.delete(pointer.key)
        raise Conflict("tag_deleted", "A tag of the archive was deleted while it loaded; nothing was loaded, "
                       "load it again.") from None
    except Exception:
        for pointer in pointers:
            with contextlib.suppress(Exception):  # the store may be down: the error that stopped us matters
                services.store.delete(pointer.key)
        raise
    for pointer in pointers:
        catalog.prune_versions(services, pointer.tag)
    return [{"tag": p.tag, "version": p.version, "threshold": p.threshold, "origin": p.metrics["origin"],
             "published": p.tag in moved} for p in pointers]


def current_pointers(services: Services, tags: list[str]) -> list[ModelPointer]:
    """The current model of each tag asked for (every tag when none is); NotFound for a tag without one."""
    models = catalog.current_models(services, tags)
    return [models[t] for t in tags] if tags else list(models.values())


def _records(services: Services, pointers: list[ModelPointer], every: bool) -> list[ModelRecord]:
    """The models of these pointers. Exporting ``every`` tag, one damaged in the store is logged and
    left out, as predictions and backups leave it out; a tag asked for by name is Damaged (500)."""
    records = []
    for pointer in pointers:
        try:
            records.append(catalog.load_version(services, pointer.tag, pointer.key))
        except Damaged as exc:
            if not every:
                raise
            log.error("%s It is left out of the export.", exc.message)
    return records


def state_archive(services: Services, pointers: list[ModelPointer], every: bool = False) -> bytes:
    """The state archive of these models (``current_pointers``; ``every``: of every tag)."""
    return pack(_records(services, pointers, every), services.spec)


def edge_model(services: Services, pointers: list[ModelPointer], every: bool = False) -> bytes:
    """The ONNX file for devices: the backbone with these models' heads (``current_pointers``;
    ``every``: of every tag)."""
    records = _records(services, pointers, every)
    if not records:
        raise NotFound("no_models", "There is no trained model to export.")
    matrix = catalog.stack(records, services.spec)
    return build_edge_model(export_onnx(services.settings.model_cache_dir), matrix, services.spec)
