"""Stored images and the library: listing and searching them, similar images, the library's
progress and its scores exported, an image's details and thumbnails, deleting it."""

from __future__ import annotations

import hashlib

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from shared.core.names import validate_tag
from shared.domain import export, images, library, search
from shared.domain.embeddings import stored_pixels
from shared.web.app import create_app
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute, query_bool, query_choice, query_float, query_int, query_tags, query_text
from shared.web.state import services_of


def list_images(request: Request) -> JSONResponse:
    """List and search the library's images.

    Without filters: every stored image, newest first. With `tag`, each image carries its `score`
    for the tag (null until a worker has scored it), `match` (score at or above the tag's threshold)
    and `label` (positive, negative or null); filter by those, by matches of other tags (`all`,
    `any`, `none`, each repeatable) and by a part of the file name, and sort by score or by date
    added. Page with `cursor` (the `next` of the previous page): pages stay in order while scores
    change. `tags` says, per tag used, its current version and the version its library scores come
    from (`scores_from`, behind while a worker rescores the library).
    ---
    query:
      tag: {type: string, description: 'The tag whose score, match and label each image shows and the filters use.'}
      match: {type: boolean, description: "Only images the tag's model matches (true) or scored below its threshold (false)."}
      min_score: {type: number, minimum: 0, maximum: 1, description: 'Only images scoring at least this for `tag`.'}
      max_score: {type: number, minimum: 0, maximum: 1, description: 'Only images scoring at most this for `tag`.'}
      label: {type: string, enum: [positive, negative, none], description: 'Only images labelled so for `tag` (none: not labelled either way).'}
      all: {type: array, items: {type: string}, description: 'Only images every one of these tags matches.'}
      any: {type: array, items: {type: string}, description: 'Only images at least one of these tags matches.'}
      none: {type: array, items: {type: string}, description: 'Only images none of these tags matches.'}
      filename: {type: string, description: 'Only images whose file name contains this (any case).'}
      sort: {type: string, enum: [score, date], description: 'By `tag` score or by date added (default: score when `tag` has a model, else date).'}
      order: {type: string, enum: [desc, asc], description: 'Highest or newest first (default), or the reverse.'}
      limit: {type: integer, minimum: 1, maximum: 500, description: 'How many (default 50).'}
      offset: {type: integer, minimum: 0, description: 'How many to skip (default 0); `cursor` is better for paging.'}
      cursor: {type: string, description: 'Where the previous page ended (its `next`).'}
    response:
      description: A page of images, how many match in all, and the next page's cursor (null on the last).
      schema: ImagePage
      example: {total: 1, offset: 0, limit: 50, next: null, tags: {cat: {version: 2, threshold: 0.41, scores_from: 2}}, images: [{image_id: cat-1, filename: cat.jpg, format: JPEG, width: 451, height: 300, bytes: 24066, created_at: '2025-01-01T12:00:00Z', score: 0.93, match: true, label: positive}]}
    errors: [400, 404, 503]
    """
    tag = request.query_params.get("tag")
    tag = validate_tag(tag) if tag is not None else None
    query = search.Query(
        tag=tag,
        match=query_bool(request, "match"),
        min_score=query_float(request, "min_score", 0.0, 1.0),
        max_score=query_float(request, "max_score", 0.0, 1.0),
        label=query_choice(request, "label", search.LABELS),
        all_of=query_tags(request, "all"),
        any_of=query_tags(request, "any"),
        none_of=query_tags(request, "none"),
        filename=query_text(request, "filename") or None,
        sort=query_choice(request, "sort", search.SORTS),
        descending=query_choice(request, "order", ("desc", "asc"), "desc") == "desc",
        limit=query_int(request, "limit", 50, 1, 500),
        offset=query_int(request, "offset", 0, 0, 10**9),
        cursor=request.query_params.get("cursor"),
    )
    return JSONResponse(search.find(services_of(request), query))


def similar(request: Request) -> JSONResponse:
    """Stored images most like this one in what they show, most similar first.

    For finding more examples to label. Compares the semantic embeddings the workers keep (cosine
    similarity); an image is found once a worker has embedded it, shortly after it is added (409
    `not_embedded` until then).
    ---
    query:
      limit: {type: integer, minimum: 1, maximum: 200, description: 'How many (default 20).'}
    response:
      description: The most similar images with their similarity (1 is the same picture).
      schema: SimilarImages
      example: {image_id: cat-1, similar: [{image_id: cat-2, filename: cat2.jpg, format: JPEG, width: 451, height: 300, bytes: 21000, created_at: '2025-01-01T12:00:00Z', similarity: 0.91}]}
    errors: [400, 404, 409, 503]
    """
    limit = query_int(request, "limit", 20, 1, 200)
    return JSONResponse(search.similar(services_of(request), request.path_params["image_id"], limit))


