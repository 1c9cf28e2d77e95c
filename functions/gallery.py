"""Stored images: listing them, their details and thumbnails, and deleting them."""

from __future__ import annotations

import hashlib

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.domain import images
from shared.web.app import create_app
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute, query_int
from shared.web.state import services_of


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
    limit = query_int(request, "limit", 50, 1, 500)
    offset = query_int(request, "offset", 0, 0, 10**9)
    return JSONResponse(images.image_page(services_of(request), offset, limit))


def image_info(request: Request) -> JSONResponse:
    """Details of a stored image and the tags it is an example of.
    ---
    response:
      description: The image's details; `tags` maps each tag to `positive` or `negative`.
      example: {image_id: cat-1, format: JPEG, width: 451, height: 300, bytes: 24066, created_at: '2025-01-01T12:00:00Z', tags: {cat: positive}}
    errors: [400, 404, 503]
    """
    return JSONResponse(images.image_details(services_of(request), request.path_params["image_id"]))


async def thumbnail(request: Request) -> Response:
    """A JPEG thumbnail of a stored image.

    Answers `304 Not Modified` to a matching `If-None-Match`.
    ---
    query:
      size: {type: integer, minimum: 16, maximum: 1024, description: 'Longer side in pixels (default 256).'}
    response: {description: The thumbnail., content: jpeg}
    errors: [400, 404, 503]
    """
    services = services_of(request)
    size = query_int(request, "size", 256, 16, 1024)
    image_id = request.path_params["image_id"]
    meta = await run_in_threadpool(images.known_image, services, image_id)
    etag = '"' + hashlib.sha256(f"{image_id}|{meta.get('created_at')}|{size}".encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    jpeg = await run_in_threadpool(images.thumbnail, services, image_id, size)
    return Response(jpeg, media_type="image/jpeg", headers=headers)


def original(request: Request) -> Response:
    """The stored image's original bytes, as uploaded.
    ---
    response: {description: The image file., content: image}
    errors: [400, 404, 503]
    """
    data, media_type = images.original(services_of(request), request.path_params["image_id"])
    return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})


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
    return JSONResponse(images.delete_image(services_of(request), request.path_params["image_id"]))


routes = [
    ApiRoute("/custom/images", list_images, methods=["GET"]),
    ApiRoute("/custom/images/{image_id}", image_info, methods=["GET"]),
    ApiRoute("/custom/images/{image_id}", delete_image, methods=["DELETE"]),
    ApiRoute("/custom/images/{image_id}/delete", delete_image, methods=["POST"]),
    ApiRoute("/custom/images/{image_id}/thumbnail", thumbnail, methods=["GET"]),
    ApiRoute("/custom/images/{image_id}/original", original, methods=["GET"]),
]
app = create_app(routes)
