"""Request paths in the one form routes are matched on and forwarded in.

A rule on `/admin` must hold for every spelling that reaches the same resource upstream
(RELIABILITY.md row 26; Envoy CVE-2019-9901, CVE-2021-29492): percent-encoded unreserved
characters are decoded (`%2e` is `.`), dot segments removed (`/x/../admin`), repeated
slashes merged (`//admin`). What cannot be normalised without guessing how the upstream
decodes is refused with 400: an encoded slash or backslash (`%2F`, `%5C`), a literal
backslash, NUL, a double-encoded dot or slash (`%252e`), malformed escapes, non-ASCII bytes,
and dot segments hidden behind path parameters (`/..;/admin`, Tomcat's reading).

The forwarded target is the normalised path plus the query, untouched: the path the upstream
sees is the path that was checked.
"""

from __future__ import annotations

import re

from mesh.errors import BadRequest

#: Bytes never valid in a path we forward: controls, space, DEL, non-ASCII, backslash.
_FORBIDDEN = re.compile(rb"[^\x21-\x7e]|\\")

_HEX = b"0123456789abcdefABCDEF"
#: RFC 3986 unreserved characters: their escapes mean the same as the characters.
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Escapes whose decoded form would change the path's structure, or that some upstreams
#: decode twice: refused rather than guessed at.
_REFUSED_ESCAPES = {b"2F": "an encoded slash", b"5C": "an encoded backslash", b"00": "NUL"}
_DOUBLE_ENCODED = (b"%252E", b"%252F", b"%255C", b"%2500")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """(path, query with its `?`, or b"")."""
    path, sep, query = target.partition(b"?")
    return path, sep + query


def normalise_path(path: bytes) -> bytes:
    """The canonical form of an origin-form path; `BadRequest` when it has none."""
    if path[:1] != b"/":
        raise BadRequest("the request path must start with /")
    if _FORBIDDEN.search(path) is not None:
        raise BadRequest("backslash, control, space or non-ASCII byte in the request path")
    if b"%" not in path and b"/." not in path and b"//" not in path:
        return path  # already in normal form: the common case costs two scans
    if b"%" in path:
        path = _decode_unreserved(path)
    segments: list[bytes] = []
    for segment in path.split(b"/")[1:]:
        bare = segment.split(b";", 1)[0]
        if bare in (b".", b"..") and bare != segment:
            raise BadRequest("dot segment with path parameters in the request path")
        if segment == b"..":
            if segments:
                segments.pop()
        elif segment not in (b".", b""):
            segments.append(segment)
    # A trailing slash (or a trailing dot segment) is kept: `/a/` and `/a` may differ upstream.
    last = path.rsplit(b"/", 1)[1]
    trailing = last in (b"", b".", b"..") and bool(segments)
    return b"/" + b"/".join(segments) + (b"/" if trailing else b"")


def _decode_unreserved(path: bytes) -> bytes:
    upper = path.upper()
    for twice in _DOUBLE_ENCODED:
        if twice in upper:
            raise BadRequest("double-encoded character in the request path")
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        byte = path[i]
        if byte != 0x25:  # '%'
            out.append(byte)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise BadRequest("malformed percent-escape in the request path")
        pair = pair.upper()
        refused = _REFUSED_ESCAPES.get(pair)
        if refused is not None:
            raise BadRequest(f"{refused} in the request path")
        value = int(pair, 16)
        if value in _UNRESERVED:
            out.append(value)
        else:
            out += b"%" + pair  # stays escaped, in one canonical (upper-case) spelling
        i += 3
    return bytes(out)
