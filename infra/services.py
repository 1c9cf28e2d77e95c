"""The four services of the container topology, each a few function modules in one app.

    images    functions.images + gallery + webpage   (uploads, the gallery, the web page)
    training  functions.training + versions          (trainings, tags, versions, rollbacks)
    predict   functions.predict + suggest            (everything that runs the backbone)
    state     functions.state                        (state archives)

``uvicorn infra.services:images`` and so on, one per container; infra/nginx/routes.conf sends
each path to the service that serves it (tests/test_deploy_files.py checks that every route of
every function module is routed to a service that has it). Every functions/<name>.py still runs
alone as ``functions.<name>:app``.

Each app also has create_app's /health, /ready, /metrics, /openapi.json and /docs. The gateway
sends /openapi.json and /docs to the images service, so that one documents the whole API.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from functions import gallery, suggest, versions, webpage
from functions import images as images_function
from functions import predict as predict_function
from functions import state as state_function
from functions import training as training_function
from shared.web import openapi
from shared.web.app import create_app

GROUPS: dict[str, list[BaseRoute]] = {
    "images": [*images_function.routes, *gallery.routes, *webpage.routes],
    "training": [*training_function.routes, *versions.routes],
    "predict": [*predict_function.routes, *suggest.routes],
    "state": [*state_function.routes],
}

images = create_app(GROUPS["images"])
training = create_app(GROUPS["training"])
# Loads the backbone before it answers, as functions/predict.py does alone (suggest needs it too).
predict = create_app(GROUPS["predict"], backbone=True)
state = create_app(GROUPS["state"])

APPS: dict[str, Starlette] = {"images": images, "training": training, "predict": predict, "state": state}

# The images service's /openapi.json and /docs describe every service's routes, not only its own.
images.state.openapi = openapi.build_schema([*images.routes, *GROUPS["training"], *GROUPS["predict"], *GROUPS["state"]])
