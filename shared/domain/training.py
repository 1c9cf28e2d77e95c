"""Training a tag: asking for it (checked, then queued), and the training itself, which a worker
runs: embed the tag's examples, train its head (fine-tuned from the current one), store the next
version and publish it.

A tag with positive examples and no negative ones trains against **presumed negatives**: other
stored images, unlabelled for the tag, stand in for negatives. Which ones is a function of the
images' contents and the tag only, never of image ids or of the order images were added: every
stored image that is not a positive is ranked by sha256(its content hash, a newline, the tag)
(the content hash is the image's ``sha256``; an older image without one is known by its id),
images with a positive's content, or a content already taken, are left out, and the first
``PRESUMED_NEGATIVES`` (200) are taken. The examples are then ordered by content too
(positives by content hash, presumed negatives by rank), so the same contents under other ids
train the same head. Some presumed negatives may be unlabelled positives: they weigh less than
real negatives would (``shared/models/heads.py``: the presumed-negative class weighs
``PRESUMED_NEGATIVE_WEIGHT`` times the positive class), and the version's metrics say how many
were used (``presumed_negatives``) and that precision was measured against unlabelled images.
With real negatives, nothing of this applies. `python -m bench.quality` measures it.

Every training is a pure function of its examples' contents and labels (and of the version it
fine-tunes from): real examples are ordered by content hash too (``by_content``), every shuffle
is seeded from the sorted content hashes and labels (``training_seed``), and the head is fitted
with one BLAS thread (``tests/test_training_determinism.py``).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from shared.core.errors import Damaged, InvalidInput, NotFound
from shared.core.names import fold_case
from shared.data.registry import EpochMoved, utc_now
from shared.data.store import ObjectNotFound
from shared.domain import catalog
from shared.domain.embeddings import embed_present_images
from shared.models.archive import ModelRecord
from shared.models.heads import Head, train_head
from shared.models.style_prior import style_prior

if TYPE_CHECKING:
    from shared.domain.services import Services

log = logging.getLogger("tagsmith")

# (stage, progress from 0 to 1): how a training reports where it is.
Report = Callable[[str, float], None]


class TrainingError(RuntimeError):
    """A training that cannot go on, with a message for the person who asked for it."""


# How many presumed negatives a positives-only tag trains against, whatever its number of positives:
# with bench.quality's photos (2 draws per tag) 50, 100, 200 and 400 were tried with 5, 10 and 20
# positives; 200 was the best or level with the best at each (keyword tags with 5 positives: mean
# held-out ROC AUC 0.94, against 0.91-0.93 with 50). The first training embeds those not cached yet.
PRESUMED_NEGATIVES = 200
# Image metadata is read this many images at a time when the library is ranked.
LIBRARY_PAGE = 1000


def _too_few(tag: str, positives: int, negatives: int, after: str = "") -> str:
    return (f"Tag '{tag}' has {positives} positive and {negatives} negative examples{after}; "
            "training needs at least one of each (or positive examples and other stored images, "
            "used as presumed negatives).")


def _no_such_tag(tag: str, tags: list[str]) -> str:
    """What training a name no tag has says: most often a typo of one there is, which it names."""
    by_case = {fold_case(other): other for other in tags}
    close = difflib.get_close_matches(fold_case(tag), by_case, n=1, cutoff=0.75)
    hint = f" Did you mean '{by_case[close[0]]}'?" if close else ""
    return (f"There is no tag '{tag}': no image is labelled with it.{hint} Label a few images as its positive "
            "examples first (and, ideally, a few as negative ones).")


def _no_library(tag: str, positives: int, after: str = "") -> str:
    examples = "example" if positives == 1 else "examples"
    return (f"Tag '{tag}' has {positives} positive {examples} and no negatives{after}, and there are no other "
            f"stored images to use as presumed negatives: add a few images that are not '{tag}' "
            "(as negatives, or just stored).")


def presumed_negative_rank(identity: str, tag: str) -> str:
    """The rank key of an unlabelled image (known by its content hash) as a presumed negative of the tag."""
    return hashlib.sha256(f"{identity}\n{tag}".encode()).hexdigest()


def choose_presumed_negatives(identities: list[str], tag: str, exclude: set[str], count: int) -> list[int]:
    """Positions in ``identities`` (content hashes) of the first ``count`` by ``presumed_negative_rank``,
    leaving out ``exclude`` (the positives' contents) and every repeat of a content already taken
    (the first position of it). The choice depends on the contents and the tag, not on positions."""
    order = sorted(range(len(identities)), key=lambda i: (presumed_negative_rank(identities[i], tag), i))
    taken: set[str] = set(exclude)
    chosen: list[int] = []
    for i in order:
        if len(chosen) == count:
            break
        if identities[i] not in taken:
            taken.add(identities[i])
            chosen.append(i)
    return chosen


def _identities(services: Services, image_ids: list[str]) -> Iterator[tuple[str, str]]:
    """(image id, content hash or, for older images, the id) of the images still stored, a page at a time."""
    for start in range(0, len(image_ids), LIBRARY_PAGE):
        page = image_ids[start : start + LIBRARY_PAGE]
        for image_id, meta in zip(page, services.registry.images(page), strict=True):
            if meta:  # else deleted meanwhile
                yield image_id, meta.get("sha256") or image_id


def by_content(services: Services, image_ids: list[str]) -> tuple[list[str], dict[str, str]]:
    """The images ordered by content hash (an id whose image is gone, or has no hash, by its id; ids
    break ties), and each one's content hash or id: the same contents in the same order, whatever
    their ids and whatever order they were added or labelled in."""
    known = {image_id: image_id for image_id in image_ids} | dict(_identities(services, image_ids))
    return sorted(image_ids, key=lambda image_id: (known[image_id], image_id)), known


def training_seed(contents: list[str], labels: list[int]) -> int:
    """The seed of every shuffle in a training (cross-validation folds, samples): a hash of the
    examples' sorted content hashes and labels, so the same labelled contents shuffle alike."""
    text = "\n".join(sorted(f"{label} {content}" for content, label in zip(contents, labels, strict=True)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def presumed_negatives(services: Services, tag: str, positives: list[str]) -> tuple[list[str], list[str]]:
    """The positives ordered by content, and the ids of the tag's presumed negatives in rank order
    (none when there is no other stored image to use)."""
    ordered, known = by_content(services, positives)
    labelled = set(positives)
    library = [(i, identity) for i, identity in _identities(services, services.registry.image_ids())
               if i not in labelled]
    library.sort(key=lambda row: row[0])  # a repeated content keeps its smallest id, whatever the add order
    chosen = choose_presumed_negatives([identity for _, identity in library], tag, set(known.values()),
                                       PRESUMED_NEGATIVES)
    return ordered, [library[i][0] for i in chosen]


def _has_other_images(services: Services, positives: list[str]) -> bool:
    """Whether some stored image other than the positives (and their contents) could be a presumed
    negative; reads the library a page at a time and stops at the first one."""
    labelled = set(positives)
    hashes = {identity for _, identity in _identities(services, positives)}
    offset = 0
    while page := services.registry.image_ids(offset, LIBRARY_PAGE):
        others = [image_id for image_id in page if image_id not in labelled]
        if any(identity not in hashes for _, identity in _identities(services, others)):
            return True
        offset += len(page)
    return False


def request_training(services: Services, tag: str) -> dict[str, Any]:
    """Queue a training of the tag, or return the one still waiting for it.

    A tag with positives and no negatives is queued when other stored images can stand in as
    presumed negatives."""
    ((positives, negatives),) = services.registry.example_counts([tag])
    if not positives and not negatives and not services.registry.tag_exists(tag):
        raise NotFound("unknown_tag", _no_such_tag(tag, services.registry.tags()))
    if not positives:
        raise InvalidInput("not_enough_examples", _too_few(tag, positives, negatives))
    least = services.settings.min_examples
    if positives < least or 0 < negatives < least:
        raise InvalidInput("not_enough_examples", (
            f"Tag '{tag}' has {positives} positive and {negatives} negative examples; this server trains a tag "
            f"with at least {least} of each (TAGSMITH_MIN_EXAMPLES), or {least} positives and no negatives."))
    if not negatives and not _has_other_images(services, services.registry.examples(tag)[0]):
        raise InvalidInput("not_enough_examples", _no_library(tag, positives))
    task_id, already_queued = services.queue.submit(tag, services.registry.epoch(tag))
    return {"task_id": task_id, "tag": tag, "status": "queued", "already_queued": already_queued}


def run_training(services: Services, tag: str, epoch: int, report: Report) -> dict[str, Any]:
    """Train the tag's next version and publish it; the result is the version's summary.

    ``epoch`` is the tag's when the training was asked for: a tag deleted since gets nothing."""
    if services.registry.epoch(tag) != epoch:  # deleted since it was queued: its result would be discarded
        raise TrainingError(f"Tag '{tag}' was deleted after this training was asked for; nothing was trained.")
    positives, negatives = services.registry.examples(tag)
    presumed = bool(positives) and not negatives
    if presumed:
        positives, negatives = presumed_negatives(services, tag, positives)
        if not negatives:
            raise TrainingError(_no_library(tag, len(positives)))
    elif not positives or not negatives:
        raise TrainingError(_too_few(tag, len(positives), len(negatives)))
    else:  # by content, not by id: the same labelled contents train the same head under any ids
        positives, negatives = by_content(services, positives)[0], by_content(services, negatives)[0]
    ids = positives + negatives
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    contents = by_content(services, ids)[1]  # what seeds the training's shuffles
    report("embedding", 0.0)
    features, kept = embed_present_images(
        services, ids, progress=lambda done, total: report("embedding", 0.8 * done / max(total, 1))
    )
    if len(kept) < len(ids):  # images deleted since the examples were read: no longer examples
        ids, labels = [ids[i] for i in kept], labels[kept]
        after = " left after images were deleted during the training"
        if presumed and labels.any() and labels.all():
            raise TrainingError(_no_library(tag, int(labels.sum()), after))
        if labels.all() or not labels.any():
            raise TrainingError(_too_few(tag, int(labels.sum()), int((labels == 0).sum()), after))
    report("training", 0.8)
    current = services.registry.model(tag)
    previous: Head | None = None
    if current is not None:
        try:
            previous = catalog.load_version(services, tag, current.key).head
        except ObjectNotFound:
            current = None  # the archive is gone: train from scratch
        except Damaged as exc:
            log.error("%s Training from scratch.", exc.message)
            current = None
    spec = services.spec
    seed = training_seed([contents[image_id] for image_id in ids], labels.tolist())
    with threadpool_limits(1, user_api="blas"):  # as the worker process is: one BLAS thread, whoever runs it
        trained = train_head(features, labels, (spec.embedding_size, spec.style_size), previous,
                             presumed_negatives=presumed, seed=seed, prior=style_prior(spec.id))
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
                {"image_id": ids[i], "type": "positive" if labels[i] else "presumed_negative" if presumed else "negative",
                 "score": score}
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
        "caution": catalog.caution(pointer.metrics),  # too few examples to trust it, if so
        # False when a newer version of the tag was published while this one trained.
        "published": tag in moved,
    }
