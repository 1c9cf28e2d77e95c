"""Tags and their model versions: what exists, how each version measured, and rolling back."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from shared import catalog
from shared.context import Services, get_services
from shared.errors import bad_request, conflict, not_found
from shared.http import create_app
from shared.names import validate_tag
from shared.registry import EpochMoved, ModelPointer
from shared.responses import JSONResponse
from shared.store import ObjectNotFound

_VERSION = re.compile(r"[0-9]{1,18}")


def _model(pointer: ModelPointer | None) -> dict[str, Any] | None:
    if pointer is None:
        return None
    return {"version": pointer.version, "threshold": pointer.threshold, "trained_at": pointer.trained_at,
            "metrics": pointer.metrics}


def _tag(services: Services, request: Request) -> str:
    return validate_tag(request.path_params["tag"], services.settings.max_tag_length)


def list_tags(request: Request) -> JSONResponse:
    """List every tag with its numbers of positive and negative examples and its current model.
    ---
    response:
      description: Every tag, sorted by name; `model` is null until one is trained.
      example: {tags: [{tag: cat, positives: 6, negatives: 8, model: {version: 2, threshold: 0.41, trained_at: '2025-01-01T12:00:00Z', metrics: {roc_auc: 1.0, f1: 1.0}}}]}
    errors: [503]
    """
    registry = get_services().registry
    tags = registry.tags()
    models = registry.models()
    counts = registry.example_counts(tags)
    return JSONResponse({"tags": [
        {"tag": tag, "positives": p, "negatives": n, "model": _model(models.get(tag))}
        for tag, (p, n) in zip(tags, counts, strict=True)
    ]})


def tag_info(request: Request) -> JSONResponse:
    """A tag's positive and negative examples and its current model.
    ---
    response:
      description: The tag's example image ids, sorted, and its current model (or null).
      example: {tag: cat, positives: [cat-1, cat-2], negatives: [rocket-1], model: null}
    errors: [400, 404, 503]
    """
    services = get_services()
    tag = _tag(services, request)
    if not services.registry.tag_exists(tag):
        raise not_found("unknown_tag", f"No tag '{tag}'.")
    positives, negatives = services.registry.examples(tag)
    return JSONResponse({"tag": tag, "positives": positives, "negatives": negatives,
                         "model": _model(services.registry.model(tag))})


def stored_versions(services: Services, tag: str) -> list[ModelPointer]:
    """Every version archive the store holds for the tag since its last delete, oldest first, read
    from the archives."""
    pattern = re.compile(rf"models/{re.escape(tag)}/v(\d+)\.tar")
    deleted_through = services.registry.deleted_through(tag)
    pointers = []
    for key in services.store.list(f"models/{tag}/"):
        match = pattern.fullmatch(key)
        if match and int(match.group(1)) > deleted_through:
            try:
                pointers.append(_read_version(services, tag, int(match.group(1))))
            except ObjectNotFound:
                continue  # deleted while listing
    return sorted(pointers, key=lambda p: p.version)


def _read_version(services: Services, tag: str, version: int) -> ModelPointer:
    key = catalog.model_key(tag, version)
    record = catalog.load_version(services, ModelPointer(tag, version, key, 0.0, ""))
    return ModelPointer(tag, version, key, record.threshold, record.trained_at, record.metrics)


def list_versions(request: Request) -> JSONResponse:
    """List a tag's model versions with their cross-validated metrics and training dates.
    ---
    response:
      description: Oldest first; `current` is the version predictions use (null if none).
      example: {tag: cat, current: 2, versions: [{version: 1, current: false, threshold: 0.5, trained_at: '2025-01-01T12:00:00Z', metrics: {roc_auc: 0.98, f1: 0.92, positives: 6, negatives: 8}}]}
    errors: [400, 404, 503]
    """
    services = get_services()
    tag = _tag(services, request)
    if not services.registry.tag_exists(tag):
        raise not_found("unknown_tag", f"No tag '{tag}'.")
    current = services.registry.model(tag)
    current_version = current.version if current else None
    versions = [
        {"version": p.version, "current": p.version == current_version, "threshold": p.threshold,
         "trained_at": p.trained_at, "metrics": p.metrics}
        for p in stored_versions(services, tag)
    ]
    return JSONResponse({"tag": tag, "current": current_version, "versions": versions})


def rollback(request: Request) -> JSONResponse:
    """Make an earlier version of a tag's model the current one again.

    Predictions use it from the next request on; the next training fine-tunes from it and gets
    a new version number (numbers are never reused).
    ---
    response:
      description: The version now in use and the one it replaced.
      example: {tag: cat, version: 1, previous: 2, threshold: 0.5}
    errors: [400, 404, 409, 503]
    """
    services = get_services()
    tag = _tag(services, request)
    raw = request.path_params["version"]
    # ASCII digits only: str.isdigit() also accepts '²' or '①', which int() refuses (a 500).
    if not _VERSION.fullmatch(raw) or int(raw) < 1:
        raise bad_request("invalid_version", "The version must be a whole number from 1.")
    version = int(raw)
    epoch = services.registry.epoch(tag)
    try:  # versions up to deleted_through belonged to the tag before its last delete
        pointer = _read_version(services, tag, version) if version > services.registry.deleted_through(tag) else None
    except ObjectNotFound:
        pointer = None
    if pointer is None:
        raise not_found("unknown_version", f"Tag '{tag}' has no version {version}.")
    previous = services.registry.model(tag)
    try:
        services.registry.publish([pointer], epochs={tag: epoch}, rollback=True)
    except EpochMoved:
        raise conflict("tag_deleted", f"Tag '{tag}' was deleted meanwhile.") from None
    return JSONResponse({"tag": tag, "version": version, "previous": previous.version if previous else None,
                         "threshold": pointer.threshold})


routes = [
    Route("/custom/tags", list_tags, methods=["GET"]),
    Route("/custom/tags/{tag:path}", tag_info, methods=["GET"]),
    Route("/custom/versions/{tag:path}", list_versions, methods=["GET"]),
    Route("/custom/rollback/{tag:path}/{version}", rollback, methods=["GET", "POST"]),
]
app = create_app(routes)
