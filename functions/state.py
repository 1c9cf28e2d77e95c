"""Loading and exporting custom models as state archives."""

from __future__ import annotations

import contextlib

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import catalog
from shared.context import Services, get_services
from shared.errors import not_found
from shared.http import create_app, read_upload
from shared.models.archive import ModelRecord, pack, unpack
from shared.models.edge import build_edge_model
from shared.models.heads import HeadMatrix
from shared.models.runtimes import export_onnx
from shared.names import validate_tag
from shared.registry import ModelPointer
from shared.responses import JSONResponse


def load_state(services: Services, data: bytes) -> list[dict[str, object]]:
    """Validate the whole archive, store every model as a new version, then publish them together.
    If a model cannot be stored, those stored before it are removed again (as far as the store
    lets us): a failed load adds no versions."""
    records = unpack(data, services.spec, services.archive_limits)
    services.registry.check_room_for([record.tag for record in records], services.settings.max_tags)
    pointers: list[ModelPointer] = []
    try:
        for record in records:
            pointers.append(catalog.save_version(services, record))
    except Exception:
        for pointer in pointers:
            with contextlib.suppress(Exception):  # the store may be down: the error that stopped us matters
                services.store.delete(pointer.key)
        raise
    if pointers:
        services.registry.publish(pointers)
    return [{"tag": p.tag, "version": p.version, "threshold": p.threshold} for p in pointers]


def current_records(services: Services, tags: list[str]) -> list[ModelRecord]:
    """The current model of each tag asked for (every tag when none is); 404 for a tag without one."""
    models = services.registry.models()
    for tag in tags:
        if tag not in models:
            raise not_found("unknown_tag", f"Tag '{tag}' has no trained model.")
    pointers = [models[t] for t in tags] if tags else list(models.values())
    return [catalog.load_version(services, p) for p in pointers]


def export_state(services: Services, tag: str | None) -> bytes:
    return pack(current_records(services, [tag] if tag else []), services.spec)


def export_edge(services: Services, tags: list[str]) -> bytes:
    records = current_records(services, tags)
    if not records:
        raise not_found("no_models", "There is no trained model to export.")
    spec = services.spec
    matrix = HeadMatrix(
        [r.tag for r in records], [r.head for r in records], [r.threshold for r in records],
        [r.version for r in records], (spec.embedding_size, spec.style_size),
    )
    return build_edge_model(export_onnx(services.settings.model_cache_dir), matrix, spec)


async def set_state(request: Request) -> JSONResponse:
    """Load custom models from a state archive.

    The whole archive is validated before anything changes; then all its models are published
    at once, each as its tag's next version.
    ---
    upload: data
    response:
      description: The models loaded.
      example: {loaded: [{tag: cat, version: 3, threshold: 0.41}]}
    errors: [400, 409, 413, 503]
    """
    services = get_services()
    data = await read_upload(request, services.settings.max_archive_bytes)
    loaded = await run_in_threadpool(load_state, services, data)
    return JSONResponse({"loaded": loaded})


def get_state(request: Request) -> Response:
    """Export the current model of every tag (or one) as a state archive.
    ---
    query:
      tag: {type: string, description: Export only this tag.}
    response: {description: 'A tar of `manifest.json` and one safetensors file per model.', content: tar}
    errors: [400, 404, 503]
    """
    services = get_services()
    tag = request.query_params.get("tag")
    if tag is not None:
        tag = validate_tag(tag, services.settings.max_tag_length)
    return Response(
        export_state(services, tag),
        media_type="application/x-tar",
        headers={"Content-Disposition": 'attachment; filename="tagsmith-state.tar"'},
    )


def get_edge_model(request: Request) -> Response:
    """Export the backbone and custom heads as one ONNX file for devices.

    Its `scores` output matches the server's custom scores within 1e-4 for the same preprocessed
    image; tags, thresholds and versions are in the file's metadata under `tagsmith`.
    ---
    query:
      tag: {type: array, items: {type: string}, description: 'Export only these tags (repeat the parameter: `?tag=a&tag=b`); default every tag.'}
    response: {description: 'An ONNX model.', content: onnx}
    errors: [400, 404, 503]
    """
    services = get_services()
    tags = [validate_tag(t, services.settings.max_tag_length) for t in request.query_params.getlist("tag")]
    return Response(
        export_edge(services, tags),
        media_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="tagsmith-edge.onnx"'},
    )


routes = [
    Route("/set_state", set_state, methods=["POST"]),
    Route("/get_state", get_state, methods=["GET"]),
    Route("/export/onnx", get_edge_model, methods=["GET"]),
]
app = create_app(routes)
