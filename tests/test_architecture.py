"""How the code is held together: imports go one way between layers, no module imports itself
round a cycle, the worker and the client stay free of what they do not need, and no endpoint
blocks the event loop."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.domain.services import Services
from shared.web.app import create_app
from shared.web.responses import JSONResponse
from shared.web.state import services_of
from tests.support.blocking import blocking_guard
from tests.support.servers import ROOT

PACKAGES = ("shared", "functions", "worker", "infra", "client/tagsmith_client")
# Layer -> the layers it may import (besides itself), lowest first. A module belongs to the
# longest layer prefix of its name.
ALLOWED: dict[str, set[str]] = {
    "shared": {"shared.core"},  # the package itself: it pins the BLAS kernels (shared/core/blas.py)
    "shared.core": set(),
    "shared.data": {"shared.core"},
    "shared.models": {"shared.core"},
    "shared.domain": {"shared.core", "shared.data", "shared.models"},
    "shared.web": {"shared.core", "shared.data", "shared.models", "shared.domain"},
    "worker": {"shared", "shared.core", "shared.data", "shared.models", "shared.domain"},
    "functions": {"shared", "shared.core", "shared.data", "shared.models", "shared.domain", "shared.web"},
    "infra": {"shared", "shared.core", "shared.data", "shared.models", "shared.domain", "shared.web", "functions", "worker",
              "tagsmith_client"},
    "tagsmith_client": set(),
}
OURS = ("shared", "functions", "worker", "infra", "tagsmith_client")


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        base = ROOT / package
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(base.parent).with_suffix("")
            name = ".".join(relative.parts).removesuffix(".__init__")
            found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of ours that ``path`` imports when it runs (not those for type checking only)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in modules}


def layer_of(module: str) -> str:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def test_imports_go_one_way_between_layers(graph: dict[str, set[str]]) -> None:
    wrong = [
        f"{module} ({layer_of(module)}) imports {imported} ({layer_of(imported)})"
        for module, imported_set in graph.items()
        for imported in sorted(imported_set)
        if layer_of(imported) != layer_of(module) and layer_of(imported) not in ALLOWED[layer_of(module)]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [imported] if imported in path else [module, imported])
            elif imported not in state:
                visit(imported, [*path, imported])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


@pytest.mark.parametrize(
    ("module", "absent"),
    [("worker.main", {"starlette", "uvicorn", "shared.web"}), ("tagsmith_client", {"torch", "numpy", "shared"})],
)
def test_a_process_imports_only_what_it_needs(module: str, absent: set[str]) -> None:
    code = f"import sys, {module}; print(sorted(name for name in {sorted(absent)!r} if name in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_guard_catches_a_blocking_call_on_the_event_loop(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the guard every test runs under (conftest) does: an ``async def`` endpoint that calls
    Redis directly is caught; the same call from a plain ``def`` endpoint (the threadpool) is not."""

    async def blocking(request: Request) -> JSONResponse:
        """Calls Redis on the event loop."""
        return JSONResponse({"tags": services_of(request).registry.tags()})

    def threaded(request: Request) -> JSONResponse:
        """Calls Redis in the threadpool."""
        return JSONResponse({"tags": services_of(request).registry.tags()})

    app = create_app([Route("/blocking", blocking), Route("/threaded", threaded)], services=services)
    with blocking_guard(monkeypatch) as violations, TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/threaded").status_code == 200 and not violations
        assert client.get("/blocking").status_code == 500
        assert len(violations) == 1 and "send_packed_command on the event loop" in violations[0]
