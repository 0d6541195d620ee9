"""TLS between sidecars: strict contexts, the peer's SPIFFE ID, and rotation from files.

Both sides require a certificate chaining to the mesh roots; names are checked by SPIFFE
ID, not host name. Protocol floor TLS 1.2 (1.3 preferred by both ends), forward-secret AEAD
suites only, no compression or renegotiation.

Rotation: the listening context has an SNI callback that hands each new handshake the
latest context, and pools take the latest client context for each new connection, so new
files apply to new connections while established ones carry on.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
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
    return ctx


def client_context(cert: Path, key: Path, roots: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # peers are named by SPIFFE ID, checked after the handshake
    return _harden(ctx, cert, key, roots)


@dataclass(frozen=True)
class Material:
    """One generation of cert, key and roots, with what the leaf says about itself."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    identity: str
    serial: int
    not_after: dt.datetime


class TlsFiles:
    """Cert, key and roots files, loaded into contexts and reloaded when they change."""

    def __init__(self, cert: Path, key: Path, roots: Path) -> None:
        self.paths = (cert, key, roots)
        self.reloads = 0
        self.last_error = ""
        self._stamp = self._mtimes()
        self.current = self._load()
        self._listening = server_context(cert, key, roots)
        self._listening.sni_callback = self._pick_context

    def _mtimes(self) -> tuple[int, ...]:
        try:
            return tuple(os.stat(p).st_mtime_ns for p in self.paths)
        except OSError:
            return ()

    def _load(self) -> Material:
        cert, key, roots = self.paths
        try:
            leaf = x509.load_pem_x509_certificate(cert.read_bytes())
        except (OSError, ValueError) as exc:
            raise TlsConfigError(f"cannot read certificate {cert}: {exc}") from None
        try:
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            uris = sans.value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        identity = next((u for u in uris if parse(u) is not None), "")
        if not identity:
            raise TlsConfigError(f"{cert} carries no SPIFFE ID (URI SAN)")
        return Material(
            server_context(cert, key, roots),
            client_context(cert, key, roots),
            identity,
            leaf.serial_number,
            leaf.not_valid_after_utc,
        )

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

    def reload_if_changed(self) -> bool:
        """Load the files again if any changed; keep the old material if the new is bad."""
        stamp = self._mtimes()
        if stamp == self._stamp or not stamp:
            return False
        try:
            material = self._load()
        except TlsConfigError as exc:
            # A half-written rotation (new cert, old key) fails here; the next poll retries.
            self.last_error = str(exc)
            log.warning("keeping the current certificate: %s", exc)
            return False
        self._stamp = stamp
        self.current = material
        self.reloads += 1
        self.last_error = ""
        log.info("loaded certificate serial %x for %s", material.serial, material.identity)
        return True

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
