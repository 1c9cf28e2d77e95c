"""Operations endpoints every app serves: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.web import metrics
from shared.web.errors import error_response
from shared.web.responses import JSONResponse
from shared.web.state import services_of


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
    failures: dict[str, str] = {}
    try:
        services.redis.ping()
    except Exception as exc:
        failures["Redis"] = str(exc) or type(exc).__name__
    try:
        services.store.ping()
    except Exception as exc:
        failures["the object store"] = str(exc) or type(exc).__name__
    if failures:
        return _not_ready(failures)
    return JSONResponse({"status": "ready", "checks": {"redis": "ok", "store": "ok"}})


def _not_ready(failures: dict[str, str]) -> JSONResponse:
    reasons = "; ".join(f"{name} is unavailable ({why})" for name, why in failures.items())
    return error_response(503, "not_ready", f"Not ready: {reasons}.")


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
