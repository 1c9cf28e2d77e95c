"""The OpenAPI 3.1 schema of an app, built from its routes and endpoint docstrings, and a docs page.

An endpoint's docstring is its documentation: the first line is the summary, the paragraphs up
to a ``---`` line the description, and the YAML after it the details, in a short dialect:

    query:    {name: {type: integer, description: ..., required: false}}
    upload:   data            # a multipart file field; ``{field: data, multiple: true}`` for many
    form:     {name: {type: string, description: ...}}   # text fields sent with the upload
    response: {status: 201, description: ..., content: json|jpeg|image|tar|onnx|html|text|csv|jsonl (or a list), example: ...,
               schema: Prediction,   # a name in ``shared/web/schemas.py`` or an inline JSON Schema
               also: [200]}          # other success statuses answered with the same schema
    errors:   [400, 404]

Every JSON answer declares its schema (the tests check real answers against it); every error is
an ``Error``. Operations outside ``shared.web.auth``'s public paths carry the two API key schemes.

Path parameters come from the route's path and are described once, in ``PATH_PARAMETERS``.
"""

from __future__ import annotations

import html
import inspect
import json
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.schemas import SchemaGenerator
from starlette.staticfiles import StaticFiles

from shared.web.auth import is_public
from shared.web.responses import JSONResponse
from shared.web.routing import query_choice
from shared.web.schemas import SCHEMAS, ref

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "image_id": {
        "description": "Image id: 1-128 of `A-Z a-z 0-9 _ . -`, starting with a letter or digit.",
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"},
    },
    "tag": {
        "description": "Custom tag: 1-64 letters, digits, spaces and punctuation; no slashes, "
        "control characters, surrounding spaces or leading dot.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 64},
    },
    "type": {"description": "Kind of example.", "schema": {"type": "string", "enum": ["positive", "negative"]}},
    "task_id": {"description": "Task id returned by a train request.", "schema": {"type": "string"}},
    "version": {"description": "Model version number.", "schema": {"type": "integer", "minimum": 1}},
}
ERRORS = {
    400: "Bad input: the message says what is wrong.",
    401: "An API key is needed (the server has `TAGSMITH_API_KEYS` set) and none or a wrong one was sent.",
    404: "Unknown image, tag, version or task, or a path that matches no route (a line break in a parameter).",
    408: "The request body did not arrive in time (`TAGSMITH_BODY_READ_TIMEOUT_S`).",
    409: "Conflict: the image id is taken, or the most tags allowed exist already.",
    413: "Too large: the upload, the image's pixels or the archive.",
    415: "Not an image, or a format that is not supported.",
    503: "Redis or the object store is unavailable; try again shortly.",
}
CONTENT = {
    "json": "application/json",
    "jpeg": "image/jpeg",
    "image": "image/*",
    "tar": "application/x-tar",
    "onnx": "application/octet-stream",
    "html": "text/html",
    "text": "text/plain",
    "csv": "text/csv",
    "jsonl": "application/x-ndjson",
}
ERROR_SCHEMA = SCHEMAS["Error"]
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "One of the keys in `TAGSMITH_API_KEYS`. Checked only when the server has "
               "keys configured; without them every route is open."},
    "Bearer": {"type": "http", "scheme": "bearer",
               "description": "The same key as `Authorization: Bearer <key>`; checked only when keys are configured."},
}
# Either scheme will do; public routes (the probes, the web page and its files) need neither.
SECURITY: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]
DOCS_STATIC = Path(__file__).resolve().parent / "static" / "docs"


def _version() -> str:
    try:
        return metadata.version("tagsmith")
    except metadata.PackageNotFoundError:
        return "0"


def parse_docstring(doc: str) -> tuple[str, str, dict[str, Any]]:
    """(summary, description, YAML details) of an endpoint docstring."""
    text, details = (re.split(r"^---[ \t]*$", doc, maxsplit=1, flags=re.M) + [""])[:2]
    summary, _, description = text.strip().partition("\n")
    spec = yaml.safe_load(details) if details.strip() else {}
    if not isinstance(spec, dict):
        raise ValueError(f"the YAML after '---' must be a mapping: {details!r}")
    return summary.strip(), description.strip(), spec


def _parameters(path: str, spec: dict[str, Any]) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, **PATH_PARAMETERS.get(name, {"schema": {"type": "string"}})}
        for name in re.findall(r"{(\w+)}", path)
    ]
    for name, field in (spec.get("query") or {}).items():
        field = dict(field or {})
        description = field.pop("description", "")
        required = bool(field.pop("required", False))
        params.append({"name": name, "in": "query", "required": required, "description": description,
                       "schema": field or {"type": "string"}})
    return params


