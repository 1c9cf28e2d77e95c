"""What an app's lifespan hands its requests: the process's ``Services`` (``request.state.services``),
its exports of the current models (``request.state.exports``), the backups it may stream at once
(``request.state.backups``) and, in apps that run the backbone,
the batcher that shares it among requests (``request.state.batcher``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.types import Scope

from shared.core.settings import Settings

if TYPE_CHECKING:
    from shared.domain.services import Services
    from shared.web.batching import MicroBatcher
    from shared.web.exports import Exports
    from shared.web.streams import StreamSlots


def services_of(request: Request) -> Services:
    services: Services = request.state.services
    return services


def batcher_of(request: Request) -> MicroBatcher:
    batcher: MicroBatcher = request.state.batcher
    return batcher


def exports_of(request: Request) -> Exports:
    exports: Exports = request.state.exports
    return exports


def backups_of(request: Request) -> StreamSlots:
    """The backups this process may stream at once (``app.BACKUPS_AT_ONCE``)."""
    backups: StreamSlots = request.state.backups
    return backups


def settings_of(scope: Scope) -> Settings:
    """The settings of the app serving this request, for middleware that sees only the scope."""
    state: dict[str, Any] = scope.get("state") or {}
    if "services" not in state:
        raise RuntimeError("tagsmith apps need their lifespan to run (TestClient: use it as a context manager)")
    settings: Settings = state["services"].settings
    return settings
