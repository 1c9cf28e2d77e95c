"""Tags and their model versions: what exists, how each version measured, and rolling back."""

from __future__ import annotations

from starlette.requests import Request

from shared.domain import catalog, labels
from shared.web.app import create_app
from shared.web.responses import JSONResponse
from shared.web.routing import ApiRoute, query_int, query_text
from shared.web.state import services_of


def list_tags(request: Request) -> JSONResponse:
    """List the tags with their numbers of positive and negative examples and their current models.

    Every tag by default; `contains` keeps those whose name holds a text (any case), and `limit`
    pages them: pass a page's `next` as `after` for the next one.
    ---
    query:
      contains: {type: string, description: 'Only tags whose name holds this (any case).'}
      after: {type: string, description: 'Only tags sorted after this name (the previous page''s `next`).'}
      limit: {type: integer, minimum: 1, maximum: 10000, description: 'How many at most (default: every one).'}
    response:
      description: The tags, sorted by name; `model` is null until one is trained; `next` is null on the last page.
      schema: TagList
      example: {tags: [{tag: cat, positives: 6, negatives: 8, model: {version: 2, threshold: 0.41, trained_at: '2025-01-01T12:00:00Z', metrics: {roc_auc: 1.0, f1: 1.0}}}], next: null}
    errors: [400, 503]
    """
    query = request.query_params
    limit = query_int(request, "limit", 0, 1, 10_000) if "limit" in query else None
    return JSONResponse(catalog.tags_overview(services_of(request), query_text(request, "contains"),
                                              query_text(request, "after"), limit))


def tag_info(request: Request) -> JSONResponse:
    """A tag's positive and negative examples and its current model.

    A name no tag has gets 404, or 400 ``invalid_tag`` where no new tag may have it (a lookalike of
    a tag there is, characters that show as nothing, longer than ``TAGSMITH_MAX_TAG_LENGTH``),
    saying why, as assigning its first example would: a client can check a name before making
    a tag of it.
    ---
    response:
      description: The tag's example image ids, sorted, and its current model (or null).
      schema: TagDetails
      example: {tag: cat, positives: [cat-1, cat-2], negatives: [rocket-1], model: null}
    errors: [400, 404, 503]
    """
    services, tag = services_of(request), request.path_params["tag"]
    if not services.registry.tag_exists(tag):
        labels.check_new_tags(services, [tag])
    return JSONResponse(catalog.tag_details(services, tag))


def list_versions(request: Request) -> JSONResponse:
    """List a tag's model versions with their cross-validated metrics and training dates.
    ---
    response:
      description: Oldest first; `current` is the version predictions use (null if none).
      schema: VersionList
      example: {tag: cat, current: 2, versions: [{version: 1, current: false, threshold: 0.5, trained_at: '2025-01-01T12:00:00Z', metrics: {roc_auc: 0.98, f1: 0.92, positives: 6, negatives: 8}}]}
    errors: [400, 404, 503]
    """
    return JSONResponse(catalog.version_list(services_of(request), request.path_params["tag"]))


def rollback(request: Request) -> JSONResponse:
    """Make an earlier version of a tag's model the current one again.

    Predictions use it from the next request on; the next training fine-tunes from it and gets
    a new version number (numbers are never reused).
    ---
    response:
      description: The version now in use and the one it replaced.
      schema: Rollback
      example: {tag: cat, version: 1, previous: 2, threshold: 0.5}
    errors: [400, 404, 409, 503]
    """
    p = request.path_params
    return JSONResponse(catalog.rollback(services_of(request), p["tag"], p["version"]))


routes = [
    ApiRoute("/custom/tags", list_tags, methods=["GET"]),
    ApiRoute("/custom/tags/{tag:path}", tag_info, methods=["GET"]),
    ApiRoute("/custom/versions/{tag:path}", list_versions, methods=["GET"]),
    ApiRoute("/custom/rollback/{tag:path}/{version}", rollback, methods=["GET", "POST"]),
]
app = create_app(routes)