def library_summary(request: Request) -> JSONResponse:
    """How far the workers are with the library.

    Images stored, embedded and waiting to be embedded, and per tag with a model its current
    version and the version its library scores come from (`up_to_date` once they are the same
    and every embedded image is scored). With thousands of tags, ask for those you follow with `tag`.
    ---
    query:
      tag: {type: array, items: {type: string}, description: 'Only these tags (default: every tag with a model).'}
    response:
      description: The library's progress.
      schema: LibrarySummary
      example: {images: 120, embedded: 118, pending: 2, packs: 3, tags: {cat: {version: 2, scores_from: 2, up_to_date: true}}}
    errors: [400, 404, 503]
    """
    return JSONResponse(library.summary(services_of(request), query_tags(request, "tag")))


def export_scores(request: Request) -> Response:
    """Every library image's score for every tag, as CSV or JSON lines, streamed.

    One row per scored image and tag: `image_id`, `filename`, `tag`, `score`, `match`, `version`
    (the version the scores come from). Filter with `tag` (repeatable) and `match=true`.
    ---
    query:
      format: {type: string, enum: [csv, jsonl], description: 'CSV (default) or JSON lines.'}
      tag: {type: array, items: {type: string}, description: 'Only these tags (default: every tag with a model).'}
      match: {type: boolean, description: 'Only the rows where the tag matches.'}
    response: {description: 'The rows, streamed (text/csv or application/x-ndjson).', content: [csv, jsonl]}
    errors: [400, 404, 503]
    """
    services = services_of(request)
    form = query_choice(request, "format", ("csv", "jsonl"), "csv")
    tags = query_tags(request, "tag")
    matches_only = bool(query_bool(request, "match"))
    chunks = search.export_rows(services, tags, matches_only)  # an unknown tag is refused before the stream
    lines = export.csv_lines(chunks) if form == "csv" else export.json_lines(chunks)
    media = "text/csv; charset=utf-8" if form == "csv" else "application/x-ndjson"
    name = f"tagsmith-scores.{form}"
    return StreamingResponse(iterate_in_threadpool(lines), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


def image_info(request: Request) -> JSONResponse:
    """Details of a stored image and the tags it is an example of.
    ---
    response:
      description: The image's details; `tags` maps each tag to `positive` or `negative`.
      schema: ImageDetails
      example: {image_id: cat-1, filename: cat.jpg, format: JPEG, width: 451, height: 300, bytes: 24066, created_at: '2025-01-01T12:00:00Z', tags: {cat: positive}}
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
    # The image's content hash: another image stored under the id within the same second (a
    # delete, then an add) has the same id and created_at, and had kept the old thumbnail's ETag.
    version = f"{image_id}|{meta.get('sha256')}|{meta.get('created_at')}|{size}"
    etag = '"' + hashlib.sha256(version.encode()).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    jpeg = await run_in_threadpool(images.kept_thumbnail, services, image_id, size)
    if jpeg is None:  # made from the original: its pixels are awaited here, no thread of the pool waits
        async with services.decode_budget.reserve(stored_pixels(meta)) as reserved:
            jpeg = await run_in_threadpool(images.thumbnail, services, image_id, size, reserved)
    return Response(jpeg, media_type="image/jpeg", headers=headers)


def original(request: Request) -> Response:
    """The stored image's original bytes, as uploaded.
    ---
    response: {description: The image file., content: image}
    errors: [400, 404, 503]
    """
    data, media_type = images.original(services_of(request), request.path_params["image_id"])
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, no-cache"})


def delete_image(request: Request) -> JSONResponse:
    """Delete a stored image.

    It is removed from every tag it was an example of, and its bytes and cached embeddings
    are deleted. Models already trained on it are kept.
    ---
    response:
      description: The image is gone; `removed_from` lists the tags it was an example of.
      schema: ImageDeleted
      example: {image_id: cat-1, deleted: true, removed_from: [cat]}
    errors: [400, 404, 503]
    """
    return JSONResponse(images.delete_image(services_of(request), request.path_params["image_id"]))


routes = [
    ApiRoute("/custom/images", list_images, methods=["GET"]),
    ApiRoute("/custom/library", library_summary, methods=["GET"]),
    ApiRoute("/custom/library/export", export_scores, methods=["GET"]),
    ApiRoute("/custom/images/{image_id}/similar", similar, methods=["GET"]),
    ApiRoute("/custom/images/{image_id}", image_info, methods=["GET"]),
    ApiRoute("/custom/images/{image_id}", delete_image, methods=["DELETE"]),
    ApiRoute("/custom/images/{image_id}/delete", delete_image, methods=["POST"]),
    ApiRoute("/custom/images/{image_id}/thumbnail", thumbnail, methods=["GET"]),
    ApiRoute("/custom/images/{image_id}/original", original, methods=["GET"]),
]
app = create_app(routes)
