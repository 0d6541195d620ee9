"""JWT authentication per route: `Authorization: Bearer <token>` checked with PyJWT.

The token's `alg` must be one the provider allows AND the algorithm of the key its `kid`
names (keys are typed: an RSA key only verifies RS256), so `alg: none` and an HS256 token
"signed" with an RSA public key are refused before any verification. `iss`, `aud`, `exp`,
`nbf` and `iat` are checked with the provider's clock skew. On success, the chosen claims
travel upstream as headers (the route layer removed any client copies), the token itself
is removed unless `forward_token`, and the subject becomes the request's principal (for
rate limits keyed by `sub`). Any failure is `401 unauthenticated` with a `WWW-Authenticate:
Bearer` challenge (RFC 6750), and nothing is sent upstream.

Verified tokens are remembered (bounded, least recently used dropped first) with their
validity window, so a client repeating its token costs a lookup instead of a signature
check; a change of the key set forgets them all.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from typing import Any

import jwt
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from mesh.errors import Unauthenticated
from mesh.gateway.config import JwtProviderConfig
from mesh.gateway.jwks import KeySet
from mesh.http1.message import Request, Response
from mesh.stack import Handler

#: Verified tokens remembered per route.
VERIFIED_CACHE_SIZE = 10_000
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def header_value(claim: object) -> bytes:
    """A claim as a header value: strings as they are, anything else as compact JSON;
    never a control character or non-ASCII byte."""
    text = claim if isinstance(claim, str) else json.dumps(claim, separators=(",", ":"))
    return re.sub(r"[^\x20-\x7e]", "?", text).encode("ascii")


class JwtAuthenticate(Handler):
    def __init__(self, inner: Handler, keys: KeySet, realm: str) -> None:
        self.inner = inner
        self.keys = keys
        policy: JwtProviderConfig = keys.policy
        self.policy = policy
        self.algorithms = frozenset(policy.algorithms)
        self.claims = [(c, h.encode()) for c, h in policy.claims_to_headers.items()]
        self.required = ["exp"] if policy.require_exp else []
        self._realm = b'Bearer realm="%s"' % _UNSAFE.sub("", realm).encode()
        self.refused = 0
        #: token -> (claims, valid from, valid until, key set generation)
        self._verified: OrderedDict[str, tuple[dict[str, Any], float, float, int]] = OrderedDict()

    def statistics(self) -> dict[str, Any]:
        return {
            "provider": self.keys.name,
            "refused": self.refused,
            "remembered_tokens": len(self._verified),
        }

    def _fail(self, why: str) -> Unauthenticated:
        self.refused += 1
        description = _UNSAFE.sub("", why)[:200].encode()
        challenge = self._realm + b', error="invalid_token", error_description="%s"' % description
        return Unauthenticated(f"invalid token: {why}", challenge)

    async def handle(self, request: Request) -> Response:
        token = _bearer(request.header(b"authorization"))
        if token is None:
            self.refused += 1
            raise Unauthenticated("this route needs a bearer token", self._realm)
        claims = self._remembered(token)
        if claims is None:
            claims = await self._check(token)
        if not self.policy.forward_token:
            request.headers = [(n, v) for n, v in request.headers if n != b"authorization"]
        for claim, name in self.claims:
            value = claims.get(claim)
            if value is not None:
                request.headers.append((name, header_value(value)))
        subject = claims.get("sub")
        request.peer_identity = subject if isinstance(subject, str) else ""
        return await self.inner.handle(request)

    def _remembered(self, token: str) -> dict[str, Any] | None:
        entry = self._verified.get(token)
        if entry is None:
            return None
        claims, not_before, until, generation = entry
        now = time.time()
        if generation != self.keys.generation or not not_before <= now <= until:
            del self._verified[token]  # checked again in full, for the precise error
            return None
        self._verified.move_to_end(token)
        return claims

    def _remember(self, token: str, claims: dict[str, Any]) -> None:
        skew = self.policy.clock_skew
        exp, nbf = claims.get("exp"), claims.get("nbf")
        until = float(exp) + skew if isinstance(exp, int | float) else float("inf")
        not_before = float(nbf) - skew if isinstance(nbf, int | float) else float("-inf")
        verified = self._verified
        if len(verified) >= VERIFIED_CACHE_SIZE:
            verified.popitem(last=False)
        verified[token] = (claims, not_before, until, self.keys.generation)

    async def _check(self, token: str) -> dict[str, Any]:
        """Verify in full: header, key, signature, claims."""
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError as exc:
            raise self._fail(f"malformed token ({exc})") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise self._fail(f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._fail("malformed key id")
        candidates = self._candidates(kid, alg)
        if kid is not None and kid not in self.keys.by_id:
            refreshed = self.keys.refresh_soon()
            if refreshed is not None:
                await refreshed
                candidates = self._candidates(kid, alg)
        if not candidates:
            raise self._fail(f"no {alg} key {kid or '(no kid)'} in the issuer's key set")
        claims = self._verify(token, alg, candidates)
        self._remember(token, claims)
        return claims

    def _candidates(self, kid: str | None, alg: str) -> list[PyJWK]:
        if kid is not None:
            key = self.keys.by_id.get(kid)
            found = [key] if key is not None else []
        else:
            found = [*self.keys.unnamed, *self.keys.by_id.values()]
        return [k for k in found if k.algorithm_name == alg]

    def _verify(self, token: str, alg: str, candidates: list[PyJWK]) -> dict[str, Any]:
        policy = self.policy
        error: PyJWTError | None = None
        for key in candidates[:4]:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=list(policy.audiences) or None,
                    issuer=policy.issuer,
                    leeway=policy.clock_skew,
                    options={
                        "require": self.required,
                        "verify_aud": bool(policy.audiences),
                    },
                )
                return claims
            except jwt.InvalidSignatureError as exc:
                error = exc  # maybe another key without a kid
            except PyJWTError as exc:
                raise self._fail(str(exc)) from None
        raise self._fail(str(error or "signature verification failed")) from None


def _bearer(value: bytes | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    if not token or len(token) > 16 * 1024:
        return None
    try:
        return token.decode("ascii")
    except UnicodeDecodeError:
        return None
