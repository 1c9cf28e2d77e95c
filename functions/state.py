"""Loading and exporting custom models as state archives, and the ONNX file for devices."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.core.names import validate_tag
from shared.domain import state
from shared.web.app import create_app
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute
from shared.web.state import services_of
from shared.web.uploads import read_upload


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
    services = services_of(request)
    data = await read_upload(request, services.settings.max_archive_bytes)
    return JSONResponse({"loaded": await run_in_threadpool(state.load_state, services, data)})


def get_state(request: Request) -> Response:
    """Export the current model of every tag (or one) as a state archive.
    ---
    query:
      tag: {type: string, description: Export only this tag.}
    response: {description: 'A tar of `manifest.json` and one safetensors file per model.', content: tar}
    errors: [400, 404, 503]
    """
    services = services_of(request)
    tag = request.query_params.get("tag")
    return Response(
        state.export_state(services, validate_tag(tag, services.settings.max_tag_length) if tag is not None else None),
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
    services = services_of(request)
    tags = [validate_tag(t, services.settings.max_tag_length) for t in request.query_params.getlist("tag")]
    return Response(
        state.export_edge(services, tags),
        media_type="application/octet-stream",
        headers={"Content-Disposition": 'attachment; filename="tagsmith-edge.onnx"'},
    )


routes = [
    ApiRoute("/set_state", set_state, methods=["POST"]),
    ApiRoute("/get_state", get_state, methods=["GET"]),
    ApiRoute("/export/onnx", get_edge_model, methods=["GET"]),
]
app = create_app(routes)
