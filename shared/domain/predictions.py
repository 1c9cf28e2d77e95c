"""Predictions: base keywords and styles and every custom tag for an image, and which stored images
to label next for a tag (active learning)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.domain import catalog
from shared.domain.embeddings import embed_present_images, embed_stored_images
from shared.domain.labels import require_image
from shared.models.backbone import Features, preprocess
from shared.models.base_keywords import base_keywords
from shared.models.base_styles import matched_styles, style_scores
from shared.models.decoding import Reservation, decode_cost, decode_image, open_image
from shared.models.heads import HeadMatrix
from shared.models.structure import check_framing

if TYPE_CHECKING:
    from shared.domain.services import Services


# A suggestion is uncertain while the model's odds for it are within this factor of the
# threshold's: at a threshold of 0.5, scores from 0.1 to 0.9. A score beyond is the model's
# settled answer, not one to ask the user about, however few candidates there are.
UNSURE_ODDS = 9.0
# Decoding more pixels than this takes long enough to hold back a whole batch of other requests
# (a 50 MP PNG takes about a second): such an image is decoded on its own, beside the batches.
SLOW_PIXELS = {"JPEG": 24_000_000, "MPO": 24_000_000}  # DCT scaling skips most of a JPEG's work
SLOW_PIXELS_OTHERS = 4_000_000


def decodes_slowly(data: bytes) -> bool:
    """Whether the upload's image is large enough to decode on its own (read from its header)."""
    try:
        check_framing(data)  # bounds what opening it costs
        with open_image(data) as image:
            width, height = image.size
            fmt = image.format or ""
    except Exception:
        return False  # not an image: its decoding fails at once, and says why
    return width * height > SLOW_PIXELS.get(fmt, SLOW_PIXELS_OTHERS)


def weigh_upload(services: Services, data: bytes) -> tuple[int, bool]:
    """What decoding the upload costs, read from its header: the pixels it holds of the decoding
    budget (``decode_cost``) and whether it decodes on its own (``decodes_slowly``)."""
    return decode_cost(data, services.settings.max_image_pixels), decodes_slowly(data)


def prepare_upload(
    services: Services, data: bytes, with_styles: bool, reserved: Reservation | None = None
) -> tuple[np.ndarray, Callable[[], dict[str, float]]]:
    """Decode, then resize and crop for the backbone; and, to run later, the base styles if asked
    (the shape ``shared.web.batching`` batches). ``reserved``: the decode's pixels, taken from the
    budget beforehand; given back once the image is decoded, not when the prediction ends."""
    try:
        image = decode_image(data, services.settings.max_image_pixels, budget=reserved or services.decode_budget).image
    finally:
        if reserved is not None:
            reserved.release()
    return preprocess(image), partial(style_scores, image) if with_styles else dict


def require_model(services: Services, tag: str) -> HeadMatrix:
    """The current heads, which hold one for ``tag`` (else NotFound)."""
    matrix = services.heads.current(services)
    if tag not in matrix.index:
        raise catalog.no_model(tag)
    return matrix


def require_image_and_model(services: Services, image_id: str, tag: str) -> None:
    """NotFound for an unknown image, then for a tag without a model."""
    require_image(services, image_id)
    require_model(services, tag)


def custom_scores(services: Services, vector: np.ndarray, tag: str | None = None,
                  matches_only: bool = False) -> dict[str, Any]:
    """Every tag's score (or one tag's) for one (semantic | style) feature vector, best first; with
    ``matches_only``, only the tags that match."""
    matrix = services.heads.current(services) if tag is None else require_model(services, tag).select([tag])
    return matrix.describe(matrix.scores(vector[None, :])[0], matches_only=matches_only)


def one_tag(services: Services, vector: np.ndarray, tag: str) -> dict[str, Any]:
    return {"tag": tag, **custom_scores(services, vector, tag)[tag]}


