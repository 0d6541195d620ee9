"""HTTP/2's own shade of an existing reason word (mesh/errors.py)."""

from __future__ import annotations

from mesh.errors import UpstreamReset


class StreamRefused(UpstreamReset):
    """The upstream refused the stream (REFUSED_STREAM, or above a GOAWAY's last stream):
    RFC 9113 §8.7 guarantees it did no work, so the request is safe to send again."""

    never_sent = True
