"""Adding images and assigning them to tags as positive or negative examples."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.context import Services, get_services
from shared.embeddings import image_key
from shared.errors import not_found
from shared.http import create_app, read_upload
from shared.images import DecodedImage, decode_image
from shared.names import new_image_id, validate_image_id, validate_sample_type, validate_tag


def store_image(services: Services, image_id: str, data: bytes, decoded: DecodedImage) -> None:
    """Claim the id, write the bytes, then make the image visible; a crash leaves nothing visible."""
    services.registry.reserve_image(image_id)
    try:
        services.store.put(image_key(image_id), data)
        services.registry.commit_image(
            image_id,
            {"format": decoded.format, "width": decoded.width, "height": decoded.height, "bytes": len(data)},
        )
    except BaseException:
        services.registry.release_image(image_id)
        raise


async def add(request: Request) -> JSONResponse:
    services = get_services()
    settings = services.settings
    requested = request.query_params.get("image_id")
    image_id = validate_image_id(requested) if requested is not None else new_image_id()
    data = await read_upload(request, settings.max_upload_bytes)
    decoded = await run_in_threadpool(decode_image, data, settings.max_image_pixels)
    await run_in_threadpool(store_image, services, image_id, data, decoded)
    return JSONResponse(
        {"image_id": image_id, "format": decoded.format, "width": decoded.width, "height": decoded.height},
        status_code=201,
    )


def assign(request: Request) -> JSONResponse:
    services = get_services()
    params = request.path_params
    image_id = validate_image_id(params["image_id"])
    sample_type = validate_sample_type(params["type"])
    tag = validate_tag(params["tag"], services.settings.max_tag_length)
    if not services.registry.image_exists(image_id):
        raise not_found("unknown_image", f"No image with id '{image_id}'.")
    services.registry.assign(image_id, tag, sample_type)
    positives, negatives = services.registry.examples(tag)
    return JSONResponse(
        {
            "image_id": image_id,
            "tag": tag,
            "type": sample_type,
            "positives": len(positives),
            "negatives": len(negatives),
        }
    )


routes = [
    Route("/custom/add", add, methods=["POST"]),
    Route("/custom/assign/{image_id}/{type}/{tag:path}", assign, methods=["GET", "POST"]),
]
app = create_app(routes)