def everything(services: Services, features: Features, styles: dict[str, float],
               matches_only: bool = False) -> dict[str, Any]:
    """What ``POST /predict`` answers: base keywords and styles, and every custom tag (or those
    that match)."""
    return {
        "keywords": base_keywords(features.logits[0], services.settings.keyword_threshold),
        "styles": matched_styles(styles),
        "style_scores": styles,
        "custom": custom_scores(services, features.vectors[0], matches_only=matches_only),
    }


def stored_vector(services: Services, image_id: str, reserved: Reservation | None = None) -> np.ndarray:
    """A stored image's feature vector, from the embedding cache or computed (and cached) now;
    ``reserved``: its pixels, taken from the decode budget beforehand (``pixels_to_embed``)."""
    require_image(services, image_id)
    vectors = embed_stored_images(services, [image_id], reserved)
    vector: np.ndarray = vectors[0]
    return vector


@dataclass(frozen=True)
class TagScores:
    version: int
    threshold: float
    image_ids: list[str]  # those asked for, less any deleted meanwhile
    scores: np.ndarray  # (N,) probabilities, one per image id above


def score_stored_images(services: Services, tag: str, image_ids: list[str], reserved: Reservation | None = None) -> TagScores:
    """The tag's current model applied to stored images, using (and filling) the embedding cache;
    images deleted since their ids were read are left out. ``reserved`` as for ``stored_vector``."""
    matrix = require_model(services, tag).select([tag])  # its column alone: not every tag's
    embeddings, kept = embed_present_images(services, image_ids, budget=reserved)
    scores = matrix.scores(embeddings)[:, 0] if kept else np.zeros(0)
    return TagScores(version=matrix.versions[0], threshold=float(matrix.thresholds[0]),
                     image_ids=[image_ids[j] for j in kept], scores=scores)


def suggestion_candidates(services: Services, tag: str) -> list[str]:
    """The stored images ``suggestions`` ranks: the newest not labelled for ``tag``, which must
    have a model (else NotFound)."""
    require_model(services, tag)
    positives, negatives = services.registry.examples(tag)
    labelled = set(positives) | set(negatives)
    newest = services.registry.image_ids(0, services.settings.suggest_max_candidates + len(labelled))
    return [i for i in newest if i not in labelled][: services.settings.suggest_max_candidates]


def _log_odds(p: np.ndarray | float) -> np.ndarray:
    """log(p / (1 - p)), scores of exactly 0 or 1 kept finite."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(q) - np.log1p(-q)


def unsure_first(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The scores the model is unsure of (odds within ``UNSURE_ODDS`` of the threshold's), as
    indices, nearest the threshold in log-odds first."""
    distance = np.abs(_log_odds(scores) - _log_odds(threshold))
    order = np.argsort(distance, kind="stable")
    kept: np.ndarray = order[distance[order] <= np.log(UNSURE_ODDS)]
    return kept


def suggestions(services: Services, tag: str, limit: int, candidates: list[str], reserved: Reservation | None = None) -> dict[str, Any]:
    """Unlabelled images to label next (``candidates``): those the model is unsure of, nearest the
    threshold first, and those it matches. ``reserved`` as for ``stored_vector``."""
    result = score_stored_images(services, tag, candidates, reserved)
    candidates, scores, threshold = result.image_ids, result.scores, result.threshold

    def rows(order: np.ndarray) -> list[dict[str, object]]:
        return [{"image_id": candidates[j], "score": round(float(scores[j]), 6),
                 "match": bool(scores[j] >= threshold)} for j in order[:limit]]

    uncertain = unsure_first(scores, threshold)
    likely = [j for j in np.argsort(-scores, kind="stable") if scores[j] >= threshold]
    return {
        "tag": tag,
        "version": result.version,
        "threshold": round(threshold, 6),
        "candidates": len(candidates),
        "uncertain": rows(uncertain),
        "likely_positive": rows(np.array(likely, dtype=int)),
    }
