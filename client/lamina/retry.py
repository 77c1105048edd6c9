"""When to try a request again, and after how long (pure).

Only answers that say "not now" are retried: 429 (queue full), 503 (loading or
draining) and connections that never reached the server. The server's
``Retry-After`` is honoured as given; without one the wait grows exponentially with
jitter, so many clients turned away together do not come back together.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass

from .errors import ConnectionFailed, LaminaError, Overloaded, Unavailable


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # attempts after the first
    deadline: float = 120.0  # seconds from the first attempt; no wait may end past it
    base_delay: float = 0.5
    max_delay: float = 30.0


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date;
    ``now`` is the wall clock, epoch seconds); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def backoff(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Wait after failed attempt number ``attempt`` (1-based): exponential, capped,
    with half of it random (``rand`` in [0, 1))."""
    full = min(policy.max_delay, policy.base_delay * 2.0 ** (attempt - 1))
    return full / 2 + full / 2 * rand


def retryable(error: LaminaError) -> bool:
    if isinstance(error, ConnectionFailed):
        return error.retryable
    return isinstance(error, Overloaded | Unavailable)


def next_delay(
    error: LaminaError,
    attempt: int,
    elapsed: float,
    policy: RetryPolicy,
    *,
    rand: float,
    now: float,
) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or None to give up and raise
    ``error``. ``elapsed`` counts from the first attempt; ``now`` is the wall clock."""
    if not retryable(error) or attempt > policy.max_retries:
        return None
    delay = retry_after_seconds(error.retry_after, now)
    if delay is None:
        delay = backoff(attempt, policy, rand)
    if elapsed + delay > policy.deadline:
        return None
    return delay
