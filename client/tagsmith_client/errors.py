"""Errors the client raises: the server's status, code and message, as an exception."""

from __future__ import annotations

from typing import Any


class TagsmithError(Exception):
    """The server refused a request (or could not be reached: ``status`` 0, ``code`` "unreachable")."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message


class TaskFailed(TagsmithError):
    """A training task ended in failure; ``task`` is its last status."""

    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(200, "task_failed", str(task.get("error") or "The training failed."))
        self.task = task
