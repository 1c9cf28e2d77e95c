"""The Python gateway: every function's routes in one app on one port (the embedded default).

In containers, nginx with ``infra/nginx/routes.conf`` routes the same paths to one service per
function; this app is also the API image's default command, for containers without nginx.
"""

from __future__ import annotations

from functions import gallery, images, predict, state, suggest, training, versions, webpage
from shared.http import create_app

app = create_app(
    [
        *images.routes,
        *gallery.routes,
        *training.routes,
        *versions.routes,
        *suggest.routes,
        *predict.routes,
        *state.routes,
        *webpage.routes,
    ],
    # The backbone loads before the gateway answers, as in the production predict service.
    lifespan=predict.preload_backbone,
)
