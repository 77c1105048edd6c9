"""uvicorn's h11 protocol, with its own error answers in Lamina's envelope.

A request that h11 cannot parse (a malformed request line or header, an invalid
chunked body, a request line and headers over ``--max-header-bytes``) never reaches
the ASGI app: uvicorn answers it itself, as ``400`` in plain text. Here the same
answer is the JSON envelope, with the status h11 suggests (``431`` for headers too
large, ``400`` otherwise); the connection is closed after it, as before.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import envelope

TOO_LARGE_HEADERS = 431


class LaminaH11Protocol(H11Protocol):
    """:class:`H11Protocol` whose malformed-request answers are JSON envelopes."""

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
