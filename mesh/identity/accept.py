"""Inbound TLS handshakes that refuse a caller properly: it gets the alert, the log says why.

asyncio's and uvloop's TLS transports close the socket at once when a handshake fails, so
the alert OpenSSL queued ("unknown ca", "certificate expired", "certificate required")
never leaves, the caller sees a bare EOF, and nothing is logged (an SSLError is an OSError,
which they report only in debug mode). The listener therefore accepts plain TCP and starts
the loop's own TLS protocol itself; the TLS objects it creates are of a class that, when
the handshake fails, writes the queued alert to the socket and logs the refusal once, with
the peer's address and the reason, rate-limited. The data path after the handshake is the
loop's unchanged TLS transport.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mesh.identity.accept")

#: The connection whose TLS object is being created right now (wrap_bio runs synchronously
#: inside the TLS protocol's connection_made, which TlsAcceptor calls).
_accepting: tuple[asyncio.BaseTransport, str, RefusalLog] | None = None


class RefusalLog:
    """Refused handshakes of one listener: counted, and logged at most `burst` times per
    `window` for each reason (a flood of one kind cannot hide another)."""

    def __init__(self, listener: str, burst: int = 10, window: float = 10.0) -> None:
        self.listener = listener
        self.burst = burst
        self.window = window
        self.refused = 0
        #: reason -> [window start, lines logged in it, refusals not logged since]
        self._reasons: dict[str, list[float]] = {}

    def record(self, peer: str, exc: ssl.SSLError) -> None:
        self.refused += 1
        reason = describe(exc)
        now = time.monotonic()
        state = self._reasons.get(reason)
        if state is None or now - state[0] >= self.window:
            if len(self._reasons) >= 256:
                self._reasons.clear()  # bounded memory; the worst case is a few extra lines
            state = self._reasons[reason] = [now, 0, state[2] if state else 0]
        if state[1] >= self.burst:
            state[2] += 1
            return
        state[1] += 1
        more = f" ({state[2]:.0f} more like it not logged)" if state[2] else ""
        state[2] = 0
        log.warning("%s: refused a TLS handshake from %s: %s%s", self.listener, peer, reason, more)


def describe(exc: ssl.SSLError) -> str:
    """The reason in words: 'certificate verify failed: certificate has expired'."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    reason = exc.reason or str(exc)
    return reason.lower().replace("_", " ")


class RefusingSSLObject(ssl.SSLObject):
    """An SSLObject that, when its handshake fails, sends the alert before the loop closes."""

    _outgoing: ssl.MemoryBIO
    _connection: tuple[asyncio.BaseTransport, str, RefusalLog] | None

    @classmethod
    def _create(
        cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any
    ) -> RefusingSSLObject:
        obj: RefusingSSLObject = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        obj._outgoing = outgoing
        obj._connection = _accepting
        return obj

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            connection, self._connection = self._connection, None
            if connection is not None:
                transport, peer, refusals = connection
                alert = self._outgoing.read()
                if alert and not transport.is_closing():
                    # Written now: the loop's TLS protocol closes the socket right after.
                    transport.write(alert)  # type: ignore[attr-defined]
                refusals.record(peer, exc)
            raise
        self._connection = None  # only a failed handshake needs it


def prepare(context: ssl.SSLContext) -> ssl.SSLContext:
    """Make a listening context's TLS objects refuse callers properly."""
    context.sslobject_class = RefusingSSLObject
    return context


def _tls_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    try:
        import uvloop.loop

        if isinstance(loop, uvloop.Loop):
            return uvloop.loop.SSLProtocol  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    import asyncio.sslproto

    return asyncio.sslproto.SSLProtocol


class TlsAcceptor(asyncio.Protocol):
    """Lives only until connection_made: then the loop's TLS protocol takes the socket."""

    def __init__(
        self,
        app_protocol: asyncio.BaseProtocol,
        context: ssl.SSLContext,
        handshake_timeout: float,
        refusals: RefusalLog,
    ) -> None:
        self.app_protocol = app_protocol
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.refusals = refusals

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        global _accepting
        loop = asyncio.get_running_loop()
        protocol = _tls_protocol_class(loop)(
            loop,
            self.app_protocol,
            self.context,
            None,
            server_side=True,
            ssl_handshake_timeout=self.handshake_timeout,
        )
        peer = transport.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        transport.set_protocol(protocol)
        _accepting = (transport, where, self.refusals)
        try:
            protocol.connection_made(transport)
        finally:
            _accepting = None


def acceptor_factory(
    app_factory: Callable[[], asyncio.BaseProtocol],
    context: ssl.SSLContext,
    handshake_timeout: float,
    refusals: RefusalLog,
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for a plain TCP listener that speaks TLS with `context`."""
    prepare(context)
    return lambda: TlsAcceptor(app_factory(), context, handshake_timeout, refusals)
