"""Predictions: base keywords and styles, and every custom model, on uploads or stored images."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from shared.domain import predictions
from shared.models.backbone import Features
from shared.web.app import create_app
from shared.web.pixels import embedding_stored
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute, query_bool
from shared.web.state import batcher_of, services_of
from shared.web.uploads import read_upload


async def _embed_upload(request: Request, with_styles: bool = False) -> tuple[Features, Any]:
    """The upload's features and, if asked, its base style scores: prepared and embedded alone,
    on a lane or in a shared batch (``MicroBatcher``).

    The decode's pixels are awaited here, on the event loop, before any thread decodes: a thread
    of the shared pool never waits for them, so heavy images queue among themselves."""
    services = services_of(request)
    data = await read_upload(request, services.settings.max_upload_bytes)
    pixels, slow = await run_in_threadpool(predictions.weigh_upload, services, data)
    async with services.decode_budget.reserve(pixels) as reserved:  # given back once decoded
        prepare = partial(predictions.prepare_upload, services, data, with_styles, reserved)
        if slow:  # decoded on its own first: holds back no batch
            ready = await run_in_threadpool(prepare)
            return await batcher_of(request).embed(lambda: ready)
        return await batcher_of(request).embed(prepare)


async def predict_all(request: Request) -> JSONResponse:
    """Base keywords and styles plus every custom tag (or those that match), for an uploaded image.
    ---
    upload: data
    query:
      match: {type: boolean, description: 'Only the custom tags that match (with thousands of tags, a far shorter answer).'}
    response:
      description: Keywords, styles and custom tags (with `match=true`, those that match), best first.
      schema: Prediction
      example: {keywords: [{name: cat, score: 0.93, kind: parent}], styles: [{name: warm, score: 0.71}], style_scores: {warm: 0.71}, custom: {cat: {score: 0.998, match: true, threshold: 0.5, version: 2}}}
    errors: [400, 413, 415, 503]
    """
    matches_only = bool(query_bool(request, "match"))  # refused before the upload is read
    features, styles = await _embed_upload(request, with_styles=True)
    return JSONResponse(await run_in_threadpool(predictions.everything, services_of(request), features, styles,
                                                matches_only))


async def predict_custom(request: Request) -> JSONResponse:
    """Every custom tag (or those that match), for an uploaded image.
    ---
    upload: data
    query:
      match: {type: boolean, description: 'Only the custom tags that match (with thousands of tags, a far shorter answer).'}
    response: {description: 'Every trained tag (with `match=true`, those that match), best first.', schema: CustomPrediction, example: {custom: {cat: {score: 0.998, match: true, threshold: 0.5, version: 2}}}}
    errors: [400, 413, 415, 503]
    """
    matches_only = bool(query_bool(request, "match"))
    features, _ = await _embed_upload(request)
    custom = await run_in_threadpool(predictions.custom_scores, services_of(request), features.vectors[0], None,
                                     matches_only)
    return JSONResponse({"custom": custom})


async def predict_custom_tag(request: Request) -> JSONResponse:
    """One custom tag, for an uploaded image.
    ---
    upload: data
    response: {description: The tag's score., schema: TagPrediction, example: {tag: cat, score: 0.998, match: true, threshold: 0.5, version: 2}}
    errors: [400, 404, 413, 415, 503]
    """
    services, tag = services_of(request), request.path_params["tag"]
    await run_in_threadpool(predictions.require_model, services, tag)  # refused before the upload is decoded
    features, _ = await _embed_upload(request)
    return JSONResponse(await run_in_threadpool(predictions.one_tag, services, features.vectors[0], tag))


async def _stored_vector(request: Request, image_id: str) -> np.ndarray:
    """A stored image's feature vector: cached, or embedded now once its pixels are reserved."""
    services = services_of(request)
    return await embedding_stored(services, [image_id], partial(predictions.stored_vector, services, image_id))


async def predict_added(request: Request) -> JSONResponse:
    """Every custom tag (or those that match), for a stored image.
    ---
    query:
      match: {type: boolean, description: 'Only the custom tags that match (with thousands of tags, a far shorter answer).'}
    response: {description: 'Every trained tag (with `match=true`, those that match), best first.', schema: StoredPrediction, example: {image_id: cat-1, custom: {cat: {score: 0.998, match: true, threshold: 0.5, version: 2}}}}
    errors: [400, 404, 503]
    """
    services, image_id = services_of(request), request.path_params["image_id"]
    matches_only = bool(query_bool(request, "match"))
    vector = await _stored_vector(request, image_id)
    custom = await run_in_threadpool(predictions.custom_scores, services, vector, None, matches_only)
    return JSONResponse({"image_id": image_id, "custom": custom})


async def predict_added_tag(request: Request) -> JSONResponse:
    """One custom tag, for a stored image.
    ---
    response: {description: The tag's score., schema: TagPrediction, example: {image_id: cat-1, tag: cat, score: 0.998, match: true, threshold: 0.5, version: 2}}
    errors: [400, 404, 503]
    """
    services, p = services_of(request), request.path_params
    await run_in_threadpool(predictions.require_image_and_model, services, p["image_id"], p["tag"])  # before it is embedded
    vector = await _stored_vector(request, p["image_id"])
    tag_score = await run_in_threadpool(predictions.one_tag, services, vector, p["tag"])
    return JSONResponse({"image_id": p["image_id"], **tag_score})


routes = [
    ApiRoute("/predict", predict_all, methods=["POST"]),
    ApiRoute("/predict/custom", predict_custom, methods=["POST"]),
    ApiRoute("/predict/custom/{tag:path}", predict_custom_tag, methods=["POST"]),
    ApiRoute("/custom/predict/{image_id}", predict_added, methods=["GET"]),
    ApiRoute("/custom/predict/{tag}/{image_id}", predict_added_tag, methods=["GET"]),
]
# Alone, the function loads the backbone before it answers, so it is ready once healthy.
app = create_app(routes, backbone=True)
