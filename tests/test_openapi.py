"""The OpenAPI schema and the docs page describe exactly the routes the server has, with the key
schemes each needs, and real answers match the schemas it declares."""

from __future__ import annotations

import io
import re
import tarfile
from typing import Any
from urllib.parse import quote

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route
from starlette.testclient import TestClient

from functions import gallery, images, predict, state, suggest, training, versions, webpage
from infra.gateway import app, create_gateway
from shared.domain.services import Services
from shared.web.auth import is_public
from shared.web.openapi import build_schema
from tests.support.api import add, run_queued_jobs, teach_cat
from tests.support.photos import CAT, OTHERS, crops

DOCUMENT = "urn:tagsmith:openapi"
JSON = "application/json"


def operations(routes: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    """(method, path) of every route, with converters dropped as OpenAPI writes paths."""
    found = set()
    for route in routes:
        if isinstance(route, Route):
            path = re.sub(r":\w+}", "}", route.path)
            found |= {(m.lower(), path) for m in route.methods or () if m != "HEAD"}
    return found


def documented(schema: dict) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(method, path) for path, ops in schema["paths"].items() for method in ops}


def test_schema_matches_the_routes_and_documents_each(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert documented(schema) == operations(app.routes)
    assert {("get", "/openapi.json"), ("get", "/docs"), ("get", "/metrics"), ("get", "/ready"),
            ("post", "/custom/add_many"), ("get", "/custom/suggest/{tag}")} <= documented(schema)
    ids = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            ids.append(op["operationId"])
            assert op["summary"].endswith("."), (method, path)
            assert any(code.startswith("2") for code in op["responses"]), (method, path)
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if method == "post" and path in ("/custom/add", "/predict", "/set_state"):
                assert "data" in op["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("module", [images, gallery, training, versions, suggest, predict, state, webpage])
def test_each_function_serves_its_own_schema(module, services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Run alone (as uvicorn runs it in a container), a function reads its settings from the environment.
    for name, value in services.settings.as_env().items():
        monkeypatch.setenv(name, value)
    with TestClient(module.app) as standalone:
        schema = standalone.get("/openapi.json").json()
    assert documented(schema) == operations(module.app.routes)
    assert operations(module.routes) <= documented(schema)


def test_docs_page_is_self_contained_and_lists_every_operation(client: TestClient) -> None:
    response = client.get("/docs?view=plain")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    schema = client.get("/openapi.json").json()
    for path, ops in schema["paths"].items():
        assert f"<code>{path}</code>" in page
        for op in ops.values():
            assert f'id="{op["operationId"]}"' in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "<code>image_id</code>" in page and "multipart/form-data" in page


def test_a_repeatable_query_parameter_is_an_array(client: TestClient) -> None:
    """/export/onnx takes every `tag` given (`?tag=a&tag=b`); a schema of one string made clients
    generated from it send one tag at most."""
    schema = client.get("/openapi.json").json()
    (tag,) = [p for p in schema["paths"]["/export/onnx"]["get"]["parameters"] if p["name"] == "tag"]
    assert tag["schema"] == {"type": "array", "items": {"type": "string"}}
    assert tag.get("explode", True) and tag.get("style", "form") == "form"


# --- schemas of the answers ----------------------------------------------------------------

def validator(document: dict[str, Any], path: str, method: str, status: str, media: str = JSON) -> Draft202012Validator:
    """A validator of the body ``method path`` answers with ``status``, resolving the document's
    ``#/components/...`` references as an OpenAPI 3.1 client does."""
    registry: Registry[Any] = Registry().with_resource(DOCUMENT, Resource.from_contents(document, DRAFT202012))
    parts = ["paths", path, method, "responses", status, "content", media, "schema"]
    pointer = "/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)
    return Draft202012Validator({"$ref": f"{DOCUMENT}#{quote(pointer)}"}, registry=registry)


def json_responses(document: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(path, method, status, content) of every JSON response the document declares."""
    return [(path, method, status, response["content"][JSON])
            for path, operations in document["paths"].items() for method, op in operations.items()
            for status, response in op["responses"].items() if JSON in response["content"]]


def test_every_json_answer_has_a_typed_schema_and_its_example_matches() -> None:
    document = build_schema(create_gateway().routes)
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    checked = 0
    for path, method, status, content in json_responses(document):
        assert content["schema"] != {"type": "object"}, f"{method} {path}: declare its schema (response: schema)"
        Draft202012Validator.check_schema(content["schema"])
        if status.startswith(("4", "5")):
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}, (method, path, status)
        if "example" in content:
            errors = [e.message for e in validator(document, path, method, status).iter_errors(content["example"])]
            assert not errors, f"{method} {path}: its example does not match its schema: {errors}"
            checked += 1
    assert checked >= 25
    # Maps keyed by tag say what each value is, not just "an object".
    custom = document["components"]["schemas"]["CustomScores"]
    assert custom["additionalProperties"] == {"$ref": "#/components/schemas/CustomScore"}
    prediction = document["paths"]["/predict"]["post"]["responses"]["200"]["content"][JSON]["schema"]
    assert prediction == {"$ref": "#/components/schemas/Prediction"}
    example = document["paths"]["/predict"]["post"]["responses"]["200"]["content"][JSON]["example"]
    wrong = {**example, "custom": {"cat": {**example["custom"]["cat"], "score": "high"}}}
    assert [e.message for e in validator(document, "/predict", "post", "200").iter_errors(wrong)] == [
        "'high' is not of type 'number'"]


def test_every_route_that_needs_a_key_declares_both_key_schemes() -> None:
    document = build_schema(create_gateway().routes)
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["Bearer"] == {**schemes["Bearer"], "type": "http", "scheme": "bearer"}
    assert "TAGSMITH_API_KEYS" in schemes["ApiKey"]["description"]  # only enforced when configured
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            if is_public(path):
                assert op["security"] == [] and "401" not in op["responses"], (method, path)
            else:
                assert op["security"] == [{"ApiKey": []}, {"Bearer": []}], (method, path)
                assert "401" in op["responses"], (method, path)
    assert {path for path in document["paths"] if is_public(path)} == {"/", "/health", "/ready"}


def _state_archive(client: TestClient) -> bytes:
    response = client.get("/get_state?tag=cat")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        assert "manifest.json" in tar.getnames()
    return response.content


def test_real_answers_match_the_declared_schemas(client: TestClient, services: Services) -> None:
    """Every GET route that answers JSON, and the JSON writes, with real data: a trained tag, an
    embedded and scored library, a finished task. Each body must match the schema the route
    declares (the schemathesis test checks the same on generated requests, mostly errors)."""
    status = teach_cat(client, services, positives=4, negatives_each=1)
    assert status["status"] == "finished"
    image_ids = [add(client, data) for data in crops(CAT, 2, seed=41)] + [add(client, crops(OTHERS[0], 1, seed=41)[0])]
    run_queued_jobs(services)  # the library: embedded into packs and scored
    document = client.get("/openapi.json").json()
    photo = crops(CAT, 1, seed=42)[0]
    upload = {"data": ("photo.jpg", photo, "image/jpeg")}
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("get", "/health", "/health", {}),
        ("get", "/ready", "/ready", {}),
        ("get", "/openapi.json", "/openapi.json", {}),
        ("get", "/custom/images", "/custom/images", {}),
        ("get", "/custom/images", "/custom/images?tag=cat&limit=2", {}),
        ("get", "/custom/images", "/custom/images?tag=cat&match=true&label=none&sort=date&order=asc", {}),
        ("get", "/custom/images", "/custom/images?all=cat&filename=photo&limit=1", {}),
        ("get", "/custom/images/{image_id}", f"/custom/images/{image_ids[0]}", {}),
        ("get", "/custom/images/{image_id}", "/custom/images/cat-0", {}),
        ("get", "/custom/images/{image_id}/similar", f"/custom/images/{image_ids[0]}/similar?limit=3", {}),
        ("get", "/custom/library", "/custom/library", {}),
        ("get", "/custom/tags", "/custom/tags", {}),
        ("get", "/custom/tags/{tag}", "/custom/tags/cat", {}),
        ("get", "/custom/versions/{tag}", "/custom/versions/cat", {}),
        ("get", "/custom/suggest/{tag}", "/custom/suggest/cat?limit=3", {}),
        ("get", "/custom/predict/{image_id}", f"/custom/predict/{image_ids[0]}", {}),
        ("get", "/custom/predict/{tag}/{image_id}", f"/custom/predict/cat/{image_ids[0]}", {}),
        ("get", "/status/{task_id}", f"/status/{status['task_id']}", {}),
        ("post", "/predict", "/predict", {"files": upload}),
        ("post", "/predict/custom", "/predict/custom", {"files": upload}),
        ("post", "/predict/custom/{tag}", "/predict/custom/cat", {"files": upload}),
        ("post", "/custom/add", "/custom/add", {"files": upload}),
        ("post", "/custom/add", "/custom/add", {"files": upload}),  # a duplicate
        ("post", "/custom/add_many", "/custom/add_many?tag=cat&type=positive",
         {"files": [("data", ("a.jpg", crops(CAT, 1, seed=43)[0], "image/jpeg")), ("data", ("notes.txt", b"hi", "text/plain"))]}),
        ("get", "/custom/assign/{image_id}/{type}/{tag}", f"/custom/assign/{image_ids[2]}/negative/cat", {}),
        ("get", "/custom/unassign/{image_id}/{tag}", f"/custom/unassign/{image_ids[2]}/cat", {}),
        ("get", "/custom/unassign/{image_id}/{tag}", f"/custom/unassign/{image_ids[2]}/cat", {}),  # removed: null
        ("post", "/set_state", "/set_state", {"files": {"data": ("state.tar", _state_archive(client))}}),
        ("get", "/custom/rollback/{tag}/{version}", "/custom/rollback/cat/1", {}),
        ("get", "/custom/train/{tag}", "/custom/train/cat", {}),
        ("get", "/status/{task_id}", "/status/{queued}", {}),  # the task just queued, not run
        ("get", "/custom/tags/{tag}", "/custom/tags/no-such-tag", {}),  # an error answer
        ("delete", "/custom/images/{image_id}", f"/custom/images/{image_ids[1]}", {}),
        ("get", "/custom/delete/{tag}", "/custom/delete/cat", {}),
        ("get", "/custom/tags", "/custom/tags", {}),  # a tag without a model
    ]
    queued = ""
    seen = set()
    for method, template, url, kwargs in calls:
        response = client.request(method.upper(), url.replace("{queued}", queued), **kwargs)
        code = str(response.status_code)
        assert code in document["paths"][template][method]["responses"], (method, url, code, response.text)
        assert response.headers["content-type"].startswith(JSON), (method, url)
        body = response.json()
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator(document, template, method, code).iter_errors(body)]
        assert not errors, f"{method.upper()} {url} ({code}) does not match its schema: {errors[:5]}\n{body}"
        if template == "/custom/train/{tag}":
            queued = body["task_id"]
        seen.add((method, template))
    # Every GET route that answers JSON was called with real data (a new one must be added above).
    json_gets = {(m, path) for path, m, code, _ in json_responses(document) if m == "get" and code.startswith("2")}
    assert json_gets - seen == set()
