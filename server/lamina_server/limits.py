"""Request size budgets and admission control (pure).

* Size: an answer holds ``rows x layers x hidden x bytes-per-value`` values, where
  ``rows`` is the number of tokens for ``pooling=all`` and the number of prompts
  otherwise. It is checked before any work is done (413 when over budget).
* Body: read whole (it is buffered anyway) up to a byte limit, then scanned without
  parsing (:func:`json_problem`) for the number of values, nesting depth, over-long
  arrays and integers outside int64, so no parser (ours, pydantic's, vLLM's) builds a
  huge or deep object, holds the event loop for long, recurses to a
  ``RecursionError`` or hands the engine an integer it cannot serialise.
* Admission: at most ``max_queue_length`` requests in flight on the engine routes;
  beyond that 429 with ``Retry-After``. During a drain requests are still admitted:
  the endpoint is already gone from the Service, so only clients holding a keep-alive
  connection to this pod still send; they are answered, with ``Connection: close`` so
  their next request goes to another pod (a 503 would fail them for nothing).
"""

from __future__ import annotations

import asyncio
import re

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
        self.draining = True

    async def wait_idle(self, seconds: float) -> bool:
        """Wait until nothing is in flight; False when ``seconds`` passed first."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


class ParseLane:
    """Bodies big enough to take a while to parse are handed to the app one at a time.

    A parser holds the event loop (and the GIL) for the whole document, in our routes
    and in vLLM's alike, in the same step as the body is received. Health probes wait
    behind every such step that is ready: eight of them at once add up to hundreds of
    milliseconds. Through the lane, each big body's step runs alone in its loop
    iteration: the lane is released with ``call_soon``, which runs after that step,
    once the loop has polled its sockets again; a probe then waits behind one parse
    at most."""

    def __init__(self, min_bytes: int) -> None:
        self.min_bytes = min_bytes
        self._lock = asyncio.Lock()

    async def enter(self, body: bytes) -> None:
        """Wait for the lane if ``body`` is big; the caller parses it in the same step."""
        if len(body) < self.min_bytes:
            return
        await self._lock.acquire()
        asyncio.get_running_loop().call_soon(self._lock.release)


INT64 = range(-(2**63), 2**63)
# What the scan stops at: a string's opening quote, brackets, separators, and integers
# of 19+ digits (not a fraction's or an exponent's digits); the rest is skipped in C.
_TOKENS = re.compile(rb'["\[\]{},:]|(?<![\d.eE+-])-?\d{19,}(?![\d.eE])')
_QUOTE, _BACKSLASH, _COMMA, _OPEN_ARRAY = b'"\\,['


def _after_string(body: bytes, i: int) -> int:
    """Where the string whose text starts at ``i`` ends (past its closing quote), found
    with ``bytes.find`` at memchr speed; ``len(body)`` if it is not terminated."""
    while (j := body.find(b'"', i)) >= 0:
        if body[j - 1] != _BACKSLASH:
            return j + 1
        text = body[i:j]  # is this quote escaped? only an odd run of backslashes does
        if (len(text) - len(text.rstrip(b"\\"))) % 2 == 0:
            return j + 1
        i = j + 1
    return len(body)


def json_problem(
    body: bytes, max_depth: int, max_array_items: int, max_values: int
) -> LaminaError | None:
    """What makes ``body`` too costly (413) or unsafe (422) to parse, or None.
    Malformed JSON is left to the parser (any answer it gives is a 4xx).

    Parsers hold the GIL for a whole document (orjson, json and pydantic alike), so
    the event loop stays free only if costly documents are refused before parsing: the
    number of values (each one starts the document or follows ``[ { , :``, so keys
    count and an empty array or object counts twice) bounds parse time and memory
    whatever the shape. The scan stops at the first problem and is a Python loop over
    a few tokens per value, never one long C call: in a thread, the event loop runs."""
    values = 1
    strings = 0
    items: list[int] = []  # per open container: items so far (-1: an object)
    pos = 0
    while (m := _TOKENS.search(body, pos)) is not None:
        first = body[m.start()]
        pos = m.end()
        if first == _QUOTE:
            strings += 1  # each string is a value too (a guard for bodies with no commas)
            if strings > max_values:
                return too_large(f"the body holds more than {max_values} JSON values")
            pos = _after_string(body, pos)
        elif first in b"[{,:":
            values += 1
            if values > max_values:
                return too_large(f"the body holds more than {max_values} JSON values")
            if first in b"[{":
                items.append(1 if first == _OPEN_ARRAY else -1)
                if len(items) > max_depth:
                    return too_large(f"JSON nested deeper than {max_depth} levels")
            elif first == _COMMA and items and items[-1] >= 0:
                items[-1] += 1
                if items[-1] > max_array_items:
                    return too_large(f"a JSON array holds more than {max_array_items} items")
        elif first in b"]}":
            if items:
                items.pop()
        elif int(m.group()) not in INT64:
            return invalid(f"integer {m.group()[:24].decode()}... is outside the 64-bit range")
    return None
