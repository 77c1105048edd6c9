"""uvicorn's h11 protocol, with its own error answers in Lamina's envelope.

Each connection's requests are numbered (1 for the first), in the scope's
``extensions`` under :data:`CONNECTION_REQUESTS`: the middleware closes a keep-alive
connection after ``--max-requests-per-connection`` answers.

A request that h11 cannot parse (a malformed request line or header, an invalid
chunked body, a request line and headers over ``--max-header-bytes``) never reaches
the ASGI app: uvicorn answers it itself, as ``400`` in plain text. Here the same
answer is the JSON envelope, with the status h11 suggests (``431`` for headers too
large, ``400`` otherwise); the connection is closed after it, as before.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import envelope

TOO_LARGE_HEADERS = 431
CONNECTION_REQUESTS = "lamina.connection_requests"


class LaminaH11Protocol(H11Protocol):
    """:class:`H11Protocol` that numbers its connection's requests and whose
    malformed-request answers are JSON envelopes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests_seen = 0
        app = self.app

        async def numbered(scope: Scope, receive: Receive, send: Send) -> None:
            self.requests_seen += 1
            scope.setdefault("extensions", {})[CONNECTION_REQUESTS] = self.requests_seen
            await app(scope, receive, send)

        self.app = numbered

    def send_400_response(self, msg: str) -> None:
        # h11 refuses a head that outgrew its buffer with a 431 hint, and that is
        # the only state in which it holds more unparsed bytes than the limit.
        limit = self.config.h11_max_incomplete_event_size  # set by the server
        too_large = limit is not None and len(self.conn.trailing_data[0]) > limit
        status = TOO_LARGE_HEADERS if too_large else 400
        message = "request line and headers are too large" if too_large else msg
        body = json.dumps(envelope(status, message)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=status, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()
