"""Domain errors: what went wrong, in words a client can act on, without any HTTP.

Every layer raises these; the web layer maps each kind to its status code in one place
(``shared.web.errors``). ``code`` is stable and machine-readable, ``message`` is for a person.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors a request can end in: a stable code and a message for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidInput(DomainError):
    """The request asks for something malformed or impossible (a bad tag, too few examples)."""


class NotFound(DomainError):
    """An image, tag, version or task that does not exist."""


class Conflict(DomainError):
    """The request clashes with what exists (an image id taken, the most tags reached)."""


class TooLarge(DomainError):
    """An upload, image or archive over a configured limit."""


class Unsupported(DomainError):
    """Bytes that are not an image, or an image format tagsmith does not read."""


class Unavailable(DomainError):
    """A backend (Redis, the object store) cannot be reached right now."""


class Damaged(DomainError):
    """Something this server stored cannot be read back (damaged in the store): not the request's fault."""
