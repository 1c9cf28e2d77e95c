"""The OpenAPI schema and the docs page describe exactly the routes the server has."""

from __future__ import annotations

import re

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from functions import gallery, images, predict, state, suggest, training, versions, webpage
from infra.gateway import app


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
    response = client.get("/docs")
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
