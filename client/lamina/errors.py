"""Typed errors: one class per thing a caller does differently.

The server answers errors as ``{"error": {"message": str, "type": str, "code": int}}``;
:func:`from_response` turns such an answer (or any other body) into the class for its
status. ``str(error)`` is the server's message plus what to change.
"""

from __future__ import annotations

import json


class LaminaError(Exception):
    """Base class. ``status`` is the HTTP status (None when no answer came back),
    ``type`` the server's error type, ``message`` the server's own words."""

    hint = "see the server's logs"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,  # the envelope's field name
        retry_after: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.retry_after = retry_after
        self.attempts = 1
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        where = f"HTTP {self.status}: " if self.status is not None else ""
        tries = f" (gave up after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{where}{self.message}{tries}; {self.hint}"


class BadRequest(LaminaError):
    """400/422: the request is invalid; retrying it will not help."""

    hint = "fix the request as the message says (layers, pooling, dtype, prompts)"


class Unauthorized(LaminaError):
    """401: missing or wrong API key."""

    hint = "pass the server's API key (api_key=..., or LAMINA_API_KEY for the CLI)"


class NotFound(LaminaError):
    """404: wrong URL or path, or (from ``for_deployment``) no such LLMDeployment."""

    hint = "check the URL: it is the server's base URL, e.g. http://host:8000, without /v1"


class TooLarge(LaminaError):
    """413: the request is over the server's limits even for a single prompt."""

    hint = (
        "send shorter prompts, fewer layers, a pooled answer (pooling 'last' or 'mean') "
        "or dtype float16, or raise the server's limits"
    )


class Overloaded(LaminaError):
    """429: the server's queue is full (retried automatically before this is raised)."""

    hint = "retry later, raise max_retries/retry_deadline, or add replicas"


class Unavailable(LaminaError):
    """503: the model is loading or the server is draining (retried before raised)."""

    hint = "wait for the server to be ready (GET /health) or raise retry_deadline"


class ServerError(LaminaError):
    """Any other 5xx: the server failed; its logs say why."""


class ConnectionFailed(LaminaError):
    """No HTTP answer: connection refused, reset or timed out, or kubectl failed."""

    hint = "check the URL (or the port-forward) and that the server is running"

    def __init__(self, message: str, *, retryable: bool = False, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable


_BY_STATUS: dict[int, type[LaminaError]] = {
    400: BadRequest,
    422: BadRequest,
    401: Unauthorized,
    404: NotFound,
    413: TooLarge,
    429: Overloaded,
    503: Unavailable,
}


def error_class(status: int) -> type[LaminaError]:
    """The class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return BadRequest if 400 <= status < 500 else LaminaError


def from_response(status: int, body: bytes, retry_after: str | None = None) -> LaminaError:
    """The typed error for an error answer: the envelope's message and type when the
    body has that shape, else the raw text (a proxy's HTML page, say)."""
    message, kind = _envelope(body)
    if message is None:
        text = body.decode("utf-8", "replace").strip()
        message = text[:500] if text else "(empty body)"
    return error_class(status)(message, status=status, type=kind, retry_after=retry_after)


def _envelope(body: bytes) -> tuple[str | None, str | None]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None, None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return None, None
    kind = error.get("type")
    return error["message"], kind if isinstance(kind, str) else None
