"""Active learning: which stored images to label next for a tag with a trained model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from shared.catalog import HeadCache
from shared.context import Services, get_services
from shared.embeddings import embed_present_images
from shared.errors import not_found
from shared.http import create_app, query_int
from shared.names import validate_tag
from shared.responses import JSONResponse

heads = HeadCache()


@dataclass(frozen=True)
class TagScores:
    version: int
    threshold: float
    image_ids: list[str]  # those asked for, less any deleted meanwhile
    scores: np.ndarray  # (N,) probabilities, one per image id above


def score_stored_images(services: Services, tag: str, image_ids: list[str]) -> TagScores:
    """The tag's current model applied to stored images, using (and filling) the embedding cache;
    images deleted since their ids were read are left out.

    The one place suggestions score images: when heads change, this is what changes.
    """
    matrix = heads.current(services)
    if tag not in matrix.index:
        raise not_found("unknown_tag", f"Tag '{tag}' has no trained model.")
    i = matrix.index[tag]
    settings = services.settings
    embeddings, kept = embed_present_images(
        services.store, services.backbone, image_ids, settings.max_image_pixels, settings.embed_batch_size
    )
    scores = matrix.scores(embeddings)[:, i] if kept else np.zeros(0)
    return TagScores(version=matrix.versions[i], threshold=float(matrix.thresholds[i]),
                     image_ids=[image_ids[j] for j in kept], scores=scores)


def suggestions(services: Services, tag: str, limit: int) -> dict[str, object]:
    positives, negatives = services.registry.examples(tag)
    labelled = set(positives) | set(negatives)
    newest = services.registry.image_ids(0, services.settings.suggest_max_candidates + len(labelled))
    result = score_stored_images(
        services, tag, [i for i in newest if i not in labelled][: services.settings.suggest_max_candidates]
    )
    candidates, scores, threshold = result.image_ids, result.scores, result.threshold

    def rows(order: np.ndarray) -> list[dict[str, object]]:
        return [{"image_id": candidates[j], "score": round(float(scores[j]), 6),
                 "match": bool(scores[j] >= threshold)} for j in order[:limit]]

    uncertain = np.argsort(np.abs(scores - threshold), kind="stable")
    likely = [j for j in np.argsort(-scores, kind="stable") if scores[j] >= threshold]
    return {
        "tag": tag,
        "version": result.version,
        "threshold": round(threshold, 6),
        "candidates": len(candidates),
        "uncertain": rows(uncertain),
        "likely_positive": rows(np.array(likely, dtype=int)),
    }


async def suggest(request: Request) -> JSONResponse:
    """Suggest which stored images to label next for a tag.

    Ranks the newest stored images that are not yet examples of the tag (at most
    `TAGSMITH_SUGGEST_MAX_CANDIDATES`) with the tag's current model. `uncertain` lists those
    whose score is nearest the threshold first: labelling them teaches the model most.
    `likely_positive` lists those the model already matches, best first: confirm or correct
    them. Images not embedded yet are embedded now and cached.
    ---
    query:
      limit: {type: integer, minimum: 1, maximum: 100, description: 'Length of each list (default 10).'}
    response:
      description: Two ranked lists of unlabelled images.
      example: {tag: cat, version: 2, threshold: 0.41, candidates: 25, uncertain: [{image_id: img-7, score: 0.43, match: true}], likely_positive: [{image_id: img-3, score: 0.97, match: true}]}
    errors: [400, 404, 503]
    """
    services = get_services()
    tag = validate_tag(request.path_params["tag"], services.settings.max_tag_length)
    limit = query_int(request, "limit", 10, 1, 100)
    return JSONResponse(await run_in_threadpool(suggestions, services, tag, limit))


routes = [Route("/custom/suggest/{tag:path}", suggest, methods=["GET"])]
app = create_app(routes)
