"""Async Consul API client: py-consul's whole API over anyio + httpcore, plus the calls it lacks.

`AsyncConsul` is a `consul.base.Consul` whose HTTP layer is `AnyioHTTPClient`, so every
py-consul method returns a coroutine that runs on anyio (no requests, aiohttp or threads).
It adds the Connect and health calls py-consul lacks or gets wrong (blocking leaf/roots,
authorize as POST, /v1/health/connect, catalog services, intention match, check update,
service registration with a verbatim body, 1.8's ID-based intention writes); blocking calls
return `(index: int, data)`. Response bodies are capped (*max_body*) before they are parsed.

Every failure is one of:

    ConsulFailure           base; catch this in a watch loop
    ├── ConsulUnavailable   connect error, timeout, dropped connection: retry with backoff
    ├── ConsulError         the agent answered non-2xx: .status, .body (short excerpt)
    └── ConsulBadResponse   2xx, but the body or headers are not what the API promises

The ACL token travels only in the X-Consul-Token header: it is moved out of any query string
py-consul builds, and is never part of a message, log line or repr.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, NamedTuple, Self, TypeVar

import anyio
import consul.base
import httpcore

__all__ = [
    "AnyioHTTPClient",
    "AsyncConsul",
    "ConsulBadResponse",
    "ConsulError",
    "ConsulFailure",
    "ConsulUnavailable",
]

T = TypeVar("T")
Params = Sequence[tuple[str, Any]] | Mapping[str, Any]

# Consul holds a blocking query this long when no wait is given, and caps any wait at 10m.
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_BODY = 64 * 1024 * 1024
_EXCERPT = 200
_DURATION = re.compile(r"([\d.]+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_CHECK_STATUSES = frozenset({"passing", "warning", "critical"})


class Response(NamedTuple):
    """What py-consul's callbacks read (the fields of its own `consul.base.Response`)."""

    code: int
    headers: dict[str, str]
    body: str | bytes


class ConsulFailure(Exception):
    """A Consul API call failed; the subclass says how."""


class ConsulUnavailable(ConsulFailure):
    """The agent could not be reached or did not answer in time."""


class ConsulError(ConsulFailure):
    """The agent answered with a non-2xx status."""

    def __init__(self, status: int, body: str, where: str) -> None:
        super().__init__(f"{where}: HTTP {status}: {body}")
        self.status = status
        self.body = body


