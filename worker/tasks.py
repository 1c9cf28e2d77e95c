"""The training job: embed the tag's examples, train its head, publish the next version."""

from __future__ import annotations

from typing import Any

import numpy as np
from rq import get_current_job

from shared import catalog
from shared.context import Services, get_services
from shared.embeddings import embed_present_images
from shared.models.archive import ModelRecord
from shared.models.heads import Head, train_head
from shared.registry import EpochMoved, utc_now
from shared.store import ObjectNotFound


class TrainingError(RuntimeError):
    """A training that cannot go on, with a message for the person who asked for it."""


def _report(stage: str, progress: float, error: str | None = None) -> None:
    job = get_current_job()
    if job is None:
        return
    job.meta.update(stage=stage, progress=round(progress, 3))
    if error:
        job.meta["error"] = error
    job.save_meta()


def train_tag(tag: str, epoch: int) -> dict[str, Any]:
    """RQ entry point; the job's result is the new version's summary."""
    services = get_services()
    job = get_current_job()
    if job is not None:
        services.queue.mark_started(tag, job.id)
    try:
        return train(services, tag, epoch)
    except Exception as exc:
        _report("failed", 0.0, str(exc) if isinstance(exc, TrainingError) else f"Training failed: {exc!r}")
        raise


def train(services: Services, tag: str, epoch: int) -> dict[str, Any]:
    if services.registry.epoch(tag) != epoch:  # deleted since it was queued: its result would be discarded
        raise TrainingError(f"Tag '{tag}' was deleted after this training was asked for; nothing was trained.")
    positives, negatives = services.registry.examples(tag)
    if not positives or not negatives:
        raise TrainingError(
            f"Tag '{tag}' has {len(positives)} positive and {len(negatives)} negative examples; "
            "training needs at least one of each."
        )
    ids = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    _report("embedding", 0.0)
    features, kept = embed_present_images(
        services.store,
        services.backbone,
        ids,
        services.settings.max_image_pixels,
        services.settings.embed_batch_size,
        progress=lambda done, total: _report("embedding", 0.8 * done / max(total, 1)),
    )
    if len(kept) < len(ids):  # images deleted since the examples were read: no longer examples
        ids, labels = [ids[i] for i in kept], labels[kept]
        if labels.all() or not labels.any():
            raise TrainingError(
                f"Tag '{tag}' has {int(labels.sum())} positive and {int((labels == 0).sum())} negative "
                "examples left after images were deleted during the training; training needs at least one of each."
            )
    _report("training", 0.8)
    current = services.registry.model(tag)
    previous: Head | None = None
    if current is not None:
        try:
            previous = catalog.load_version(services, current).head
        except ObjectNotFound:
            current = None  # the archive is gone: train from scratch
    spec = services.spec
    trained = train_head(features, labels, (spec.embedding_size, spec.style_size), previous)
    _report("saving", 0.95)
    record = ModelRecord(
        tag=tag,
        version=0,  # save_version assigns the next free number
        threshold=trained.threshold,
        trained_at=utc_now(),
        head=trained.head,
        form=trained.form,
        metrics={
            **trained.metrics,
            "fine_tuned_from": current.version if current else None,
            "most_wrong": [
                {"image_id": ids[i], "type": "positive" if labels[i] else "negative", "score": score}
                for i, score in trained.most_wrong
            ],
        },
    )
    pointer = catalog.save_version(services, record)  # the archive is whole before anything points at it
    try:
        moved = services.registry.publish([pointer], epochs={tag: epoch})
    except EpochMoved:
        services.store.delete(pointer.key)
        raise TrainingError(f"Tag '{tag}' was deleted while it was training; the result was discarded.") from None
    return {
        "tag": tag,
        "version": pointer.version,
        "threshold": pointer.threshold,
        "form": trained.form,
        "metrics": pointer.metrics,
        "trained_at": pointer.trained_at,
        # False when a newer version of the tag was published while this one trained.
        "published": tag in moved,
    }