def _request_body(spec: dict[str, Any]) -> dict[str, Any] | None:
    upload = spec.get("upload")
    if not upload:
        return None
    field, multiple = (upload, False) if isinstance(upload, str) else (upload["field"], upload.get("multiple", False))
    binary: dict[str, Any] = {"type": "string", "format": "binary"}
    properties: dict[str, Any] = {field: {"type": "array", "items": binary} if multiple else binary}
    for name, extra in (spec.get("form") or {}).items():
        properties[name] = dict(extra)
    schema = {"type": "object", "required": [field], "properties": properties}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def _responses(spec: dict[str, Any], public: bool, has_parameters: bool) -> dict[str, Any]:
    response = dict(spec.get("response") or {})
    status = str(response.pop("status", 200))
    kinds = response.pop("content", "json")
    schema = response.pop("schema", None)
    if isinstance(schema, str):
        schema = ref(schema)
    content: dict[str, Any] = {}
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        media = CONTENT[kind]
        content[media] = {"schema": schema or ({"type": "object"} if media == CONTENT["json"] else {"type": "string"})}
    if "example" in response:
        next(iter(content.values()))["example"] = response.pop("example")
    success = {"description": response.pop("description", "Success."), "content": content}
    responses: dict[str, Any] = {status: success}
    for other in response.pop("also", []):  # other success statuses with the same body
        responses[str(other)] = {**success, "content": {m: {"schema": c["schema"]} for m, c in content.items()}}
    errors = set(spec.get("errors") or [])
    if not public:
        errors.add(401)
    if spec.get("upload"):
        errors.add(408)
    if has_parameters:  # a parameter the route's pattern cannot match is a 404
        errors.add(404)
    for code in sorted(errors):
        responses[str(code)] = {
            "description": ERRORS[int(code)],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return responses


def build_schema(routes: Sequence[BaseRoute], title: str = "tagsmith") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route (mounts of static files have no operations)."""
    endpoints = SchemaGenerator({}).get_endpoints(list(routes))
    methods_of: dict[Any, int] = {}
    for endpoint in endpoints:
        methods_of[endpoint.func] = methods_of.get(endpoint.func, 0) + 1
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        summary, description, spec = parse_docstring(inspect.getdoc(endpoint.func) or "")
        name = endpoint.func.__name__
        operation: dict[str, Any] = {
            "operationId": name if methods_of[endpoint.func] == 1 else f"{name}_{endpoint.http_method}",
            "summary": summary,
            "tags": [endpoint.func.__module__.rpartition(".")[2]],
        }
        if description:
            operation["description"] = description
        parameters = _parameters(endpoint.path, spec)
        if parameters:
            operation["parameters"] = parameters
        body = _request_body(spec)
        if body:
            operation["requestBody"] = body
        public = is_public(endpoint.path)
        operation["responses"] = _responses(spec, public, "{" in endpoint.path)
        operation["security"] = [] if public else SECURITY
        paths.setdefault(endpoint.path, {})[endpoint.http_method] = operation
    order = ["get", "post", "put", "patch", "delete"]
    for path, operations in paths.items():
        paths[path] = dict(sorted(operations.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": _version(),
            "description": "Image tagging with base keywords and styles, and custom tags taught from "
            "a few positive and negative examples. Errors are JSON `{\"error\", \"message\"}`. "
            "API keys (`X-API-Key: <key>` or `Authorization: Bearer <key>`) are needed only when the "
            "server has `TAGSMITH_API_KEYS` set; `/health`, `/ready`, the web page and its files never need one.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


def _schema_of(request: Request) -> dict[str, Any]:
    state = request.app.state
    if not hasattr(state, "openapi"):
        state.openapi = build_schema(request.app.routes)
    schema: dict[str, Any] = state.openapi
    return schema


def openapi_json(request: Request) -> JSONResponse:
    """The OpenAPI 3.1 schema of every route of this server.
    ---
    response: {description: 'An OpenAPI 3.1 document.', schema: OpenApiDocument}
    """
    return JSONResponse(_schema_of(request))


def docs(request: Request) -> HTMLResponse:
    """The API reference as a web page, rendered from the OpenAPI schema.

    By default an interactive reference (Swagger UI, served from `/docs/` by this server: nothing
    is fetched from elsewhere) where each operation can be tried; `view=plain` gives the same
    reference as one page without scripts.
    ---
    query:
      view: {type: string, enum: [interactive, plain], description: 'Interactive (default) or plain HTML without scripts.'}
    response: {description: 'An HTML page.', content: html}
    errors: [400]
    """
    if query_choice(request, "view", ("interactive", "plain"), "interactive") == "plain":
        return HTMLResponse(render_docs(_schema_of(request)))
    return HTMLResponse(render_interactive(_schema_of(request)), headers={"Cache-Control": "no-cache"})


routes: list[BaseRoute] = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    # The interactive reference's script, style sheets and the vendored Swagger UI (VENDORED.md).
    Mount("/docs", StaticFiles(directory=DOCS_STATIC), name="docs"),
]


def render_interactive(schema: dict[str, Any]) -> str:
    """Swagger UI on this server's /openapi.json. Links are relative, so the page also works
    behind a proxy that serves tagsmith under a path prefix."""
    info = schema["info"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(info['title'])} API</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="docs/swagger-ui/swagger-ui.css">
<link rel="stylesheet" href="docs/page.css"></head>
<body><div class="docs-bar"><b>{_e(info['title'])} API</b>{_e(info['version'])}
<a href="openapi.json">openapi.json</a><a href="docs?view=plain">plain reference</a><a href="./">web page</a></div>
<noscript><p>This reference runs JavaScript; the <a href="docs?view=plain">plain reference</a> does not.</p></noscript>
<div id="swagger-ui" data-schema="openapi.json"></div>
<script src="docs/swagger-ui/swagger-ui-bundle.js"></script><script src="docs/init.js"></script></body></html>"""


# --- the docs page -------------------------------------------------------------------------

_e = html.escape
_CODE = re.compile(r"`([^`]+)`")


def _text(value: str) -> str:
    """Escape, then show `backticked` spans as code."""
    return _CODE.sub(r"<code>\1</code>", _e(value))


def _params_table(params: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}{' (required)' if p['required'] else ''}</td>"
        f"<td><code>{_e(_type(p['schema']))}</code></td><td>{_text(p.get('description', ''))}</td></tr>"
        for p in params
    )
    return f"<table><tr><th>parameter</th><th>in</th><th>type</th><th></th></tr>{rows}</table>"


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if schema.get("format") == "binary":
        return "file"
    return str(schema.get("type", "object"))


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [
        f'<section class="op" id="{_e(op["operationId"])}"><h3><span class="m {method}">{method.upper()}</span> '
        f"<code>{_e(path)}</code></h3><p class=\"summary\">{_text(op['summary'])}</p>"
    ]
    if op.get("description"):
        parts += [f"<p>{_text(p)}</p>" for p in op["description"].split("\n\n")]
    if op.get("parameters"):
        parts.append(_params_table(op["parameters"]))
    body = op.get("requestBody")
    if body:
        schema = body["content"]["multipart/form-data"]["schema"]
        fields = ", ".join(f"<code>{_e(k)}</code> ({_e(_type(v))})" for k, v in schema["properties"].items())
        parts.append(f"<p><b>Body</b>: <code>multipart/form-data</code> with {fields}.</p>")
    items = []
    for status, response in op["responses"].items():
        media, content = next(iter(response["content"].items()))
        example = content.get("example")
        sample = f"<pre>{_e(json.dumps(example, indent=1))}</pre>" if example is not None else ""
        description = _text(response["description"])
        items.append(f"<li><b>{_e(status)}</b> <code>{_e(media)}</code> — {description}{sample}</li>")
    parts.append(f"<ul class=\"responses\">{''.join(items)}</ul></section>")
    return "".join(parts)


