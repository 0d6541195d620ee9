"""A TLS-terminating recording peer: stands where another sidecar's inbound listener would.

It requires a client certificate chaining to the given roots, presents the leaf it is given
(which may name another service than the one discovery expects), and records per
connection: whether the handshake completed, the client certificate's serial and SPIFFE
ID, and every plaintext byte received after the handshake. A request head is answered with
`200 ok` and `Connection: close`, so each request a proxy sends costs a new handshake.

    with TlsRecordingPeer(leaf.cert, leaf.key, leaf.roots) as peer:
        ...  # list 127.0.0.1:peer.port in a catalog
        assert peer.plaintext_total() == 0
"""

from __future__ import annotations

import contextlib
import itertools
import selectors
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


@dataclass
class PeerConnection:
    id: int
    handshake_done: bool = False
    handshake_error: str = ""
    client_serial: int | None = None
    client_uris: list[str] = field(default_factory=list)
    #: Plaintext received after the handshake (TLS records never count).
    plaintext: bytearray = field(default_factory=bytearray)
    ended: threading.Event = field(default_factory=threading.Event)


class TlsRecordingPeer:
    """Threaded loopback TLS server recording what arrives; a context manager."""

    def __init__(self, cert: Path, key: Path, roots: Path) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(roots))
        ctx.load_cert_chain(str(cert), str(key))
        self._ctx = ctx
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._connections: list[PeerConnection] = []
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept_loop, name="tls-peer-accept")
        self._accepter.daemon = True
        self._accepter.start()

    # -- evidence -----------------------------------------------------------------------------
    @property
    def connections(self) -> list[PeerConnection]:
        with self._lock:
            return list(self._connections)

    def plaintext_total(self) -> int:
        with self._lock:
            return sum(len(c.plaintext) for c in self._connections)

    def handshakes(self) -> list[PeerConnection]:
        return [c for c in self.connections if c.handshake_done]

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> TlsRecordingPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(0.05):
                    continue
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    continue
                record = PeerConnection(next(self._ids))
                thread = threading.Thread(
                    target=self._serve, args=(sock, record), name=f"tls-peer-{record.id}"
                )
                thread.daemon = True
                with self._lock:
                    self._connections.append(record)
                    self._sockets.add(sock)
                    self._threads.append(thread)
                thread.start()

    def _serve(self, sock: socket.socket, record: PeerConnection) -> None:
        try:
            sock.settimeout(5)
            try:
                tls = self._ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                record.handshake_error = str(exc) or type(exc).__name__
                return
            with self._lock:
                self._sockets.add(tls)
            try:
                with tls:
                    self._after_handshake(tls, record)
            finally:
                with self._lock:
                    self._sockets.discard(tls)
        finally:
            sock.close()
            with self._lock:
                self._sockets.discard(sock)
            record.ended.set()

    def _after_handshake(self, tls: ssl.SSLSocket, record: PeerConnection) -> None:
        der = tls.getpeercert(binary_form=True)
        if der is not None:
            cert = x509.load_der_x509_certificate(der)
            record.client_serial = cert.serial_number
            with contextlib.suppress(x509.ExtensionNotFound):
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                record.client_uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
        record.handshake_done = True
        with contextlib.suppress(OSError):
            while not self._stop.is_set():
                data = tls.recv(65536)
                if not data:
                    return
                with self._lock:
                    record.plaintext += data
                if b"\r\n\r\n" in record.plaintext:
                    tls.sendall(RESPONSE)
                    return
