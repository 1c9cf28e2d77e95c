"""Loading and exporting custom models as state archives."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared import catalog
from shared.context import Services, get_services
from shared.errors import not_found
from shared.http import create_app, read_upload
from shared.models.archive import pack, unpack
from shared.names import validate_tag


def load_state(services: Services, data: bytes) -> list[dict[str, object]]:
    """Validate the whole archive, store every model as a new version, then publish them together."""
    records = unpack(data, services.spec, services.archive_limits)
    services.registry.check_room_for([record.tag for record in records], services.settings.max_tags)
    pointers = [catalog.save_version(services, record) for record in records]
    if pointers:
        services.registry.publish(pointers)
    return [{"tag": p.tag, "version": p.version, "threshold": p.threshold} for p in pointers]


def export_state(services: Services, tag: str | None) -> bytes:
    if tag is None:
        pointers = list(services.registry.models().values())
    else:
        pointer = services.registry.model(tag)
        if pointer is None:
            raise not_found("unknown_tag", f"Tag '{tag}' has no trained model.")
        pointers = [pointer]
    records = [catalog.load_version(services, p) for p in pointers]
    return pack(records, services.spec)


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


routes = [
    Route("/set_state", set_state, methods=["POST"]),
    Route("/get_state", get_state, methods=["GET"]),
]
app = create_app(routes)
