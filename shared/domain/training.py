"""Training a tag: asking for it (checked, then queued), and the training itself, which a worker
runs: embed the tag's examples, train its head (fine-tuned from the current one), store the next
version and publish it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.core.errors import InvalidInput
from shared.data.registry import EpochMoved, utc_now
from shared.data.store import ObjectNotFound
from shared.domain import catalog
from shared.domain.embeddings import embed_present_images
from shared.models.archive import ModelRecord
from shared.models.heads import Head, train_head

if TYPE_CHECKING:
    from shared.domain.services import Services

# (stage, progress from 0 to 1): how a training reports where it is.
Report = Callable[[str, float], None]


class TrainingError(RuntimeError):
    """A training that cannot go on, with a message for the person who asked for it."""


def _too_few(tag: str, positives: int, negatives: int, after: str = "") -> str:
    return (f"Tag '{tag}' has {positives} positive and {negatives} negative examples{after}; "
            "training needs at least one of each.")


def request_training(services: Services, tag: str) -> dict[str, Any]:
    """Queue a training of the tag, or return the one still waiting for it."""
    ((positives, negatives),) = services.registry.example_counts([tag])
    if not positives or not negatives:
        raise InvalidInput("not_enough_examples", _too_few(tag, positives, negatives))
    task_id, already_queued = services.queue.submit(tag, services.registry.epoch(tag))
    return {"task_id": task_id, "tag": tag, "status": "queued", "already_queued": already_queued}


def run_training(services: Services, tag: str, epoch: int, report: Report) -> dict[str, Any]:
    """Train the tag's next version and publish it; the result is the version's summary.

    ``epoch`` is the tag's when the training was asked for: a tag deleted since gets nothing."""
    if services.registry.epoch(tag) != epoch:  # deleted since it was queued: its result would be discarded
        raise TrainingError(f"Tag '{tag}' was deleted after this training was asked for; nothing was trained.")
    positives, negatives = services.registry.examples(tag)
    if not positives or not negatives:
        raise TrainingError(_too_few(tag, len(positives), len(negatives)))
    ids = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    report("embedding", 0.0)
    features, kept = embed_present_images(
        services, ids, progress=lambda done, total: report("embedding", 0.8 * done / max(total, 1))
    )
    if len(kept) < len(ids):  # images deleted since the examples were read: no longer examples
        ids, labels = [ids[i] for i in kept], labels[kept]
        if labels.all() or not labels.any():
            after = " left after images were deleted during the training"
            raise TrainingError(_too_few(tag, int(labels.sum()), int((labels == 0).sum()), after))
    report("training", 0.8)
    current = services.registry.model(tag)
    previous: Head | None = None
    if current is not None:
        try:
            previous = catalog.load_version(services, current.key).head
        except ObjectNotFound:
            current = None  # the archive is gone: train from scratch
    spec = services.spec
    trained = train_head(features, labels, (spec.embedding_size, spec.style_size), previous)
    report("saving", 0.95)
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
        moved = catalog.publish(services, [pointer], epochs={tag: epoch})
    except EpochMoved:
        services.store.delete(pointer.key)
        raise TrainingError(f"Tag '{tag}' was deleted while it was training; the result was discarded.") from None
    catalog.prune_versions(services, tag)
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
