"""API key authentication per route: a key in a header names a consumer.

Keys are kept only as SHA-256 digests, looked up by digest, so neither the table nor the
lookup time tells anything about a stored key. The key header never travels upstream; the
consumer's name does (`consumer_header`, client copies removed by the route layer) and
becomes the request's principal, for rate limits keyed by API key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from mesh.errors import Unauthenticated
from mesh.gateway.config import ApiKeySetConfig
from mesh.http1.message import Request, Response
from mesh.stack import Handler


class ApiKeyError(ValueError):
    """The keys file cannot be used."""


def load_keys(policy: ApiKeySetConfig) -> dict[bytes, str]:
    """Digest of each key -> consumer name."""
    keys = dict(policy.keys)
    if policy.keys_file is not None:
        path = Path(policy.keys_file)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ApiKeyError(f"API keys file {path}: {exc}") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
        ):
            raise ApiKeyError(f"API keys file {path}: expected a mapping consumer -> key")
        keys.update(data)
    digests: dict[bytes, str] = {}
    for consumer, key in keys.items():
        if len(key) < 16:
            raise ApiKeyError(f"API key of {consumer!r} is shorter than 16 characters")
        digests[hashlib.sha256(key.encode()).digest()] = consumer
    return digests


class ApiKeyAuthenticate(Handler):
    def __init__(
        self, inner: Handler, policy: ApiKeySetConfig, keys: dict[bytes, str], realm: str
    ) -> None:
        self.inner = inner
        self.header = policy.header.encode()
        self.consumer_header = policy.consumer_header.encode()
        self.keys = keys
        self._challenge = b'ApiKey realm="%s", header="%s"' % (
            realm.replace('"', "").encode(),
            self.header,
        )
        self.refused = 0

    def statistics(self) -> dict[str, int]:
        return {"consumers": len(set(self.keys.values())), "refused": self.refused}

    async def handle(self, request: Request) -> Response:
        presented = request.header(self.header)
        consumer = None
        if presented is not None:
            consumer = self.keys.get(hashlib.sha256(presented.strip()).digest())
        if consumer is None:
            self.refused += 1
            why = "missing" if presented is None else "unknown"
            raise Unauthenticated(f"{why} API key in {self.header.decode()}", self._challenge)
        name = self.header
        request.headers = [(n, v) for n, v in request.headers if n != name]
        request.headers.append((self.consumer_header, consumer.encode()))
        request.peer_identity = consumer
        return await self.inner.handle(request)
