"""The one error type every layer raises; the HTTP layer turns it into JSON."""

from __future__ import annotations


class ApiError(Exception):
    """An error a client can act on: an HTTP status, a stable code and a message for a person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def as_json(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def too_large(code: str, message: str) -> ApiError:
    return ApiError(413, code, message)


def unavailable(code: str, message: str) -> ApiError:
    return ApiError(503, code, message)