def render_docs(schema: dict[str, Any]) -> str:
    """A self-contained HTML page: every operation grouped by function, with a table of contents."""
    groups: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            groups.setdefault(op["tags"][0], []).append((path, method, op))
    order = ["images", "gallery", "training", "versions", "suggest", "predict", "state", "webpage", "ops", "openapi"]
    groups = dict(sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    toc = "".join(
        f"<li><b>{_e(group)}</b>: "
        + ", ".join(f'<a href="#{_e(op["operationId"])}">{method.upper()} {_e(path)}</a>' for path, method, op in ops)
        + "</li>"
        for group, ops in groups.items()
    )
    body = "".join(
        f"<h2>{_e(group)}</h2>" + "".join(_operation(path, method, op) for path, method, op in ops)
        for group, ops in groups.items()
    )
    info = schema["info"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(info['title'])} API</title><style>{DOCS_STYLE}</style></head>
<body><header><h1>{_e(info['title'])} API <small>{_e(info['version'])}</small></h1>
<p>{_text(info['description'])}</p><p><a href="/openapi.json">openapi.json</a> · <a href="/docs">interactive reference</a>
· <a href="/">web page</a></p></header>
<nav><ul>{toc}</ul></nav><main>{body}</main></body></html>"""


DOCS_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1em 1.5em;color:#222}
h1 small{font-size:.5em;color:#777}h2{border-bottom:2px solid #ddd;margin-top:2em;text-transform:capitalize}
.op{border:1px solid #e3e3e3;border-radius:6px;padding:.2em 1em;margin:1em 0}
.op h3{font-size:1.05em;margin:.6em 0 .2em}.summary{margin-top:0}
.m{display:inline-block;min-width:4.2em;text-align:center;border-radius:4px;color:#fff;font-size:.8em;padding:.1em .3em}
.get{background:#2b7bb9}.post{background:#3a9b4d}.delete{background:#c0392b}.put,.patch{background:#b9772b}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #e3e3e3;padding:.2em .5em;text-align:left;vertical-align:top}
code{background:#f4f4f4;padding:0 .2em;border-radius:3px}pre{background:#f4f4f4;padding:.5em;overflow:auto}
nav li{margin:.2em 0}nav a{margin-right:.3em}
"""
