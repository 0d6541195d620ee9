"""TLS clients for mTLS tests: a keep-alive HTTP/1.1 connection over TLS, and one attempt
against a listener that may refuse the caller, reporting exactly how it ended.

`TlsHttpConnection` is `rawclient.HttpConnection` over a TLS socket, optionally from another
loopback source address (127.0.0.2) so the peer address a proxy reports is distinguishable
from the proxy's own; `SourcedHttpConnection` is the same for plain HTTP. `attempt`
performs the handshake, sends one request and reads until the server closes, recording
whether the handshake completed, which TLS alert (if any) ended the connection, and every
byte of HTTP that came back.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from cryptography import x509

from tests.support.rawclient import HttpConnection


class SourcedHttpConnection(HttpConnection):
    """A plain keep-alive HTTP/1.1 connection from a chosen loopback source address."""

    def __init__(self, port: int, source: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
        )
        self.timeout = timeout
        self._buffer = b""
        self._eof = False


class TlsHttpConnection(HttpConnection):
    """A keep-alive HTTP/1.1 client connection over TLS to a loopback port."""

    def __init__(
        self,
        port: int,
        context: ssl.SSLContext,
        timeout: float = 10.0,
        host: str = "127.0.0.1",
        source: str | None = None,
    ) -> None:
        raw = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        try:
            self.sock = context.wrap_socket(raw)
        except BaseException:
            raw.close()
            raise
        self.timeout = timeout
        self._buffer = b""
        self._eof = False

    def peer_serial(self) -> int:
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@dataclass
class Attempt:
    """How one TLS connection attempt ended."""

    #: The client's side of the handshake completed (in TLS 1.3 the server may still
    #: refuse the client's certificate afterwards).
    handshake_done: bool
    #: OpenSSL's reason for the error that ended the connection ("" if none), e.g.
    #: "TLSV1_ALERT_UNKNOWN_CA" when the server sent alert 48.
    reason: str
    #: The error as text ("eof", "reset", or the exception), "" when the server closed cleanly.
    error: str
    #: Application bytes received (an HTTP response, if the server answered at all).
    data: bytes
    elapsed: float

    def alert(self) -> str:
        """The TLS alert the server sent, as OpenSSL names it ("" when there was none)."""
        return self.reason if "ALERT" in self.reason else ""


def attempt(
    port: int,
    context: ssl.SSLContext,
    request: bytes | None,
    timeout: float = 5.0,
) -> Attempt:
    """Connect, handshake, send `request` (None: send nothing), read until the server ends it."""
    start = time.monotonic()
    handshake_done = False
    data = bytearray()
    reason = error = ""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        tls = context.wrap_socket(raw, do_handshake_on_connect=False, suppress_ragged_eofs=False)
        try:
            tls.do_handshake()
            handshake_done = True
            if request is not None:
                tls.sendall(request)
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ssl.SSLError as exc:
            reason = exc.reason or ""
            error = str(exc)
        except (ConnectionResetError, BrokenPipeError) as exc:
            error = f"reset: {exc}"
        except TimeoutError:
            error = "timeout"
        finally:
            tls.close()
    return Attempt(handshake_done, reason, error, bytes(data), time.monotonic() - start)
