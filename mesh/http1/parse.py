"""Checks the strict C parser (llhttp, via httptools) leaves to us.

llhttp already rejects CL+TE, duplicate or malformed Content-Length, obfuscated
Transfer-Encoding, bare LF, obs-fold, NUL/CR/LF in values and bad tokens. What remains:
underscores in names, Host rules, request-target forms, Transfer-Encoding other than exactly
"chunked", HTTP versions other than 1.0/1.1.
"""

from __future__ import annotations

import re

import httptools

from mesh.errors import BadRequest, NotImplementedByProxy

# RFC 3986 host (reg-name / IPv4 / IP-literal) with an optional port; no userinfo.
_AUTHORITY = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def valid_authority(value: bytes) -> bool:
    return _AUTHORITY.fullmatch(value) is not None


def check_transfer_encoding(value: bytes) -> None:
    """Only a single `chunked` coding is carried; anything else is refused (Envoy: 501)."""
    if value.strip().lower() != b"chunked":
        raise NotImplementedByProxy(f"transfer-encoding {value[:40]!r} is not supported")


def split_target(method: bytes, url: bytes) -> tuple[bytes, bytes, bytes | None]:
    """Return (scheme, origin-form target, authority from an absolute-form URI or None)."""
    if method == b"CONNECT":
        if url[:1] == b"/" or url == b"*" or b"/" in url:
            raise BadRequest("CONNECT needs an authority-form target (host:port)")
        raise NotImplementedByProxy("CONNECT tunnels are not supported on this listener")
    if url[:1] == b"/":
        if b"#" in url:
            raise BadRequest("fragment in request target")
        return b"http", url, None
    if url == b"*":
        if method != b"OPTIONS":
            raise BadRequest("asterisk-form target is only valid for OPTIONS")
        return b"http", url, None
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        raise BadRequest("malformed request target") from None
    scheme = (parsed.schema or b"").lower()
    if scheme not in (b"http", b"https") or not parsed.host:
        raise BadRequest("request target is neither origin-form nor an http(s) URI")
    if parsed.userinfo or parsed.fragment:
        raise BadRequest("userinfo or fragment in request target")
    host = b"[" + parsed.host + b"]" if b":" in parsed.host else parsed.host
    authority = host if parsed.port is None else b"%s:%d" % (host, parsed.port)
    if not valid_authority(authority):
        raise BadRequest("malformed authority in request target")
    target = parsed.path or b"/"
    if parsed.query is not None:
        target += b"?" + parsed.query
    return scheme, target, authority
