"""The Python gateway: every function's routes in one app on one port (the embedded default).

In containers, nginx with ``infra/nginx/routes.conf`` routes the same paths to one service per
function; this app is also the API image's default command, for containers without nginx
(``uvicorn infra.gateway:app``, settings from the environment).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from functions import gallery, images, predict, state, suggest, training, versions, webpage
from shared.core.settings import Settings
from shared.domain.services import Services
from shared.web.app import create_app

ROUTES: list[BaseRoute] = [
    *images.routes,
    *gallery.routes,
    *training.routes,
    *versions.routes,
    *suggest.routes,
    *predict.routes,
    *state.routes,
    *webpage.routes,
]


def create_gateway(settings: Settings | None = None, services: Services | None = None) -> Starlette:
    """Every function in one app; the backbone loads before it answers, as in the predict service."""
    return create_app(ROUTES, settings=settings, services=services, backbone=True)


app = create_gateway()
