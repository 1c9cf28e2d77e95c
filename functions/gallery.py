"""Stored images: listing them, their details and thumbnails, and deleting them."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from functions.images import forget_image
from shared.context import Services, get_services
from shared.embeddings import image_key
from shared.errors import not_found
from shared.http import create_app, query_int
from shared.images import decode_image
from shared.names import validate_image_id
from shared.responses import JSONResponse

MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
               "BMP": "image/bmp", "TIFF": "image/tiff"}


def _describe(image_id: str, meta: dict[str, str]) -> dict[str, Any]:
    ints = ("width", "height", "bytes")
    return {"image_id": image_id, **{k: int(v) if k in ints else v for k, v in meta.items()}}


def _known_image(services: Services, request: Request) -> tuple[str, dict[str, str]]:
    image_id = validate_image_id(request.path_params["image_id"])
    meta = services.registry.image(image_id)
    if not meta:
        raise not_found("unknown_image", f"No image with id '{image_id}'.")
    return image_id, meta


def list_images(request: Request) -> JSONResponse:
    """List stored images, newest first.
    ---
    query:
      limit: {type: integer, minimum: 1, maximum: 500, description: 'How many (default 50).'}
      offset: {type: integer, minimum: 0, description: 'How many to skip (default 0).'}
    response:
      description: A page of images and how many there are in all.
      example: {total: 1, offset: 0, limit: 50, images: [{image_id: cat-1, format: JPEG, width: 451, height: 300, bytes: 24066, created_at: '2025-01-01T12:00:00Z'}]}
    errors: [400, 503]
    """
    services = get_services()
    limit = query_int(request, "limit", 50, 1, 500)
    offset = query_int(request, "offset", 0, 0, 10**9)
    ids = services.registry.image_ids(offset, limit)
    images = [_describe(i, m) for i, m in zip(ids, services.registry.images(ids), strict=True) if m]
    return JSONResponse({"total": services.registry.image_count(), "offset": offset, "limit": limit, "images": images})


def image_info(request: Request) -> JSONResponse:
    """Details of a stored image and the tags it is an example of.
    ---
    response:
      description: The image's details; `tags` maps each tag to `positive` or `negative`.
      example: {image_id: cat-1, format: JPEG, width: 451, height: 300, bytes: 24066, created_at: '2025-01-01T12:00:00Z', tags: {cat: positive}}
    errors: [400, 404, 503]
    """
    services = get_services()
    image_id, meta = _known_image(services, request)
    return JSONResponse({**_describe(image_id, meta), "tags": services.registry.assignments(image_id)})


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """A JPEG no larger than ``size`` on its longer side, upright."""
    image = decode_image(data, max_pixels, draft_size=size).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=82, optimize=True)
    return out.getvalue()


async def thumbnail(request: Request) -> Response:
    """A JPEG thumbnail of a stored image.

    Answers `304 Not Modified` to a matching `If-None-Match`.
    ---
    query:
      size: {type: integer, minimum: 16, maximum: 1024, description: 'Longer side in pixels (default 256).'}
    response: {description: The thumbnail., content: jpeg}
    errors: [400, 404, 503]
    """
    services = get_services()
    size = query_int(request, "size", 256, 16, 1024)
    image_id, meta = await run_in_threadpool(_known_image, services, request)
    etag = '"' + hashlib.sha256(f"{image_id}|{meta.get('created_at')}|{size}".encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    data = await run_in_threadpool(services.store.get, image_key(image_id))
    jpeg = await run_in_threadpool(make_thumbnail, data, size, services.settings.max_image_pixels)
    return Response(jpeg, media_type="image/jpeg", headers=headers)


def original(request: Request) -> Response:
    """The stored image's original bytes, as uploaded.
    ---
    response: {description: The image file., content: image}
    errors: [400, 404, 503]
    """
    services = get_services()
    image_id, meta = _known_image(services, request)
    media = MEDIA_TYPES.get(meta.get("format", ""), "application/octet-stream")
    return Response(services.store.get(image_key(image_id)), media_type=media,
                    headers={"Cache-Control": "no-cache"})


def delete_image(request: Request) -> JSONResponse:
    """Delete a stored image.

    It is removed from every tag it was an example of, and its bytes and cached embeddings
    are deleted. Models already trained on it are kept.
    ---
    response:
      description: The image is gone; `removed_from` lists the tags it was an example of.
      example: {image_id: cat-1, deleted: true, removed_from: [cat]}
    errors: [400, 404, 503]
    """
    services = get_services()
    image_id, _ = _known_image(services, request)
    tags = forget_image(services, image_id)
    return JSONResponse({"image_id": image_id, "deleted": True, "removed_from": tags})


routes = [
    Route("/custom/images", list_images, methods=["GET"]),
    Route("/custom/images/{image_id}", image_info, methods=["GET"]),
    Route("/custom/images/{image_id}", delete_image, methods=["DELETE"]),
    Route("/custom/images/{image_id}/delete", delete_image, methods=["POST"]),
    Route("/custom/images/{image_id}/thumbnail", thumbnail, methods=["GET"]),
    Route("/custom/images/{image_id}/original", original, methods=["GET"]),
]
app = create_app(routes)
