"""TLS between sidecars: strict contexts, the peer's SPIFFE ID, and rotation.

Both sides require a certificate chaining to the mesh roots; names are checked by SPIFFE
ID, not host name. Protocol floor TLS 1.2 (1.3 preferred by both ends), forward-secret AEAD
suites only, no compression or renegotiation.

Rotation: the listening context has an SNI callback that hands each new handshake the
latest context, and pools take the latest client context for each new connection, so new
material applies to new connections while established ones carry on. Sources (files here,
Consul's CA in discovery/consul_ca.py) only produce PEMs and hand them to `install`.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from mesh.identity.errors import TlsConfigError
from mesh.identity.spiffe import parse

log = logging.getLogger("mesh.identity.tls")

#: TLS 1.2 suites (1.3 has only strong ones): ECDHE for forward secrecy, AEAD only.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _harden(ctx: ssl.SSLContext, cert: Path, key: Path, roots: Path) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cafile=str(roots))
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load {cert}, {key} or {roots}: {exc}") from None
    return ctx


def server_context(cert: Path, key: Path, roots: Path) -> ssl.SSLContext:
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, roots)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # A caller offering h2 gets it (mesh/http2); one offering nothing gets HTTP/1.1.
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def client_context(
    cert: Path, key: Path, roots: Path, alpn: list[str] | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # peers are named by SPIFFE ID, checked after the handshake
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return _harden(ctx, cert, key, roots)


@dataclass(frozen=True)
class Material:
    """One generation of cert, key and roots, with what the leaf says about itself."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    identity: str
    serial: int
    not_after: dt.datetime
    not_before: dt.datetime
    #: The client context offering ALPN h2, for upstreams spoken to over HTTP/2.
    client_h2: ssl.SSLContext | None = None


@dataclass(frozen=True)
class Pems:
    """What every certificate source produces: the leaf (chain), its key, the roots."""

    cert: bytes
    key: bytes
    roots: bytes
    #: Where they came from, for messages ("files a, b, c", "consul leaf for web").
    origin: str


def _leaf_facts(cert_pem: bytes, origin: str) -> tuple[str, x509.Certificate]:
    try:
        leaf = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise TlsConfigError(f"cannot read certificate {origin}: {exc}") from None
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    identity = next((u for u in uris if parse(u) is not None), "")
    if not identity:
        raise TlsConfigError(f"{origin} carries no SPIFFE ID (URI SAN)")
    return identity, leaf


def _contexts(pems: Pems) -> tuple[ssl.SSLContext, ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts; ssl loads a key only from a file, so the PEMs go through
    a private temporary directory that is removed at once."""
    with tempfile.TemporaryDirectory(prefix="mesh-tls-") as tmp:
        directory = Path(tmp)
        paths = []
        for name, data in (
            ("cert.pem", pems.cert),
            ("key.pem", pems.key),
            ("roots.pem", pems.roots),
        ):
            path = directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            paths.append(path)
        try:
            cert, key, roots = paths
            return (
                server_context(cert, key, roots),
                client_context(cert, key, roots),
                client_context(cert, key, roots, alpn=["h2"]),
            )
        except TlsConfigError as exc:
            # Name the real origin, not the temporary files.
            where = f"{paths[0]}, {paths[1]} or {paths[2]}"
            raise TlsConfigError(str(exc).replace(where, pems.origin)) from None


def material_from(pems: Pems) -> Material:
    identity, leaf = _leaf_facts(pems.cert, pems.origin)
    server, client, client_h2 = _contexts(pems)
    return Material(
        server, client, identity, leaf.serial_number, leaf.not_valid_after_utc,
        leaf.not_valid_before_utc, client_h2,
    )  # fmt: skip


class RotatingTls:
    """The current certificate material, swapped whole when a source brings new PEMs.

    Whatever the source (files, Consul's CA), the listener keeps one context whose SNI
    callback hands each new handshake the latest server context, and pools ask for the
    latest client context per new connection: established connections carry on.
    """

    def __init__(self, first: Pems) -> None:
        self.reloads = 0
        self.last_error = ""
        self.current = material_from(first)
        self._listening, _, _ = _contexts(first)
        self._listening.sni_callback = self._pick_context

    def _pick_context(self, ssl_object: ssl.SSLObject, name: str | None, _: Any) -> None:
        ssl_object.context = self.current.server
        return None

    @property
    def listening_context(self) -> ssl.SSLContext:
        return self._listening

    @property
    def identity(self) -> str:
        return self.current.identity

    def client_context(self) -> ssl.SSLContext:
        return self.current.client

    def client_context_h2(self) -> ssl.SSLContext:
        context = self.current.client_h2
        assert context is not None
        return context

    def install(self, pems: Pems) -> bool:
        """Use new PEMs for new handshakes; keep the old material if the new is bad."""
        try:
            material = material_from(pems)
        except TlsConfigError as exc:
            self.last_error = str(exc)
            log.warning("keeping the current certificate: %s", exc)
            return False
        self.current = material
        self.reloads += 1
        self.last_error = ""
        log.info("loaded certificate serial %x for %s", material.serial, material.identity)
        return True

    def renew_at(self, fraction: float = 2 / 3) -> dt.datetime:
        """When the current leaf should be replaced: `fraction` of its validity."""
        material = self.current
        return material.not_before + (material.not_after - material.not_before) * fraction

    def statistics(self) -> dict[str, Any]:
        material = self.current
        remaining = material.not_after - dt.datetime.now(dt.UTC)
        return {
            "identity": material.identity,
            "serial": f"{material.serial:x}",
            "not_after": material.not_after.isoformat(),
            "seconds_to_expiry": int(remaining.total_seconds()),
            "reloads": self.reloads,
            "last_error": self.last_error or None,
        }


class TlsFiles(RotatingTls):
    """Cert, key and roots files, loaded into contexts and reloaded when they change."""

    def __init__(self, cert: Path, key: Path, roots: Path) -> None:
        self.paths = (cert, key, roots)
        self._stamp = self._mtimes()
        super().__init__(self._read())

    def _mtimes(self) -> tuple[int, ...]:
        try:
            return tuple(os.stat(p).st_mtime_ns for p in self.paths)
        except OSError:
            return ()

    def _read(self) -> Pems:
        cert, key, roots = self.paths
        data = []
        for path in self.paths:
            try:
                data.append(path.read_bytes())
            except OSError as exc:
                what = "certificate" if path == cert else "file"
                raise TlsConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
        return Pems(data[0], data[1], data[2], f"{cert}, {key} or {roots}")

    def reload_if_changed(self) -> bool:
        """Load the files again if any changed; keep the old material if the new is bad."""
        stamp = self._mtimes()
        if stamp == self._stamp or not stamp:
            return False
        try:
            pems = self._read()
        except TlsConfigError as exc:
            self.last_error = str(exc)
            log.warning("keeping the current certificate: %s", exc)
            return False
        if not self.install(pems):
            # A half-written rotation (new cert, old key) fails here; the next poll retries.
            return False
        self._stamp = stamp
        return True
