"""A JWT provider's signing keys (a JWKS document from a file or a URL), kept fresh.

The set is loaded at start, re-read every `refresh_interval`, and once more when a token
names a key id the set lacks (the issuer has rotated), such forced refreshes at most once per
`min_refresh_interval`: tokens with invented key ids cannot make the gateway hammer the
issuer. A failed refresh keeps the keys it had. URLs are fetched with httpcore, in the
gateway's task group; requests waiting for a refresh await its completion, not the fetch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import anyio
import httpcore
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from mesh.gateway.config import JwtProviderConfig

log = logging.getLogger("mesh.gateway.jwks")

MAX_JWKS_BYTES = 1024 * 1024
#: The key types each algorithm accepts: a token can never pick a key of another kind.
KEY_TYPES = {"RS256": "RSA", "ES256": "EC", "HS256": "oct"}


def parse_jwks(document: bytes) -> tuple[dict[str, PyJWK], list[PyJWK]]:
    """(keys by kid, keys without a kid); `ValueError` when nothing usable is in it."""
    data = json.loads(document)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document (an object with a keys list)")
    by_id: dict[str, PyJWK] = {}
    unnamed: list[PyJWK] = []
    for raw in data["keys"]:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK.from_dict(raw)
        except PyJWTError as exc:
            log.warning("jwks: skipping a key (%s)", exc)
            continue
        if KEY_TYPES.get(key.algorithm_name) != key.key_type:
            log.warning("jwks: skipping a %s key declared for %s", key.key_type, key.algorithm_name)
            continue
        if key.key_id:
            by_id[key.key_id] = key
        else:
            unnamed.append(key)
    if not by_id and not unnamed:
        raise ValueError("no usable RS256, ES256 or HS256 signing key")
    return by_id, unnamed


class KeySet:
    def __init__(self, name: str, policy: JwtProviderConfig) -> None:
        self.name = name
        self.policy = policy
        self.by_id: dict[str, PyJWK] = {}
        self.unnamed: list[PyJWK] = []
        self.loaded = False
        #: Changes whenever the keys do: verified tokens remembered under another
        #: generation are checked again (a key the issuer withdrew stops working at once).
        self.generation = 0
        self._document = b""
        self.fetches = 0
        self.last_error = ""
        self._last_forced = -1e9
        self._wanted = anyio.Event()
        self._pending: asyncio.Future[None] | None = None

    def statistics(self) -> dict[str, Any]:
        return {
            "keys": sorted(self.by_id) + ["<no kid>"] * len(self.unnamed),
            "loaded": self.loaded,
            "fetches": self.fetches,
            "last_error": self.last_error or None,
        }

    def refresh_soon(self) -> asyncio.Future[None] | None:
        """Ask for a refresh now (a token named an unknown key id); the returned future
        completes when it is done. None when one ran too recently to try again."""
        if self._pending is not None:
            return self._pending
        now = time.monotonic()
        if now - self._last_forced < self.policy.min_refresh_interval:
            return None
        self._last_forced = now
        self._pending = asyncio.get_running_loop().create_future()
        self._wanted.set()
        return self._pending

    async def run(self) -> None:
        """Load, then refresh on schedule or on demand, until cancelled."""
        async with httpcore.AsyncConnectionPool(max_connections=2) as http:
            while True:
                # Requests that asked before this load began are answered by it; one that
                # asks while it runs waits for the next (its key may be newer).
                pending, self._pending = self._pending, None
                await self._load(http)
                if pending is not None and not pending.done():
                    pending.set_result(None)
                # Until the first load works, retry at the on-demand pace.
                wait = (
                    self.policy.refresh_interval
                    if self.loaded
                    else max(1.0, self.policy.min_refresh_interval)
                )
                with anyio.move_on_after(wait):
                    await self._wanted.wait()
                self._wanted = anyio.Event()

    async def _load(self, http: httpcore.AsyncConnectionPool) -> None:
        self.fetches += 1
        source = str(self.policy.jwks_file or self.policy.jwks_url)
        try:
            document = await self._read(http)
            if document != self._document:
                self.by_id, self.unnamed = parse_jwks(document)
                self._document = document
                self.generation += 1
        except Exception as exc:  # any failure keeps the keys we have; say why
            self.last_error = f"{source}: {exc}"
            log.warning(
                "jwks %s: cannot load %s (keeping %d key(s))",
                self.name,
                self.last_error,
                len(self.by_id) + len(self.unnamed),
            )
            return
        self.last_error = ""
        if not self.loaded:
            log.info(
                "jwks %s: %d key(s) from %s", self.name, len(self.by_id) + len(self.unnamed), source
            )
        self.loaded = True

    async def _read(self, http: httpcore.AsyncConnectionPool) -> bytes:
        policy = self.policy
        if policy.jwks_file is not None:
            data = await anyio.to_thread.run_sync(Path(policy.jwks_file).read_bytes)
            if len(data) > MAX_JWKS_BYTES:
                raise ValueError("JWKS file too large")
            return data
        assert policy.jwks_url is not None
        timeout = policy.fetch_timeout
        extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        with anyio.fail_after(timeout * 2):
            async with http.stream(
                "GET",
                policy.jwks_url,
                headers=[(b"accept", b"application/json")],
                extensions=extensions,
            ) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                parts: list[bytes] = []
                size = 0
                async for chunk in response.aiter_stream():
                    size += len(chunk)
                    if size > MAX_JWKS_BYTES:
                        raise ValueError("JWKS document too large")
                    parts.append(chunk)
        return b"".join(parts)
