"""Health probes of the local app, judged as Consul judges its own checks.

The sidecar runs them and reports the result to a TTL check (see registration.py):
TCP - the app accepts a connection: passing, else critical;
HTTP - GET <path>: 2xx passing, 429 warning, anything else (or no answer) critical.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import httpcore

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"


@dataclass(frozen=True)
class ProbeResult:
    status: str
    output: str


class AppProbe:
    """Probes host:port (TCP), or GETs *path* there when one is given."""

    def __init__(self, host: str, port: int, path: str | None = None, timeout: float = 2.0):
        self.host = host
        self.port = port
        self.path = path
        self.timeout = timeout
        self._pool = httpcore.AsyncConnectionPool(max_connections=1) if path else None

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}" if self.path else f"tcp {host}:{self.port}"

    async def check(self) -> ProbeResult:
        if self._pool is None:
            return await self._tcp()
        return await self._http(self._pool)

    async def _tcp(self) -> ProbeResult:
        try:
            with anyio.fail_after(self.timeout):
                stream = await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            return ProbeResult(CRITICAL, f"{self.target}: {_reason(exc)}")
        await stream.aclose()
        return ProbeResult(PASSING, f"{self.target}: accepting connections")

    async def _http(self, pool: httpcore.AsyncConnectionPool) -> ProbeResult:
        timeouts = {name: self.timeout for name in ("connect", "read", "write", "pool")}
        try:
            with anyio.fail_after(self.timeout * 2):
                response = await pool.request(
                    "GET",
                    self.target,
                    headers=[("User-Agent", "mesh-health-check")],
                    extensions={"timeout": timeouts},
                )
        except (httpcore.TimeoutException, httpcore.NetworkError, TimeoutError) as exc:
            return ProbeResult(CRITICAL, f"GET {self.target}: {_reason(exc)}")
        except httpcore.ProtocolError as exc:
            return ProbeResult(CRITICAL, f"GET {self.target}: bad HTTP: {exc}")
        status = response.status
        if 200 <= status < 300:
            verdict = PASSING
        elif status == 429:
            verdict = WARNING
        else:
            verdict = CRITICAL
        return ProbeResult(verdict, f"GET {self.target}: HTTP {status}")

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | httpcore.TimeoutException):
        return "no answer in time"
    return str(exc) or type(exc).__name__
