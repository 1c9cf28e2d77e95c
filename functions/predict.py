"""Predictions: base keywords and styles, and every custom model, on uploads or stored images."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from shared.catalog import HeadCache
from shared.context import Services, get_services
from shared.embeddings import embed_stored_images
from shared.errors import not_found
from shared.http import create_app, read_upload
from shared.images import decode_image
from shared.models.backbone import Features, load_backbone, preprocess
from shared.models.keywords import base_keywords
from shared.models.styles import matched_styles, style_scores
from shared.names import validate_image_id, validate_tag
from shared.responses import JSONResponse
from shared.settings import get_settings

log = logging.getLogger("tagsmith")
heads = HeadCache()


def _custom(services: Services, vector: np.ndarray, tag: str | None = None) -> dict[str, Any]:
    """Scores of every tag (or one) for one (semantic | style) feature vector."""
    matrix = heads.current(services)
    if tag is not None and tag not in matrix.index:
        raise not_found("unknown_tag", f"Tag '{tag}' has no trained model.")
    scores = matrix.scores(vector[None, :])[0]
    return matrix.describe(scores, [tag] if tag is not None else None)


def _single(tag: str, custom: dict[str, Any]) -> dict[str, Any]:
    return {"tag": tag, **custom[tag]}


def _prepare(data: bytes, max_pixels: int, with_styles: bool) -> tuple[np.ndarray, Callable[[], dict[str, float]]]:
    """Decode, then resize and crop for the backbone; later, if asked, measure the base styles."""
    image = decode_image(data, max_pixels).image
    return preprocess(image), partial(style_scores, image) if with_styles else dict


async def _embed_upload(request: Request, with_styles: bool = False) -> tuple[Services, Features, dict[str, float]]:
    """The upload's features and, if asked, its base style scores: prepared and embedded in a
    shared batch (``MicroBatcher``)."""
    services = get_services()
    settings = services.settings
    data = await read_upload(request, settings.max_upload_bytes)
    features, styles = await services.batcher.embed(partial(_prepare, data, settings.max_image_pixels, with_styles))
    return services, features, styles


def _tag_param(services: Services, request: Request) -> str:
    return validate_tag(request.path_params["tag"], services.settings.max_tag_length)


def _everything(services: Services, features: Features, styles: dict[str, float]) -> JSONResponse:
    return JSONResponse(
        {
            "keywords": base_keywords(features.logits[0], services.settings.keyword_threshold),
            "styles": matched_styles(styles),
            "style_scores": styles,
            "custom": _custom(services, features.vectors[0]),
        }
    )


async def predict_all(request: Request) -> JSONResponse:
    """Base keywords and styles plus every custom tag, for an uploaded image.
    ---
    upload: data
    response:
      description: Keywords, styles and custom tags, best first.
      example: {keywords: [{name: cat, score: 0.93, kind: parent}], styles: [{name: warm, score: 0.71}], style_scores: {warm: 0.71}, custom: {cat: {score: 0.998, match: true, threshold: 0.5, version: 2}}}
    errors: [400, 413, 415, 503]
    """
    services, features, styles = await _embed_upload(request, with_styles=True)
    return await run_in_threadpool(_everything, services, features, styles)


def _every_tag(services: Services, features: Features) -> JSONResponse:
    return JSONResponse({"custom": _custom(services, features.vectors[0])})


async def predict_custom(request: Request) -> JSONResponse:
    """Every custom tag, for an uploaded image.
    ---
    upload: data
    response: {description: 'Every trained tag, best first.', example: {custom: {cat: {score: 0.998, match: true, threshold: 0.5, version: 2}}}}
    errors: [400, 413, 415, 503]
    """
    services, features, _ = await _embed_upload(request)
    return await run_in_threadpool(_every_tag, services, features)


async def predict_custom_tag(request: Request) -> JSONResponse:
    """One custom tag, for an uploaded image.
    ---
    upload: data
    response: {description: The tag's score., example: {tag: cat, score: 0.998, match: true, threshold: 0.5, version: 2}}
    errors: [400, 404, 413, 415, 503]
    """
    services = get_services()
    tag = _tag_param(services, request)
    if tag not in heads.current(services).index:  # refuse before the upload is decoded
        raise not_found("unknown_tag", f"Tag '{tag}' has no trained model.")
    services, features, _ = await _embed_upload(request)
    return JSONResponse(_single(tag, _custom(services, features.vectors[0], tag)))


def _stored_vector(services: Services, image_id: str) -> np.ndarray:
    if not services.registry.image_exists(image_id):
        raise not_found("unknown_image", f"No image with id '{image_id}'.")
    settings = services.settings
    return embed_stored_images(services.store, services.backbone, [image_id], settings.max_image_pixels)[0]


def predict_added(request: Request) -> JSONResponse:
    """Every custom tag, for a stored image.
    ---
    response: {description: 'Every trained tag, best first.', example: {image_id: cat-1, custom: {cat: {score: 0.998, match: true, threshold: 0.5, version: 2}}}}
    errors: [400, 404, 503]
    """
    services = get_services()
    image_id = validate_image_id(request.path_params["image_id"])
    custom = _custom(services, _stored_vector(services, image_id))
    return JSONResponse({"image_id": image_id, "custom": custom})


def predict_added_tag(request: Request) -> JSONResponse:
    """One custom tag, for a stored image.
    ---
    response: {description: The tag's score., example: {image_id: cat-1, tag: cat, score: 0.998, match: true, threshold: 0.5, version: 2}}
    errors: [400, 404, 503]
    """
    services = get_services()
    tag = _tag_param(services, request)
    image_id = validate_image_id(request.path_params["image_id"])
    custom = _custom(services, _stored_vector(services, image_id), tag)
    return JSONResponse({"image_id": image_id, **_single(tag, custom)})


routes = [
    Route("/predict", predict_all, methods=["POST"]),
    Route("/predict/custom", predict_custom, methods=["POST"]),
    Route("/predict/custom/{tag:path}", predict_custom_tag, methods=["POST"]),
    Route("/custom/predict/{image_id}", predict_added, methods=["GET"]),
    Route("/custom/predict/{tag}/{image_id}", predict_added_tag, methods=["GET"]),
]


@asynccontextmanager
async def preload_backbone(app: Starlette) -> AsyncIterator[None]:
    """Run alone, the function loads the backbone before it answers, so it is ready once healthy."""
    settings = get_settings()
    backbone = await run_in_threadpool(
        load_backbone, settings.runtime, settings.device, settings.torch_threads, str(settings.model_cache_dir)
    )
    log.info("backbone ready: %s, %s", backbone.runtime, backbone.precision)
    yield


app = create_app(routes, lifespan=preload_backbone)