class ConsulBadResponse(ConsulFailure):
    """A 2xx answer whose body or headers do not have the promised shape."""


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as "30s", "1m30s" or "250ms"."""
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))


def format_duration(seconds: float) -> str:
    """A Go duration Consul accepts (milliseconds keep it exact and free of exponents)."""
    # At least 1ms: Consul reads a zero wait as "the default", 5 minutes.
    return f"{max(1, round(seconds * 1000))}ms"


def _excerpt(body: str | bytes, secret: str | None) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if secret:
        text = text.replace(secret, "<redacted>")
    return " ".join(text.split())[:_EXCERPT]


def _canonical(name: str) -> str:
    # Go's header canonical form, the spelling py-consul looks up ("X-Consul-Index").
    return "-".join(part.capitalize() for part in name.split("-"))


class AnyioHTTPClient(consul.base.HTTPClient):  # type: ignore[misc]
    """py-consul's HTTP layer on an httpcore connection pool; each call returns a coroutine.

    Timeouts: connecting is bounded by *connect_timeout*; anything else by *request_timeout*,
    except that a blocking query (one with `index`) may stay silent for its wait plus the
    up-to-wait/16 jitter Consul adds, so its read deadline is wait * 17/16 + request_timeout.
    Every watch holds one pooled connection while it blocks: size *max_connections* for them.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        scheme: str = "http",
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        *,
        connect_timeout: float = 5.0,
        request_timeout: float = 15.0,
        max_connections: int = 100,
        max_body: int = MAX_BODY,
    ) -> None:
        super().__init__(host, port, scheme, verify, cert)
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.max_body = max_body
        context = _ssl_context(verify, cert) if scheme == "https" else None
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context, max_connections=max_connections, keepalive_expiry=30.0
        )

    def __repr__(self) -> str:
        return f"<AnyioHTTPClient {self.base_uri} {self.statistics()}>"

    def statistics(self) -> dict[str, int]:
        """Pooled connections: total, and how many carry a request now (a blocked watch counts)."""
        connections = self._pool.connections
        idle = sum(1 for connection in connections if connection.is_idle())
        return {"connections": len(connections), "active": len(connections) - idle}

    async def get(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params | None = None,
        headers: Mapping[str, str] | None = None,
        raw: bool = False,
    ) -> T:
        return await self.request(callback, "GET", path, params, None, headers, raw=raw)

    async def put(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params | None = None,
        data: str | bytes = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return await self.request(callback, "PUT", path, params, data, headers)

    async def post(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params | None = None,
        data: str | bytes = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return await self.request(callback, "POST", path, params, data, headers)

    async def delete(
        self,
        callback: Callable[[Response], T],
        path: str,
        params: Params | None = None,
        data: str | bytes = "",
        headers: Mapping[str, str] | None = None,
    ) -> T:
        return await self.request(callback, "DELETE", path, params, data, headers)

    async def request(
        self,
        callback: Callable[[Response], T],
        method: str,
        path: str,
        params: Params | None,
        data: str | bytes | None,
        headers: Mapping[str, str] | None,
        *,
        raw: bool = False,
    ) -> T:
        """Send one request and hand the response to *callback*, mapping every failure."""
        pairs = list(params.items() if isinstance(params, Mapping) else params or ())
        sent = dict(headers or {})
        # py-consul puts a token in the query string for catalog writes; Consul reads the
        # header just as well, and URLs end up in access logs.
        for key, value in pairs:
            if key == "token" and value:
                sent.setdefault("X-Consul-Token", str(value))
        pairs = [(k, v) for k, v in pairs if k != "token"]
        token = sent.get("X-Consul-Token")
        where = f"{method} {path}"
        response = await self._send(method, self.uri(path, pairs), sent, data, pairs, where, raw)
        try:
            return callback(response)
        except ConsulFailure:
            raise
        except Exception as exc:
            # A callback raises on any status it does not accept (py-consul's raise on 4xx/5xx
            # with the whole body); report status and a redacted excerpt instead.
            if not 200 <= response.code < 300:
                raise ConsulError(response.code, _excerpt(response.body, token), where) from None
            detail = f"{type(exc).__name__}: {_excerpt(str(exc), token)}"
            raise ConsulBadResponse(f"{where}: unusable response ({detail})") from None

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: str | bytes | None,
        params: list[tuple[str, Any]],
        where: str,
        raw: bool,
    ) -> Response:
        read = self.request_timeout
        query = dict(params)
        if query.get("index"):
            # No wait, or a zero one, means Consul's default.
            wait = parse_duration(str(query.get("wait", ""))) or DEFAULT_WAIT
            read += min(wait, MAX_WAIT) * 17 / 16
        timeouts = {
            "connect": self.connect_timeout,
            "read": read,
            "write": self.request_timeout,
            "pool": self.request_timeout,
        }
        content = data.encode() if isinstance(data, str) else data
        try:
            # The overall deadline also bounds a server that trickles bytes under the read timeout.
            with anyio.fail_after(self.connect_timeout + read):
                async with self._pool.stream(
                    method,
                    url,
                    headers=list(headers.items()),
                    content=content if method != "GET" else None,
                    extensions={"timeout": timeouts},
                ) as response:
                    announced = _content_length(response.headers)
                    if announced is not None and announced > self.max_body:
                        raise ConsulBadResponse(f"{where}: body of {announced} bytes is too large")
                    body = bytearray()
                    async for chunk in response.aiter_stream():
                        body += chunk
                        if len(body) > self.max_body:
                            raise ConsulBadResponse(f"{where}: body over {self.max_body} bytes")
        except TimeoutError:
            limit = self.connect_timeout + read
            raise ConsulUnavailable(f"{where}: no answer within {limit:g}s") from None
        except (
            httpcore.TimeoutException,
            httpcore.NetworkError,
            httpcore.RemoteProtocolError,
        ) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ConsulUnavailable(f"{where}: {detail}") from exc
        response_headers: dict[str, str] = {}
        for name, value in response.headers:
            key = _canonical(name.decode("latin-1"))
            text = value.decode("latin-1")
            response_headers[key] = (
                f"{response_headers[key]}, {text}" if key in response_headers else text
            )
        payload = bytes(body) if raw else body.decode("utf-8", "replace")
        return Response(response.status, response_headers, payload)

    async def aclose(self) -> None:
        await self._pool.aclose()

    def close(self) -> Coroutine[Any, Any, None]:
        # base.Consul.__aexit__ awaits http.close().
        return self.aclose()


def _content_length(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def _ssl_context(verify: bool | str, cert: str | tuple[str, str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
    if verify is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if isinstance(cert, tuple):
        context.load_cert_chain(*cert)
    elif cert:
        context.load_cert_chain(cert)
    return context


# Callbacks run inside AnyioHTTPClient.request: they raise plain exceptions, which it turns
# into ConsulError (non-2xx status) or ConsulBadResponse (2xx), naming the call.


def _ok(response: Response) -> None:
    if not 200 <= response.code < 300:
        raise ValueError(response.code)


def _json(response: Response) -> Any:
    _ok(response)
    return json.loads(response.body)


def _optional_index(response: Response) -> tuple[int | None, Any]:
    data = _json(response)
    text = response.headers.get("X-Consul-Index")
    if text is None:
        return None, data
    if not text.isdigit():
        raise ValueError(f"X-Consul-Index is not a number: {text[:40]!r}")
    return int(text), data


def _with_index(response: Response) -> tuple[int, Any]:
    index, data = _optional_index(response)
    if index is None:
        raise ValueError("X-Consul-Index header missing")
    return index, data


def _expect(data: Any, kind: type[T], what: str) -> T:
    if not isinstance(data, kind):
        raise ConsulBadResponse(f"{what}: expected {kind.__name__}, got {type(data).__name__}")
    return data


def _blocking(index: int | None, wait: float | None) -> list[tuple[str, Any]]:
    # No index (or one below 1, which Consul rejects) asks for the current state at once.
    if index is None or index < 1:
        return []
    params: list[tuple[str, Any]] = [("index", index)]
    if wait is not None:
        params.append(("wait", format_duration(wait)))
    return params


class AsyncConsul(consul.base.Consul):  # type: ignore[misc]
    """py-consul's `Consul` on `AnyioHTTPClient`: await every call; `aclose()` when done.

    Unlike py-consul, an explicit *token* wins over CONSUL_HTTP_TOKEN, and the address is
    what the caller passes (CONSUL_HTTP_ADDR is not consulted).
    """

    http: AnyioHTTPClient

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8500,
        *,
        token: str | None = None,
        scheme: str = "http",
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        dc: str | None = None,
        consistency: str = "default",
        connect_timeout: float = 5.0,
        request_timeout: float = 15.0,
        max_connections: int = 100,
        max_body: int = MAX_BODY,
    ) -> None:
        # base.Consul.__init__ calls http_connect, which reads these.
        self._timeouts = (connect_timeout, request_timeout, max_connections, max_body)
        super().__init__(host, port, None, scheme, consistency, dc, verify, cert)
        self.token = token if token is not None else os.environ.get("CONSUL_HTTP_TOKEN")

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """Client for an address such as "http://127.0.0.1:8500" or "https://consul:8501"."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.hostname, port, scheme=parts.scheme, **kwargs)

    def http_connect(
        self,
        host: str,
        port: int,
        scheme: str,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
    ) -> AnyioHTTPClient:
        connect_timeout, request_timeout, max_connections, max_body = self._timeouts
        return AnyioHTTPClient(
            host,
            port,
            scheme,
            verify,
            cert,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            max_connections=max_connections,
            max_body=max_body,
        )

    def __repr__(self) -> str:
        return f"<AsyncConsul {self.http.base_uri}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(
        self,
        callback: Callable[[Response], T],
        method: str,
        path: str,
        params: list[tuple[str, Any]] | None = None,
        body: object = None,
    ) -> T:
        data = None if body is None else json.dumps(body)
        headers = self.prepare_headers()
        return await self.http.request(callback, method, path, params, data, headers)

    async def leaf(
        self, service: str, index: int | None = None, wait: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """The agent's leaf certificate for *service*; blocks until a new one with *index*."""
        path = f"/v1/agent/connect/ca/leaf/{service}"
        got, data = await self._call(_with_index, "GET", path, _blocking(index, wait))
        leaf = _expect(data, dict, path)
        for key in ("CertPEM", "PrivateKeyPEM", "SerialNumber"):
            _expect(leaf.get(key), str, f"{path} {key}")
        return got, leaf

    async def roots(
        self, index: int | None = None, wait: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Connect CA roots (with TrustDomain); blocks until they change with *index*."""
        path = "/v1/agent/connect/ca/roots"
        got, data = await self._call(_with_index, "GET", path, _blocking(index, wait))
        roots = _expect(data, dict, path)
        _expect(roots.get("Roots"), list, f"{path} Roots")
        _expect(roots.get("TrustDomain"), str, f"{path} TrustDomain")
        return got, roots

    async def authorize(
        self, target: str, client_cert_uri: str, client_cert_serial: str
    ) -> dict[str, Any]:
        """Whether the client identity may connect to *target*: {Authorized, Reason}."""
        body = {
            "Target": target,
            "ClientCertURI": client_cert_uri,
            "ClientCertSerial": client_cert_serial,
        }
        path = "/v1/agent/connect/authorize"
        result = _expect(await self._call(_json, "POST", path, body=body), dict, path)
        _expect(result.get("Authorized"), bool, f"{path} Authorized")
        return result

    async def health_connect(
        self,
        service: str,
        index: int | None = None,
        wait: float | None = None,
        passing: bool = True,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The mesh-capable instances (sidecar proxies) of *service*, as a blocking query."""
        path = f"/v1/health/connect/{service}"
        params = _blocking(index, wait)
        if passing:
            params.append(("passing", "1"))
        if self.dc:
            params.append(("dc", self.dc))
        got, data = await self._call(_with_index, "GET", path, params)
        return got, _expect(data, list, path)

    async def catalog_services(
        self, index: int | None = None, wait: float | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Every service name in the datacenter, with its tags (blocking)."""
        path = "/v1/catalog/services"
        params = _blocking(index, wait)
        if self.dc:
            params.append(("dc", self.dc))
        got, data = await self._call(_with_index, "GET", path, params)
        return got, _expect(data, dict, path)

    async def service_register(self, definition: Mapping[str, Any]) -> None:
        """Register (or replace) a service on the local agent with this exact body.

        py-consul's `agent.service.register` rebuilds the body from keyword arguments; this
        sends the documented CamelCase fields as given (Kind, Proxy, Checks, Weights...).
        """
        await self._call(_ok, "PUT", "/v1/agent/service/register", body=dict(definition))

    async def intentions_match(
        self, name: str, index: int | None = None, wait: float | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """Intentions whose destination matches *name*, in precedence order (blocking)."""
        path = "/v1/connect/intentions/match"
        params = [("by", "destination"), ("name", name)]
        got, data = await self._call(_optional_index, "GET", path, params + _blocking(index, wait))
        if got is not None:
            return got, self._match_list(data, name)
        # Consul 1.8 blocks on this endpoint but sends no index. Read the intentions table's
        # index first, then the data: the data is at least that new, so no change is missed
        # (at worst the next call returns at once).
        listing = "/v1/connect/intentions"
        table, _ = await self._call(
            _with_index, "GET", listing, [("filter", 'DestinationName == ""')]
        )
        data = await self._call(_json, "GET", path, params)
        return table, self._match_list(data, name)

    @staticmethod
    def _match_list(data: Any, name: str) -> list[dict[str, Any]]:
        where = "/v1/connect/intentions/match"
        # Consul answers {name: null} when nothing matches.
        return _expect(_expect(data, dict, where).get(name) or [], list, f"{where} {name}")

    async def intention_create(
        self, source: str, destination: str, action: str, description: str = ""
    ) -> str:
        """Create an intention with the ID-based API (the only one Consul 1.8 has); its ID."""
        body = {
            "SourceName": source,
            "DestinationName": destination,
            "Action": action,
            "Description": description,
        }
        path = "/v1/connect/intentions"
        created = _expect(await self._call(_json, "POST", path, body=body), dict, path)
        return _expect(created.get("ID"), str, f"{path} ID")

    async def intention_delete(self, intention_id: str) -> None:
        await self._call(_ok, "DELETE", f"/v1/connect/intentions/{intention_id}")

    async def check_update(self, check_id: str, status: str, output: str = "") -> None:
        """Set a TTL check's status ("passing", "warning", "critical") and output."""
        if status not in _CHECK_STATUSES:
            raise ValueError(f"status must be one of {sorted(_CHECK_STATUSES)}, not {status!r}")
        body = {"Status": status, "Output": output}
        await self._call(_ok, "PUT", f"/v1/agent/check/update/{check_id}", body=body)
