"""One error envelope and one table from error type to HTTP status.

Every error the server returns looks like
``{"error": {"message": str, "type": str, "code": int}}`` (vLLM's and OpenAI's shape);
``type`` is one of :class:`ErrorType` and decides the status through
:data:`STATUS_BY_TYPE`, the only place statuses are chosen. Error answers made by
other layers (Starlette's 405, FastAPI's body-parse 400, vLLM's own 400s) keep their
status and are rewritten into the envelope by :func:`normalized_error`.
"""

from __future__ import annotations

import enum
import json
import logging
from http import HTTPStatus
from typing import Any

log = logging.getLogger("lamina_server")


class ErrorType(enum.StrEnum):
    """Closed set of error kinds a client can see."""

    INVALID_REQUEST = "invalid_request_error"
    UNAUTHORIZED = "authentication_error"
    NOT_FOUND = "not_found_error"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    TOO_LARGE = "request_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    OVERLOADED = "overloaded_error"
    LOADING = "model_loading"
    DRAINING = "service_unavailable"
    ENGINE = "engine_error"


STATUS_BY_TYPE: dict[ErrorType, int] = {
    ErrorType.INVALID_REQUEST: 422,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.TOO_LARGE: 413,
    ErrorType.HEADERS_TOO_LARGE: 431,
    ErrorType.OVERLOADED: 429,
    ErrorType.LOADING: 503,
    ErrorType.DRAINING: 503,  # after LOADING: the type others' 503s are given
    ErrorType.ENGINE: 500,
}


class LaminaError(Exception):
    """An error meant for the client: a type (hence status) and a message."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        *,
        retry_after: int | None = None,
        allow: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retry_after = retry_after
        self.allow = allow  # the methods a route takes (a 405's Allow header)

    @property
    def status(self) -> int:
        return STATUS_BY_TYPE[self.error_type]

    def headers(self) -> dict[str, str]:
        out = {}
        if self.retry_after is not None:
            out["Retry-After"] = str(self.retry_after)
        if self.allow is not None:
            out["Allow"] = self.allow
        return out

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


def engine_failure(error: Exception) -> LaminaError:
    """What an unexpected exception while serving is answered with (a 500, never bad
    input: that is refused before), logged with its traceback. Call in an ``except``."""
    log.exception("engine error")
    return LaminaError(ErrorType.ENGINE, f"engine error: {error}")


def loading() -> LaminaError:
    """503 until the model is loaded and warm."""
    return LaminaError(ErrorType.LOADING, "model is still loading")


def draining() -> LaminaError:
    """503 once the server is shutting down (readiness fails first)."""
    return LaminaError(ErrorType.DRAINING, "draining: shutting down")


def invalid(message: str) -> LaminaError:
    return LaminaError(ErrorType.INVALID_REQUEST, message)


def too_large(message: str) -> LaminaError:
    return LaminaError(ErrorType.TOO_LARGE, message)


# Statuses chosen by others (Starlette, FastAPI, vLLM) map back to a type when one
# has that status; any other 4xx is a client error, any 5xx the engine's.
_TYPE_BY_STATUS = {status: t for t, status in STATUS_BY_TYPE.items()}


def envelope(status: int, message: str) -> dict[str, Any]:
    """The envelope of an answer whose status another layer chose (``code`` is that
    status, e.g. 400 or 405)."""
    default = ErrorType.INVALID_REQUEST if status < 500 else ErrorType.ENGINE
    error_type = _TYPE_BY_STATUS.get(status, default)
    return {"error": {"message": message, "type": error_type.value, "code": status}}


def _message_of(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    error, detail = body.get("error"), body.get("detail")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):  # FastAPI's validation errors
        parts = [
            f"{'.'.join(str(x) for x in d.get('loc', ())) or 'body'}: {d.get('msg')}"
            for d in detail[:5]
            if isinstance(d, dict)
        ]
        return "invalid request: " + "; ".join(parts)
    return None


def normalized_error(status: int, payload: bytes) -> bytes:
    """An error answer's body in the one envelope, keeping its message (Starlette's
    ``{"detail": ...}``, vLLM's envelope with ``param``, plain text)."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict) and set(body) == {"error"}:
        error = body["error"]
        if isinstance(error, dict) and set(error) == {"message", "type", "code"}:
            return payload  # ours already
    text = payload.decode("utf-8", "replace").strip()[:1000]
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    message = _message_of(body) or text or phrase or f"HTTP {status}"
    return json.dumps(envelope(status, message)).encode()
