"""Operations endpoints every app serves: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.web import metrics
from shared.web.errors import error_response
from shared.web.responses import JSONResponse
from shared.web.state import services_of

log = logging.getLogger("tagsmith")


async def health(request: Request) -> JSONResponse:
    """Liveness: the process answers.

    Touches no backend, so an orchestrator restarts only a process that is truly stuck.
    ---
    response: {description: 'Always `{"status": "ok"}`.', example: {status: ok}, schema: Health}
    """
    return JSONResponse({"status": "ok"})


def ready(request: Request) -> JSONResponse:
    """Readiness: Redis and the object store both answer.

    A load balancer should send traffic only to instances that are ready.
    ---
    response:
      description: Both backends answered.
      example: {status: ready, checks: {redis: ok, store: ok}}
      schema: Ready
    errors: [503]
    """
    services = services_of(request)
    down = []
    for name, ping in (("Redis", services.redis.ping), ("the object store", services.store.ping)):
        try:
            ping()
        except Exception as exc:  # the details (addresses, paths) go to the log, not to whoever asks
            log.warning("not ready: %s is unavailable: %s", name, str(exc) or type(exc).__name__)
            down.append(name)
    if down:
        verb = "is" if len(down) == 1 else "are"
        return error_response(503, "not_ready", f"Not ready: {' and '.join(down)} {verb} unavailable (the server's "
                              "log says why).")
    return JSONResponse({"status": "ready", "checks": {"redis": "ok", "store": "ok"}})


def prometheus(request: Request) -> Response:
    """Prometheus metrics in the text exposition format.

    HTTP requests and latency by route template (`tagsmith_http_requests_total`,
    `tagsmith_http_request_duration_seconds`), queue depth (`tagsmith_queue_depth`), current
    models (`tagsmith_models`), stored images (`tagsmith_images`), trainings by outcome
    (`tagsmith_trainings_total`) and their durations (`tagsmith_training_duration_seconds`).
    ---
    response: {description: Metrics, content: text}
    """
    return Response(metrics.render(services_of(request)), media_type=metrics.CONTENT_TYPE)


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/metrics", prometheus, methods=["GET"]),
]
