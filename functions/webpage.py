"""The web page at ``/``: plain HTML, CSS and JavaScript served as static files, no build step."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from shared.web.app import create_app
from shared.web.routing import ApiRoute

STATIC = Path(__file__).resolve().parent / "static"


def index(request: Request) -> FileResponse:
    """The web page: upload images, mark examples, train, compare versions and try predictions.

    Its script and style sheet are under `/static/`; it calls only this API.
    ---
    response: {description: The page., content: html}
    """
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


routes = [
    ApiRoute("/", index, methods=["GET"]),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
app = create_app(routes)
