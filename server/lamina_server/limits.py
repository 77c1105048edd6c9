"""Request size budgets and admission control (pure).

* Size: an answer holds ``rows x layers x hidden x bytes-per-value`` values, where
  ``rows`` is the number of tokens for ``pooling=all`` and the number of prompts
  otherwise. It is checked before any work is done (413 when over budget).
* Body: read whole (it is buffered anyway) up to a byte limit, then scanned without
  parsing (:func:`json_problem`) for nesting depth, over-long numeric arrays and
  integers outside int64, so no parser (ours, pydantic's, vLLM's) builds a huge or
  deep object, recurses to a ``RecursionError`` or hands the engine an integer it
  cannot serialise.
* Admission: at most ``max_queue_length`` requests in flight on the engine routes;
  beyond that 429 with ``Retry-After``. During a drain requests are still admitted:
  the endpoint is already gone from the Service, so only clients holding a keep-alive
  connection to this pod still send; they are answered, with ``Connection: close`` so
  their next request goes to another pod (a 503 would fail them for nothing).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time

from .config import Pooling
from .encoding import BYTES_PER_VALUE, DType
from .errors import ErrorType, LaminaError, invalid, too_large


def response_bytes(
    *,
    total_tokens: int,
    num_prompts: int,
    num_layers: int,
    hidden_size: int,
    dtype: DType,
    pooling: Pooling,
) -> int:
    """Raw size of the hidden states an answer will carry."""
    rows = total_tokens if pooling == "all" else num_prompts
    return rows * num_layers * hidden_size * BYTES_PER_VALUE[dtype]


class Admission:
    """Counts requests in flight; refuses work when full."""

    def __init__(self, max_in_flight: int, retry_after_seconds: int = 1) -> None:
        self.max_in_flight = max_in_flight
        self.retry_after_seconds = retry_after_seconds
        self.in_flight = 0
        self.draining = False
        self.drain_started: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def admit(self) -> None:
        """Take a slot or raise (429 full)."""
        if self.in_flight >= self.max_in_flight:
            raise LaminaError(
                ErrorType.OVERLOADED,
                f"too many requests in flight ({self.in_flight}, limit "
                f"{self.max_in_flight}); retry later",
                retry_after=self.retry_after_seconds,
            )
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.in_flight == 0:
            self._idle.set()

    def start_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until nothing is in flight; False when ``seconds`` passed first."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


INT64 = range(-(2**63), 2**63)
# Possessive: a failed long-array match never backtracks into the numbers (5x faster).
_NUMBER = rb"-?+\d++(?:\.\d++)?+(?:[eE][+-]?+\d++)?+"


@functools.lru_cache(maxsize=4)
def _json_tokens(max_array_items: int) -> re.Pattern[bytes]:
    return re.compile(
        # an array with more than max_array_items numbers (only tried at "[": linear)
        rb"(?P<long>\[\s*+(?:"
        + _NUMBER
        + rb"\s*+,\s*+){%d})" % max_array_items
        # strings, skipped whole (brackets and digits inside them do not count)
        + rb'|"[^"\\]*(?:\\.[^"\\]*)*"'
        + rb"|[\[{]|[\]}]"
        # integers of 19+ digits (not a fraction's or an exponent's digits)
        + rb"|(?<![\d.eE+-])-?\d{19,}(?![\d.eE])"
    )


def json_problem(body: bytes, max_depth: int, max_array_items: int) -> LaminaError | None:
    """What makes ``body`` too costly (413) or unsafe (422) to parse, or None.
    Malformed JSON is left to the parser (any answer it gives is a 4xx)."""
    depth = 0
    for m in _json_tokens(max_array_items).finditer(body):
        token = m.group()
        first = token[:1]
        if m.lastgroup == "long":
            return too_large(f"an array holds more than {max_array_items} numbers")
        if first == b'"':
            continue
        if first in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return too_large(f"JSON nested deeper than {max_depth} levels")
        elif first in (b"]", b"}"):
            depth -= 1
        elif int(token) not in INT64:
            return invalid(f"integer {token[:24].decode()}... is outside the 64-bit range")
    return None
