"""Active learning: which stored images to label next for a tag with a trained model."""

from __future__ import annotations

from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from shared.domain import predictions
from shared.web.app import create_app
from shared.web.pixels import embedding_stored
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute, query_int
from shared.web.state import services_of


async def suggest(request: Request) -> JSONResponse:
    """Suggest which stored images to label next for a tag.

    Ranks the newest stored images that are not yet examples of the tag (at most
    `TAGSMITH_SUGGEST_MAX_CANDIDATES`) with the tag's current model. `uncertain` lists those it
    is unsure of (its odds for them within 9 times the threshold's: at a threshold of 0.5, scores
    from 0.1 to 0.9), nearest the threshold first: labelling them teaches the model most; it is
    empty when the model is sure of every candidate. `likely_positive` lists those the model
    already matches, best first: confirm or correct them. Images not embedded yet are embedded
    now and cached.
    ---
    query:
      limit: {type: integer, minimum: 1, maximum: 100, description: 'Length of each list (default 10).'}
    response:
      description: Two ranked lists of unlabelled images.
      schema: Suggestions
      example: {tag: cat, version: 2, threshold: 0.41, candidates: 25, uncertain: [{image_id: img-7, score: 0.43, match: true}], likely_positive: [{image_id: img-3, score: 0.97, match: true}]}
    errors: [400, 404, 503]
    """
    services, tag, limit = services_of(request), request.path_params["tag"], query_int(request, "limit", 10, 1, 100)
    candidates = await run_in_threadpool(predictions.suggestion_candidates, services, tag)
    suggested = await embedding_stored(services, candidates, partial(predictions.suggestions, services, tag, limit, candidates))
    return JSONResponse(suggested)


routes = [ApiRoute("/custom/suggest/{tag:path}", suggest, methods=["GET"])]
app = create_app(routes, backbone=True)
