"""HTTP/2 transport (RFC 9113) on the `h2` library: server and client connections that carry
the same `Request`/`Response`/`Body` as HTTP/1.1 through the same layer stacks.

This module stays free of `h2` itself: the HTTP/1.1 server imports it to recognise HTTP/2,
and `h2` loads only once a connection speaks it.
"""

from __future__ import annotations

from typing import Protocol

#: HTTP/2's connection preface (RFC 9113 §3.4): a client speaking h2c with prior knowledge.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Takeover(Protocol):
    """What a listener's connection passes on once HTTP/2 has its transport."""

    def check_timeouts(self, now: float) -> None: ...

    def drain(self) -> None: ...

    def abort(self, why: str) -> None: ...
