"""One error envelope and one table from error type to HTTP status.

Every error the server returns looks like
``{"error": {"message": str, "type": str, "code": int}}`` (vLLM's and OpenAI's shape);
``type`` is one of :class:`ErrorType` and decides the status through
:data:`STATUS_BY_TYPE`, the only place statuses are chosen.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorType(enum.StrEnum):
    """Closed set of error kinds a client can see."""

    INVALID_REQUEST = "invalid_request_error"
    UNAUTHORIZED = "authentication_error"
    NOT_FOUND = "not_found_error"
    TOO_LARGE = "request_too_large"
    OVERLOADED = "overloaded_error"
    DRAINING = "service_unavailable"
    ENGINE = "engine_error"


STATUS_BY_TYPE: dict[ErrorType, int] = {
    ErrorType.INVALID_REQUEST: 422,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.NOT_FOUND: 404,
    ErrorType.TOO_LARGE: 413,
    ErrorType.OVERLOADED: 429,
    ErrorType.DRAINING: 503,
    ErrorType.ENGINE: 500,
}


class LaminaError(Exception):
    """An error meant for the client: a type (hence status) and a message."""

    def __init__(
        self, error_type: ErrorType, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return STATUS_BY_TYPE[self.error_type]

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def body(self) -> dict[str, Any]:
        return error_body(self.error_type, self.message)


def error_body(error_type: ErrorType, message: str) -> dict[str, Any]:
    """The envelope for ``error_type`` with ``message``."""
    return {
        "error": {
            "message": message,
            "type": error_type.value,
            "code": STATUS_BY_TYPE[error_type],
        }
    }


def invalid(message: str) -> LaminaError:
    return LaminaError(ErrorType.INVALID_REQUEST, message)


def too_large(message: str) -> LaminaError:
    return LaminaError(ErrorType.TOO_LARGE, message)
