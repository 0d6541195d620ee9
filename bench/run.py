#!/usr/bin/env python3
"""Loopback benchmark: our sidecar pair against nginx and haproxy pairs, in one run.

Every contender is a chain ``wrk -> hop A -> hop B -> app`` on 127.0.0.1:

* ``direct``         wrk straight to the app (no hops: what wrk and the app reach alone).
* ``nginx``          two nginx proxies, keepalive upstream pools, 1 worker each.
* ``nginx-mtls``     the same, A -> B over mutual TLS 1.3.
* ``haproxy``        two haproxy proxies, nbthread 1, ``http-reuse always``.
* ``haproxy-mtls``   the same, A -> B over mutual TLS 1.3.
* ``mesh``           our outbound sidecar (A) and inbound sidecar (B).
* ``mesh-layers10``  the same with ten no-op layers in each sidecar.
* ``mesh-mtls``      our pair with mTLS, once the CLI has ``--tls-cert``.
* ``nginx-h2``       h2load (HTTP/2, h2c) to nginx A (``listen ... http2``), HTTP/1.1 on.
* ``mesh-h2``        h2load (h2c) to our pair, HTTP/2 between the sidecars (upstream
                     declared ``http2``), HTTP/1.1 to the app.

The app is one nginx process answering ``hello world``. wrk runs pinned on one CPU, the
app and every hop on another; contenders are interleaved round by round and the median
over rounds is reported. See bench/README.md for how to read the table.

Run: ``.venv/bin/python bench/run.py [--rounds N] [--duration S] [--connections 32,64]
[--only name,...] [--json out.json]``. Exit status: 0, or 1 when a bar check FAILs,
2 when the set-up cannot run at all, 130 when interrupted. The -h2 rows load with h2load
(nghttp2-client), 10 concurrent streams per connection; its per-request log gives the
percentiles.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import grp
import http.client
import importlib.metadata
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"
DEFAULT_MESH = REPO_DIR / ".venv" / "bin" / "mesh"

LOOPBACK = "127.0.0.1"
APP_BODY = b"hello world\n"
TRUST_DOMAIN = "bench.local"
APT_PACKAGES = ("wrk", "nginx-light", "haproxy", "nghttp2-client")
REQUIRED_TOOLS = ("wrk", "nginx", "haproxy", "taskset", "h2load")

CONTENDERS = (
    "direct",
    "nginx",
    "nginx-mtls",
    "haproxy",
    "haproxy-mtls",
    "mesh",
    "mesh-layers10",
    "mesh-mtls",
    "nginx-h2",
    "mesh-h2",
)
# Each contender is compared with the nginx row of its own kind.
BASELINE = {
    name: (
        "nginx-mtls" if name.endswith("-mtls") else "nginx-h2" if name.endswith("-h2") else "nginx"
    )
    for name in CONTENDERS
}
#: Concurrent streams per connection for the HTTP/2 rows (h2load -m).
H2_STREAMS = 10
# The bar: (contender, baseline, min throughput ratio, max p99 ratio).
BARS = (("mesh", "nginx", 0.5, 2.0), ("mesh-mtls", "nginx-mtls", 0.5, 2.0))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str = "") -> None:
    print(message, flush=True)


class SetupFailed(Exception):
    """A contender could not be started; the message says why (with log tails)."""


class Skipped(Exception):
    """A contender is not measurable yet (missing binary or feature); not an error."""


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcInfo:
    """One line of /proc/PID/stat, the fields this script needs."""

    pid: int
    ppid: int
    ticks: int  # utime + stime + cutime + cstime, all threads of the process
    start: int  # starttime, to tell a live process from a reused PID


def read_stat(pid: int) -> ProcInfo | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ProcInfo(pid=pid, ppid=int(rest[1]), ticks=ticks, start=int(rest[19]))


def all_procs() -> dict[int, ProcInfo]:
    procs: dict[int, ProcInfo] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = read_stat(int(entry.name))
            if info is not None:
                procs[info.pid] = info
    return procs


def process_tree(roots: Iterable[int], procs: dict[int, ProcInfo] | None = None) -> list[int]:
    """The live roots and all their descendants (threads are inside each process's stat)."""
    procs = all_procs() if procs is None else procs
    children: dict[int, list[int]] = {}
    for info in procs.values():
        children.setdefault(info.ppid, []).append(info.pid)
    found: list[int] = []
    stack = [pid for pid in roots if pid in procs]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def cpu_ticks(roots: Iterable[int]) -> dict[int, int]:
    procs = all_procs()
    return {pid: procs[pid].ticks for pid in process_tree(roots, procs)}


def cpu_ms_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU time used between two snapshots; processes born in between count in full."""
    ticks = sum(value - before.get(pid, 0) for pid, value in after.items())
    return max(ticks, 0) * 1000.0 / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class Memory:
    peak_kb: int  # sum of VmHWM
    rss_kb: int  # sum of VmRSS
    pss_kb: int  # sum of Pss (shared pages split between sharers)
    processes: int


def memory(roots: Iterable[int]) -> Memory:
    pids = process_tree(roots)
    return Memory(
        peak_kb=sum(status_kb(pid, "VmHWM") for pid in pids),
        rss_kb=sum(status_kb(pid, "VmRSS") for pid in pids),
        pss_kb=sum(pss_kb(pid) for pid in pids),
        processes=len(pids),
    )


@dataclass(frozen=True)
class CpuTimes:
    """One CPU's line of /proc/stat, in milliseconds."""

    busy_ms: float  # user + nice + system: time charged to processes
    irq_ms: float  # irq + softirq (loopback TCP work often lands here, charged to no process)
    steal_ms: float
    idle_ms: float

    def minus(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(
            busy_ms=self.busy_ms - other.busy_ms,
            irq_ms=self.irq_ms - other.irq_ms,
            steal_ms=self.steal_ms - other.steal_ms,
            idle_ms=self.idle_ms - other.idle_ms,
        )


def cpu_times(cpu: int | None) -> CpuTimes:
    """Times of one CPU (or of all CPUs when `cpu` is None)."""
    label = "cpu" if cpu is None else f"cpu{cpu}"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == label:
            ticks = [int(v) for v in parts[1:9]]
            user, nice, system, idle, iowait, irq, softirq, steal = ticks
            scale = 1000.0 / CLK_TCK
            return CpuTimes(
                busy_ms=(user + nice + system) * scale,
                irq_ms=(irq + softirq) * scale,
                steal_ms=steal * scale,
                idle_ms=(idle + iowait) * scale,
            )
    raise ValueError(f"/proc/stat has no {label} line")


_LIBC = ctypes.CDLL(None, use_errno=True)  # resolved here, not in the forked child
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if this script dies without cleaning up."""
    with contextlib.suppress(Exception):
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


@dataclass
class Tracked:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    seen: dict[int, int] = field(default_factory=dict)  # descendant pid -> starttime

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_text(self) -> str:
        code = self.popen.poll()
        if code is None:
            return "running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = text.strip().splitlines()[-lines:]
        return "\n".join("    | " + line for line in tail) or "    | (empty log)"


class Processes:
    """Every process this script starts, tracked by PID and stopped by PID."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.tracked: list[Tracked] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        log_path: Path,
        env: dict[str, str] | None = None,
    ) -> Tracked:
        full = (["taskset", "-c", str(cpu)] if cpu is not None else []) + list(argv)
        if self.verbose:
            log("  + " + " ".join(full))
        with log_path.open("ab") as out:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only this script, which cleans up
                preexec_fn=_die_with_parent,  # the script is single-threaded
            )
        proc = Tracked(name=name, popen=popen, log_path=log_path)
        self.tracked.append(proc)
        return proc

    def remember_descendants(self) -> None:
        procs = all_procs()
        for proc in self.tracked:
            if proc.alive():
                for pid in process_tree([proc.pid], procs):
                    if pid != proc.pid:
                        proc.seen[pid] = procs[pid].start

    def stop(self, proc: Tracked, grace: float = 5.0) -> None:
        if proc not in self.tracked:
            return
        self.remember_descendants()
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=grace)
        for pid, start in proc.seen.items():
            info = read_stat(pid)
            if info is not None and info.start == start:  # the same process, not a reused PID
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.tracked.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.tracked)):
            self.stop(proc)


# --------------------------------------------------------------------------- ports, HTTP


class Ports:
    """Free loopback ports, found by binding port 0; never handed out twice."""

    def __init__(self) -> None:
        self.used: set[int] = set()

    def take(self) -> int:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if port not in self.used:
                self.used.add(port)
                return port
        raise RuntimeError("could not find a free loopback port")


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until(
    what: str,
    check: Callable[[], bool],
    procs: Sequence[Tracked],
    timeout: float,
) -> None:
    """Poll `check` until it holds; fail early if a process died, clearly at the deadline."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        for proc in procs:
            if not proc.alive():
                raise SetupFailed(
                    f"{proc.name} {proc.exit_text()} while waiting for {what}; "
                    f"its log ({proc.log_path}):\n{proc.log_tail()}"
                )
        try:
            if check():
                return
        except (OSError, http.client.HTTPException) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            logs = "\n".join(f"  {p.name} ({p.log_path}):\n{p.log_tail()}" for p in procs)
            raise SetupFailed(
                f"timed out after {timeout:.0f}s waiting for {what}"
                f"{' (last error: ' + last_error + ')' if last_error else ''}\n{logs}"
            )
        time.sleep(0.05)


def wait_ready(admin_port: int, proc: Tracked, timeout: float) -> None:
    def ready() -> bool:
        status, _ = http_get(admin_port, "/ready", timeout=1.0)
        return status == 200

    wait_until(f"GET http://{LOOPBACK}:{admin_port}/ready to answer 200", ready, [proc], timeout)


def h2_serving(port: int) -> bool:
    """One HTTP/2 (h2c) request succeeds: the readiness check of an h2c-only listener."""
    try:
        done = subprocess.run(
            ["h2load", "-n", "1", "-c", "1", f"http://{LOOPBACK}:{port}/"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ", 1 succeeded," in done.stdout


def wait_serving(port: int, procs: Sequence[Tracked], timeout: float, h2: bool = False) -> None:
    def serving() -> bool:
        if h2:
            return h2_serving(port)
        status, body = http_get(port, "/", timeout=2.0)
        if status == 200 and body == APP_BODY:
            return True
        raise SetupFailed(f"GET http://{LOOPBACK}:{port}/ answered {status} {body[:80]!r}")

    wait_until(f"http://{LOOPBACK}:{port}/ to answer 200 {APP_BODY!r}", serving, procs, timeout)


def rejects_client_without_cert(port: int, ca_file: Path) -> bool:
    """True when the TLS listener refuses a client that shows no certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        with (
            socket.create_connection((LOOPBACK, port), timeout=3.0) as raw,
            ctx.wrap_socket(raw, server_hostname=f"app.{TRUST_DOMAIN}") as tls,
        ):
            tls.sendall(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            data = tls.recv(64)
    except (OSError, ssl.SSLError):
        return True
    return not data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200"))


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Identity:
    spiffe: str
    cert: Path
    key: Path
    bundle: Path  # cert + key in one PEM (haproxy's `crt`)


@dataclass(frozen=True)
class Certs:
    ca: Path
    app: Identity
    client: Identity


def make_certs(directory: Path) -> Certs:
    """An EC P-256 CA and two leaves with SPIFFE URI SANs (plus a DNS SAN for nginx/haproxy,
    which check a host name, not a URI)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:  # pragma: no cover - the venv has it
        raise SetupFailed(f"`cryptography` is needed for the mTLS rows ({exc})") from exc

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mesh bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{TRUST_DOMAIN} bench root CA"),
        ]
    )
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(service: str) -> Identity:
        key = ec.generate_private_key(ec.SECP256R1())
        spiffe = f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{service}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(spiffe),
                        x509.DNSName(f"{service}.{TRUST_DOMAIN}"),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        paths = Identity(
            spiffe=spiffe,
            cert=directory / f"{service}.crt",
            key=directory / f"{service}.key",
            bundle=directory / f"{service}.pem",
        )
        paths.cert.write_bytes(cert_pem)
        for path, data in ((paths.key, key_pem), (paths.bundle, cert_pem + key_pem)):
            path.touch(mode=0o600)
            path.write_bytes(data)
        return paths

    return Certs(ca=ca_path, app=leaf("app"), client=leaf("client"))


# --------------------------------------------------------------------------- configs


def nginx_user_line() -> str:
    """nginx started as root drops its worker to `nobody`, whose group Debian calls nogroup."""
    if os.geteuid() != 0:
        return ""
    try:
        user = pwd.getpwnam("nobody")
        return f"user nobody {grp.getgrgid(user.pw_gid).gr_name};"
    except KeyError:
        return "user root root;"


def nginx_conf(directory: Path, name: str, http_body: str, max_conns: int) -> str:
    temp = directory / f"{name}-tmp"
    worker_connections = max(1024, 4 * max_conns + 64)
    return f"""# {name}: config for bench/run.py (temporary)
{nginx_user_line()}
worker_processes 1;
daemon off;
master_process on;
pid {directory}/{name}.pid;
lock_file {directory}/{name}.lock;
error_log {directory}/{name}-error.log warn;
events {{
    worker_connections {worker_connections};
}}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{http_body}
}}
"""


def nginx_app(port: int) -> str:
    return f"""
    server {{
        listen {LOOPBACK}:{port};
        location / {{
            default_type text/plain;
            return 200 "hello world\\n";
        }}
    }}
"""


def nginx_proxy(
    listen: int,
    upstream_port: int,
    *,
    serve_tls: Identity | None = None,
    upstream_tls: Identity | None = None,
    ca: Path | None = None,
    h2: bool = False,
) -> str:
    """One nginx hop: plain or mTLS listener, keepalive pool to the next hop (plain or mTLS);
    `h2`: the listener speaks h2c (prior knowledge)."""
    listen_tls = ""
    if serve_tls is not None:
        listen_tls = f"""
        ssl_certificate {serve_tls.cert};
        ssl_certificate_key {serve_tls.key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:bench_tls:1m;
        ssl_session_timeout 1h;
        ssl_session_tickets on;"""
    proxy_tls = ""
    if upstream_tls is not None:
        proxy_tls = f"""
            proxy_ssl_certificate {upstream_tls.cert};
            proxy_ssl_certificate_key {upstream_tls.key};
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_name app.{TRUST_DOMAIN};
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_session_reuse on;"""
    scheme = "https" if upstream_tls is not None else "http"
    listen_flags = (" ssl" if serve_tls is not None else "") + (" http2" if h2 else "")
    return f"""
    upstream next_hop {{
        server {LOOPBACK}:{upstream_port};
        keepalive 512;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {LOOPBACK}:{listen}{listen_flags};{listen_tls}
        location / {{
            proxy_pass {scheme}://next_hop;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{proxy_tls}
        }}
    }}
"""


def haproxy_conf(
    name: str,
    listen: int,
    upstream_port: int,
    max_conns: int,
    *,
    serve_tls: Identity | None = None,
    upstream_tls: Identity | None = None,
    ca: Path | None = None,
) -> str:
    bind_tls = ""
    if serve_tls is not None:
        bind_tls = f" ssl crt {serve_tls.bundle} ca-file {ca} verify required ssl-min-ver TLSv1.3"
    server_tls = ""
    if upstream_tls is not None:
        server_tls = (
            f" ssl crt {upstream_tls.bundle} ca-file {ca} verify required"
            f" verifyhost app.{TRUST_DOMAIN} ssl-min-ver TLSv1.3"
        )
    return f"""# {name}: config for bench/run.py (temporary)
global
    nbthread 1
    maxconn {max(1024, 4 * max_conns + 64)}

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always

frontend {name}_in
    bind {LOOPBACK}:{listen}{bind_tls}
    default_backend {name}_next

backend {name}_next
    http-reuse always
    server next {LOOPBACK}:{upstream_port} pool-purge-delay 300s{server_tls}
"""


# --------------------------------------------------------------------------- contenders


@dataclass
class Chain:
    """A started contender: wrk targets `port`; `hops` are the measured proxy processes."""

    name: str
    port: int
    hops: list[Tracked]
    description: str
    notes: list[str] = field(default_factory=list)
    #: The load generator: "wrk" (HTTP/1.1) or "h2load" (HTTP/2, h2c).
    load: str = "wrk"


@dataclass
class Setup:
    args: argparse.Namespace
    procs: Processes
    ports: Ports
    workdir: Path
    server_cpu: int | None
    app_port: int = 0
    app: Tracked | None = None
    certs: Certs | None = None
    mesh_help: str | None = None

    @property
    def max_conns(self) -> int:
        return int(max(self.args.connections))

    def get_certs(self) -> Certs:
        if self.certs is None:
            self.certs = make_certs(self.workdir / "certs")
        return self.certs

    def start_nginx(self, name: str, http_body: str) -> Tracked:
        conf = self.workdir / f"{name}.conf"
        (self.workdir / f"{name}-tmp").mkdir(mode=0o755, exist_ok=True)
        conf.write_text(nginx_conf(self.workdir, name, http_body, self.max_conns))
        argv = [
            "nginx",
            "-p",
            f"{self.workdir}/",
            "-c",
            str(conf),
            "-e",
            str(self.workdir / f"{name}-error.log"),
        ]
        return self.procs.start(
            name, argv, cpu=self.server_cpu, log_path=self.workdir / f"{name}.log"
        )

    def start_haproxy(self, name: str, conf_text: str) -> Tracked:
        conf = self.workdir / f"{name}.cfg"
        conf.write_text(conf_text)
        argv = ["haproxy", "-db", "-f", str(conf)]
        return self.procs.start(
            name, argv, cpu=self.server_cpu, log_path=self.workdir / f"{name}.log"
        )

    def start_app(self) -> None:
        self.app_port = self.ports.take()
        self.app = self.start_nginx("app", nginx_app(self.app_port))
        wait_serving(self.app_port, [self.app], self.args.ready_timeout)

    def error_logs(self, *names: str) -> str:
        parts = []
        for name in names:
            path = self.workdir / f"{name}-error.log"
            if path.exists() and path.read_text().strip():
                parts.append(f"  {path}:\n" + path.read_text().strip()[-1500:])
        return "\n".join(parts)


def start_direct(setup: Setup) -> Chain:
    return Chain("direct", setup.app_port, [], "wrk -> app (nginx)")


def start_nginx_pair(setup: Setup, mtls: bool, h2: bool = False) -> Chain:
    name = "nginx-h2" if h2 else "nginx-mtls" if mtls else "nginx"
    a_port, b_port = setup.ports.take(), setup.ports.take()
    certs = setup.get_certs() if mtls else None
    b = setup.start_nginx(
        f"{name}-b",
        nginx_proxy(
            b_port,
            setup.app_port,
            serve_tls=certs.app if certs else None,
            ca=certs.ca if certs else None,
        ),
    )
    a = setup.start_nginx(
        f"{name}-a",
        nginx_proxy(
            a_port,
            b_port,
            upstream_tls=certs.client if certs else None,
            ca=certs.ca if certs else None,
            h2=h2,
        ),
    )
    try:
        wait_serving(a_port, [a, b], setup.args.ready_timeout, h2=h2)
    except SetupFailed as exc:
        raise SetupFailed(f"{exc}\n{setup.error_logs(name + '-a', name + '-b')}") from exc
    link = "mTLS 1.3" if mtls else "plain"
    chain = Chain(
        name,
        a_port,
        [a, b],
        f"{'h2load' if h2 else 'wrk'} -> nginx A :{a_port} -({link})-> nginx B :{b_port} "
        f"-> app :{setup.app_port}",
        load="h2load" if h2 else "wrk",
    )
    if certs is not None and not rejects_client_without_cert(b_port, certs.ca):
        chain.notes.append("WARNING: hop B accepted a TLS client without a certificate")
    return chain


def start_haproxy_pair(setup: Setup, mtls: bool) -> Chain:
    name = "haproxy-mtls" if mtls else "haproxy"
    a_port, b_port = setup.ports.take(), setup.ports.take()
    certs = setup.get_certs() if mtls else None
    ca = certs.ca if certs else None
    b = setup.start_haproxy(
        f"{name}-b",
        haproxy_conf(
            "hop_b",
            b_port,
            setup.app_port,
            setup.max_conns,
            serve_tls=certs.app if certs else None,
            ca=ca,
        ),
    )
    a = setup.start_haproxy(
        f"{name}-a",
        haproxy_conf(
            "hop_a",
            a_port,
            b_port,
            setup.max_conns,
            upstream_tls=certs.client if certs else None,
            ca=ca,
        ),
    )
    wait_serving(a_port, [a, b], setup.args.ready_timeout)
    link = "mTLS 1.3" if mtls else "plain"
    chain = Chain(
        name,
        a_port,
        [a, b],
        f"wrk -> haproxy A :{a_port} -({link})-> haproxy B :{b_port} -> app :{setup.app_port}",
    )
    if certs is not None and not rejects_client_without_cert(b_port, certs.ca):
        chain.notes.append("WARNING: hop B accepted a TLS client without a certificate")
    return chain


def mesh_binary(setup: Setup) -> Path:
    mesh = Path(setup.args.mesh)
    if not (mesh.is_file() and os.access(mesh, os.X_OK)):
        raise Skipped(f"{mesh} not found (the sidecar CLI is not installed yet)")
    return mesh


def mesh_sidecar_help(setup: Setup) -> str:
    if setup.mesh_help is None:
        mesh = mesh_binary(setup)
        try:
            done = subprocess.run(
                [str(mesh), "sidecar", "--help"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SetupFailed(f"`{mesh} sidecar --help` did not finish in 60s") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
            raise SetupFailed(
                f"`{mesh} sidecar --help` exited with status {done.returncode}:\n{tail}"
            )
        setup.mesh_help = done.stdout + done.stderr
    return setup.mesh_help


def start_mesh_pair(
    setup: Setup, name: str, *, noop_layers: int, mtls: bool, h2: bool = False
) -> Chain:
    mesh = mesh_binary(setup)
    if mtls and "--tls-cert" not in mesh_sidecar_help(setup):
        raise Skipped("mTLS not available yet (`mesh sidecar --help` has no --tls-cert)")
    a_port, a_admin = setup.ports.take(), setup.ports.take()
    b_port, b_admin = setup.ports.take(), setup.ports.take()
    env = dict(os.environ)
    env.pop("MESH_BENCH_NOOP_LAYERS", None)
    if noop_layers:
        env["MESH_BENCH_NOOP_LAYERS"] = str(noop_layers)
    tls_b: list[str] = []
    tls_a: list[str] = []
    if mtls:
        certs = setup.get_certs()
        tls_b = ["--tls-cert", str(certs.app.cert), "--tls-key", str(certs.app.key)]
        tls_b += ["--tls-roots", str(certs.ca)]
        tls_a = ["--tls-cert", str(certs.client.cert), "--tls-key", str(certs.client.key)]
        tls_a += ["--tls-roots", str(certs.ca)]
    catalog = setup.workdir / f"{name}-catalog.yaml"
    catalog.write_text(f'services:\n  app: ["{LOOPBACK}:{b_port}"]\n')
    b = setup.procs.start(
        f"{name}-b",
        [
            *(str(mesh), "sidecar", "--service", "app", "--app-port", str(setup.app_port)),
            *("--listen", f"{LOOPBACK}:{b_port}", "--admin", f"{LOOPBACK}:{b_admin}"),
            *tls_b,
        ],
        cpu=setup.server_cpu,
        env=env,
        log_path=setup.workdir / f"{name}-b.log",
    )
    a = setup.procs.start(
        f"{name}-a",
        [
            *(str(mesh), "sidecar", "--service", "client"),
            *("--upstream", f"app={a_port}/http2" if h2 else f"app={a_port}"),
            *("--catalog", str(catalog), "--admin", f"{LOOPBACK}:{a_admin}"),
            *tls_a,
        ],
        cpu=setup.server_cpu,
        env=env,
        log_path=setup.workdir / f"{name}-a.log",
    )
    wait_ready(b_admin, b, setup.args.ready_timeout)
    wait_ready(a_admin, a, setup.args.ready_timeout)
    wait_serving(a_port, [a, b], setup.args.ready_timeout)
    link = ("mTLS" if mtls else "plain") + (", HTTP/2" if h2 else "")
    extra = f", {noop_layers} no-op layers each" if noop_layers else ""
    chain = Chain(
        name,
        a_port,
        [a, b],
        f"{'h2load' if h2 else 'wrk'} -> mesh A :{a_port} -({link})-> mesh B :{b_port} "
        f"-> app :{setup.app_port}{extra}",
        load="h2load" if h2 else "wrk",
    )
    if mtls and not rejects_client_without_cert(b_port, setup.get_certs().ca):
        chain.notes.append("WARNING: hop B accepted a TLS client without a certificate")
    return chain


STARTERS: dict[str, Callable[[Setup], Chain]] = {
    "direct": start_direct,
    "nginx": lambda s: start_nginx_pair(s, mtls=False),
    "nginx-mtls": lambda s: start_nginx_pair(s, mtls=True),
    "haproxy": lambda s: start_haproxy_pair(s, mtls=False),
    "haproxy-mtls": lambda s: start_haproxy_pair(s, mtls=True),
    "mesh": lambda s: start_mesh_pair(s, "mesh", noop_layers=0, mtls=False),
    "mesh-layers10": lambda s: start_mesh_pair(s, "mesh-layers10", noop_layers=10, mtls=False),
    "mesh-mtls": lambda s: start_mesh_pair(s, "mesh-mtls", noop_layers=0, mtls=True),
    "nginx-h2": lambda s: start_nginx_pair(s, mtls=False, h2=True),
    "mesh-h2": lambda s: start_mesh_pair(s, "mesh-h2", noop_layers=0, mtls=False, h2=True),
}


def start_contender(setup: Setup, name: str) -> Chain:
    """Start one contender; on failure stop whatever part of it did start."""
    before = list(setup.procs.tracked)
    try:
        return STARTERS[name](setup)
    except (Skipped, SetupFailed):
        for proc in [p for p in setup.procs.tracked if p not in before]:
            setup.procs.stop(proc)  # a half-started pair must not idle on the server CPU
        raise


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _to_ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not match:
        raise ValueError(f"unknown latency {value!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    def need(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output has no match for {pattern!r}:\n{output}")
        return match

    percentiles = {
        int(m.group(1)): _to_ms(m.group(2))
        for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.MULTILINE)
    }
    if set(percentiles) != {50, 75, 90, 99}:
        raise ValueError(f"wrk output lacks the latency distribution:\n{output}")
    done = need(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if errors:
        socket_errors = dict(zip(socket_errors, map(int, errors.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_to_ms(done.group(2) + done.group(3)) / 1000.0,
        rps=float(need(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=percentiles[50],
        p75_ms=percentiles[75],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def run_wrk(setup: Setup, port: int, connections: int, seconds: int, cpu: int | None) -> str:
    argv = ["wrk", "-t", str(min(setup.args.threads, connections)), "-c", str(connections)]
    argv += ["-d", f"{seconds}s", "--latency", "--timeout", "5s", f"http://{LOOPBACK}:{port}/"]
    log_path = setup.workdir / "wrk.log"
    log_path.write_bytes(b"")
    proc = setup.procs.start("wrk", argv, cpu=cpu, log_path=log_path)
    try:
        proc.popen.wait(timeout=seconds + 30)  # wrk stops itself after -d; this is a backstop
    except subprocess.TimeoutExpired:
        log(f"  wrk did not stop after {seconds + 30}s; killing it")
    finally:
        setup.procs.stop(proc, grace=2.0)
    return log_path.read_text(errors="replace")


def run_h2load(setup: Setup, port: int, connections: int, seconds: int, cpu: int | None) -> str:
    """HTTP/2 load for the -h2 rows: h2c prior knowledge, `H2_STREAMS` streams each; every
    request's latency goes to h2load.tsv (parse_h2load takes the percentiles from it)."""
    threads = min(setup.args.threads, connections)
    argv = ["h2load", "-t", str(threads), "-c", str(connections), "-m", str(H2_STREAMS)]
    argv += ["-D", str(seconds), "-T", "5", "--log-file", str(setup.workdir / "h2load.tsv")]
    argv.append(f"http://{LOOPBACK}:{port}/")
    log_path = setup.workdir / "h2load.log"
    log_path.write_bytes(b"")
    proc = setup.procs.start("h2load", argv, cpu=cpu, log_path=log_path)
    try:
        proc.popen.wait(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        log(f"  h2load did not stop after {seconds + 30}s; killing it")
    finally:
        setup.procs.stop(proc, grace=2.0)
    return log_path.read_text(errors="replace")


def run_load(setup: Setup, chain: Chain, connections: int, seconds: int, cpu: int | None) -> str:
    if chain.load == "h2load":
        if shutil.which("h2load") is None:
            raise ValueError("h2load is missing (apt-get install nghttp2-client)")
        return run_h2load(setup, chain.port, connections, seconds, cpu)
    return run_wrk(setup, chain.port, connections, seconds, cpu)


def parse_h2load(output: str, latencies: Path) -> WrkResult:
    """h2load's summary, with percentiles from its per-request log (start, status, us)."""
    done = re.search(r"finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        output,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if done is None or counts is None or codes is None:
        raise ValueError(f"h2load output not understood:\n{output}")
    times: list[float] = []
    with contextlib.suppress(OSError):
        for line in latencies.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[2].isdigit():
                times.append(int(parts[2]) / 1000.0)
    if not times:
        raise ValueError(f"h2load wrote no per-request latencies:\n{output}")
    times.sort()

    def pct(p: int) -> float:
        return times[min(len(times) - 1, len(times) * p // 100)]

    _, _, finished, _, failed, errored, timeouts = map(int, counts.groups())
    return WrkResult(
        requests=finished,
        seconds=_to_ms(done.group(1) + done.group(2)) / 1000.0,
        rps=float(done.group(3)),
        p50_ms=pct(50),
        p75_ms=pct(75),
        p90_ms=pct(90),
        p99_ms=pct(99),
        non_2xx=sum(map(int, codes.groups()[1:])),
        socket_errors={"failed": failed, "errored": errored, "timeout": timeouts},
    )


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One measured wrk run of one contender at one connection count."""

    round: int
    wrk: WrkResult
    hop_cpu_ms: float
    hop_a_cpu_ms: float
    hop_b_cpu_ms: float
    app_cpu_ms: float
    memory: Memory
    wall_ms: float
    server_cpu: CpuTimes  # the CPU of app + hops, over the measured run
    wrk_cpu: CpuTimes  # the CPU of wrk, over the measured run

    @property
    def other_ms(self) -> float:
        """Time the server CPU was busy but not for the app or the hops: outside noise.

        Interrupt time counts as busy: on kernels that charge softirq ticks to the running
        process too (the usual case) the hops' own loopback work is already in their times.
        """
        busy = self.server_cpu.busy_ms + self.server_cpu.irq_ms
        return max(busy - self.hop_cpu_ms - self.app_cpu_ms, 0.0)

    @property
    def other_pct(self) -> float:
        return self.other_ms / self.wall_ms * 100.0 if self.wall_ms else 0.0

    def per_request(self, cpu_ms: float) -> float | None:
        return cpu_ms / self.wrk.requests if self.wrk.requests else None


@dataclass
class Row:
    contender: str
    connections: int
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def measure(setup: Setup, chain: Chain, connections: int, round_no: int) -> Sample:
    roots_a = [chain.hops[0].pid] if chain.hops else []
    roots_b = [chain.hops[1].pid] if len(chain.hops) > 1 else []
    app_roots = [setup.app.pid] if setup.app else []
    server_cpu, wrk_cpu = setup.server_cpu, setup.args.wrk_cpu
    before_a, before_b, before_app = cpu_ticks(roots_a), cpu_ticks(roots_b), cpu_ticks(app_roots)
    before_server, before_wrk = cpu_times(server_cpu), cpu_times(wrk_cpu)
    started = time.monotonic()
    output = run_load(setup, chain, connections, setup.args.duration, wrk_cpu)
    wall_ms = (time.monotonic() - started) * 1000.0
    after_server, after_wrk = cpu_times(server_cpu), cpu_times(wrk_cpu)
    after_a, after_b, after_app = cpu_ticks(roots_a), cpu_ticks(roots_b), cpu_ticks(app_roots)
    result = (
        parse_h2load(output, setup.workdir / "h2load.tsv")
        if chain.load == "h2load"
        else parse_wrk(output)
    )
    hop_a = cpu_ms_between(before_a, after_a)
    hop_b = cpu_ms_between(before_b, after_b)
    return Sample(
        round=round_no,
        wrk=result,
        hop_cpu_ms=hop_a + hop_b,
        hop_a_cpu_ms=hop_a,
        hop_b_cpu_ms=hop_b,
        app_cpu_ms=cpu_ms_between(before_app, after_app),
        memory=memory(roots_a + roots_b),
        wall_ms=wall_ms,
        server_cpu=after_server.minus(before_server),
        wrk_cpu=after_wrk.minus(before_wrk),
    )


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(row: Row) -> dict[str, Any]:
    samples = row.samples
    if not samples:
        return {}
    rps = [s.wrk.rps for s in samples]
    mid = statistics.median(rps)
    has_hops = any(s.memory.processes for s in samples)
    return {
        "rounds": len(samples),
        "rps": mid,
        "rps_spread_pct": (max(rps) - min(rps)) / mid * 100.0 if mid else None,
        "p50_ms": median(s.wrk.p50_ms for s in samples),
        "p99_ms": median(s.wrk.p99_ms for s in samples),
        "cpu_ms_per_req": median(s.per_request(s.hop_cpu_ms) for s in samples)
        if has_hops
        else None,
        "cpu_ms_per_req_hop_a": median(s.per_request(s.hop_a_cpu_ms) for s in samples)
        if has_hops
        else None,
        "cpu_ms_per_req_hop_b": median(s.per_request(s.hop_b_cpu_ms) for s in samples)
        if has_hops
        else None,
        "app_cpu_ms_per_req": median(s.per_request(s.app_cpu_ms) for s in samples),
        "rss_peak_kb": max(s.memory.peak_kb for s in samples) or None,
        "pss_kb": max(s.memory.pss_kb for s in samples) or None,
        "other_pct": median(s.other_pct for s in samples),
        "wrk_cpu_busy_pct": median(
            (s.wrk_cpu.busy_ms + s.wrk_cpu.irq_ms) / s.wall_ms * 100.0 for s in samples
        ),
        "errors": sum(s.wrk.errors for s in samples),
        "requests": sum(s.wrk.requests for s in samples),
    }


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


# --------------------------------------------------------------------------- report


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def mesh_interpreter(mesh: Path) -> str:
    """The Python the sidecar runs on (version and real path): the pair needs 4 to 7 %
    less CPU on a distribution's optimised build than on a plain source build."""
    try:
        first = Path(mesh).read_bytes().split(b"\n", 1)[0]
    except OSError as exc:
        return f"unknown ({exc})"
    if not first.startswith(b"#!"):
        return "unknown (not a script)"
    code = "import os, sys; print(sys.version.split()[0], 'at', os.path.realpath(sys.executable))"
    return tool_version([first[2:].decode().strip(), "-c", code])


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    governor = ""
    with contextlib.suppress(OSError):
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text()
    mesh_version = ""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        mesh_version = importlib.metadata.version("pymesh-sidecar")
    git_rev = tool_version(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "cpu_governor": governor.strip() or None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "openssl": ssl.OPENSSL_VERSION,
        "nginx": tool_version(["nginx", "-v"]),
        "haproxy": tool_version(["haproxy", "-v"]),
        "wrk": tool_version(["wrk", "-v"]),
        "mesh_binary": str(args.mesh),
        "mesh_python": mesh_interpreter(args.mesh),
        "mesh_package_version": mesh_version or None,
        "git_revision": git_rev,
        "clock_ticks_per_s": CLK_TCK,
    }


def fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(
    connections: Sequence[int],
    names: Sequence[str],
    summaries: dict[tuple[str, int], dict[str, Any]],
    statuses: dict[str, dict[str, Any]],
) -> None:
    header = (
        f"{'contender':<14} {'req/s':>9} {'spread':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU ms/req':>10} {'A+B us/req':>11} {'RSS MB':>7} "
        f"{'req/s vs':>8} {'p99 vs':>7} {'CPU vs':>7} {'errors':>6} {'other':>6}"
    )
    noisy: list[str] = []
    for conns in connections:
        log()
        log(f"== {conns} connections " + "=" * (len(header) - 18 - len(str(conns))))
        log(header)
        log("-" * len(header))
        for name in names:
            status = statuses.get(name, {})
            summary = summaries.get((name, conns), {})
            if not summary:
                note = status.get("note") or "no completed run"
                log(f"{name:<14} {status.get('status', 'skipped')}: {note.splitlines()[0]}")
                continue
            base = summaries.get((BASELINE[name], conns), {})
            a_us = summary["cpu_ms_per_req_hop_a"]
            b_us = summary["cpu_ms_per_req_hop_b"]
            split = "-" if a_us is None or b_us is None else f"{a_us * 1e3:.1f}+{b_us * 1e3:.1f}"
            rss = summary["rss_peak_kb"]
            log(
                f"{name:<14} {summary['rps']:>9.0f} {fmt(summary['rps_spread_pct'], '.1f'):>5}% "
                f"{fmt(summary['p50_ms'], '.3f'):>7} {fmt(summary['p99_ms'], '.3f'):>7} "
                f"{fmt(summary['cpu_ms_per_req'], '.4f'):>10} {split:>11} "
                f"{fmt(rss / 1024 if rss else None, '.1f'):>7} "
                f"{fmt_ratio(ratio(summary['rps'], base.get('rps'))):>8} "
                f"{fmt_ratio(ratio(summary['p99_ms'], base.get('p99_ms'))):>7} "
                f"{fmt_ratio(ratio(summary['cpu_ms_per_req'], base.get('cpu_ms_per_req'))):>7} "
                f"{summary['errors']:>6} {fmt(summary['other_pct'], '.1f'):>5}%"
            )
            if (summary["other_pct"] or 0.0) > 5.0:
                noisy.append(f"{name}@{conns}")
            if status.get("status") == "failed":
                log(f"{'':<14} FAILED later: {status['note'].splitlines()[0]}")
    log()
    log(
        "Ratios: plain rows vs `nginx`, -mtls rows vs `nginx-mtls`, -h2 rows vs `nginx-h2`. "
        "req/s above 1.00x and p99/CPU below 1.00x beat nginx."
    )
    log(
        "CPU and RSS cover hop A + hop B (all processes and threads); spread = "
        "(max-min)/median of req/s over rounds;"
    )
    log(
        "other = share of the server CPU used by processes outside the chain during the run "
        "(outside noise)."
    )
    if noisy:
        log(
            f"WARNING: other > 5% for {', '.join(noisy)}: another workload shared the server "
            "CPU; rerun on a quiet machine before trusting those rows."
        )


def bar_checks(
    connections: Sequence[int],
    summaries: dict[tuple[str, int], dict[str, Any]],
    statuses: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for conns in connections:
        for name, base_name, min_rps, max_p99 in BARS:
            row = summaries.get((name, conns))
            base = summaries.get((base_name, conns))
            status = statuses.get(name, {})
            if status.get("status") == "failed" and base:
                checks.append(
                    {
                        "connections": conns,
                        "check": f"{name} vs {base_name}",
                        "result": "FAIL",
                        "note": f"{name} failed: {status['note'].splitlines()[0]}",
                    }
                )
                continue
            if not row or not base:
                missing = name if not row else base_name
                if missing in statuses:
                    note = statuses[missing].get("note") or "not measured"
                else:
                    note = "not selected (--only)"
                checks.append(
                    {
                        "connections": conns,
                        "check": f"{name} vs {base_name}",
                        "result": "SKIP",
                        "note": f"{missing}: {note.splitlines()[0]}",
                    }
                )
                continue
            rps_ratio = ratio(row["rps"], base["rps"])
            p99_ratio = ratio(row["p99_ms"], base["p99_ms"])
            checks.append(
                {
                    "connections": conns,
                    "check": f"{name} req/s vs {base_name}",
                    "ratio": rps_ratio,
                    "limit": f">= {min_rps}",
                    "result": "PASS" if rps_ratio is not None and rps_ratio >= min_rps else "FAIL",
                }
            )
            checks.append(
                {
                    "connections": conns,
                    "check": f"{name} p99 vs {base_name}",
                    "ratio": p99_ratio,
                    "limit": f"<= {max_p99}",
                    "result": "PASS" if p99_ratio is not None and p99_ratio <= max_p99 else "FAIL",
                }
            )
    return checks


def print_bar(checks: Sequence[dict[str, Any]]) -> None:
    log()
    log("Bar check (mesh req/s >= 0.5 x nginx, mesh p99 <= 2 x nginx; same for -mtls):")
    for check in checks:
        if "note" in check:
            log(
                f"  {check['result']}  c={check['connections']:<4} {check['check']}: "
                f"{check['note']}"
            )
        else:
            log(
                f"  {check['result']}  c={check['connections']:<4} {check['check']:<30} "
                f"{fmt(check['ratio'], '.2f')}x (need {check['limit']})"
            )


def print_layer_cost(
    connections: Sequence[int], summaries: dict[tuple[str, int], dict[str, Any]]
) -> None:
    for conns in connections:
        plain = summaries.get(("mesh", conns), {}).get("cpu_ms_per_req")
        layered = summaries.get(("mesh-layers10", conns), {}).get("cpu_ms_per_req")
        if plain is not None and layered is not None:
            extra_us = (layered - plain) * 1e3
            # Ten layers in each of the two sidecars.
            log(
                f"  info  c={conns:<4} mesh-layers10 costs {extra_us:+.1f} us CPU/request over "
                f"mesh, about {extra_us / 20:+.2f} us per no-op layer per hop"
            )


# --------------------------------------------------------------------------- main


def ensure_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not missing:
        return
    if "taskset" in missing:
        raise SystemExit("taskset (util-linux) is missing; it is needed for CPU pinning")
    command = ["apt-get", "install", "-y", *APT_PACKAGES]
    if os.geteuid() != 0:
        raise SystemExit(
            f"missing tools: {', '.join(missing)}. Install them with: sudo {' '.join(command)}"
        )
    log(f"missing tools: {', '.join(missing)}; running: {' '.join(command)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(command, env=env, check=False, timeout=900)
    if done.returncode != 0:
        log("apt-get install failed; running: apt-get update, then installing again")
        subprocess.run(["apt-get", "update"], env=env, check=False, timeout=900)
        subprocess.run(command, env=env, check=False, timeout=900)
    still = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if still:
        raise SystemExit(f"still missing after apt-get: {', '.join(still)}")


def raise_fd_limit(connections: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(4096, 8 * connections)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def choose_cpus(args: argparse.Namespace) -> tuple[int | None, int | None, str]:
    allowed = sorted(os.sched_getaffinity(0))
    if args.no_pin:
        return None, None, "no CPU pinning (--no-pin)"
    wrk_cpu = args.wrk_cpu if args.wrk_cpu is not None else allowed[0]
    if args.server_cpu is not None:
        server_cpu = args.server_cpu
    else:
        server_cpu = allowed[1] if len(allowed) > 1 else allowed[0]
    for cpu in (wrk_cpu, server_cpu):
        if cpu not in allowed:
            raise SystemExit(f"CPU {cpu} is not available to this process (allowed: {allowed})")
    text = (
        f"wrk: taskset -c {wrk_cpu} ({args.threads} threads); "
        f"app + hop A + hop B: taskset -c {server_cpu}; this script: CPU {wrk_cpu}"
    )
    if wrk_cpu == server_cpu:
        text += "  (WARNING: only one CPU, load generator and servers share it)"
    return wrk_cpu, server_cpu, text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def int_list(text: str) -> list[int]:
        values = [int(part) for part in text.split(",") if part.strip()]
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError("expected positive integers like 32,64")
        return values

    def name_list(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [n for n in names if n not in CONTENDERS]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}"
            )
        return names

    parser = argparse.ArgumentParser(
        description="Loopback benchmark: mesh sidecar pair vs nginx/haproxy pairs (wrk).",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (default 3)")
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per measured wrk run (default 10)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="seconds of unmeasured wrk load before every measured run (default 2, 0 = none)",
    )
    parser.add_argument(
        "--connections", type=int_list, default=[32, 64], help="comma list (default 32,64)"
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--only", type=name_list, default=None, help=f"subset of: {','.join(CONTENDERS)}"
    )
    parser.add_argument(
        "--json", type=Path, default=DEFAULT_JSON, help=f"JSON output (default {DEFAULT_JSON})"
    )
    parser.add_argument("--mesh", type=Path, default=DEFAULT_MESH, help="the `mesh` executable")
    parser.add_argument("--wrk-cpu", type=int, default=None, help="CPU for wrk (default 0)")
    parser.add_argument(
        "--server-cpu", type=int, default=None, help="CPU for app and hops (default 1)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything")
    parser.add_argument(
        "--ready-timeout", type=float, default=30.0, help="seconds to wait for readiness"
    )
    parser.add_argument("--keep-temp", action="store_true", help="keep configs and logs")
    parser.add_argument("--verbose", action="store_true", help="print every command started")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--rounds, --duration and --threads must be >= 1, --warmup >= 0")
    return args


def died(chain: Chain, setup: Setup, statuses: dict[str, dict[str, Any]], prefix: str) -> bool:
    """True (and the contender marked failed) when a hop or the app is no longer running."""
    gone = [p for p in chain.hops if not p.alive()]
    if setup.app is not None and not setup.app.alive():
        gone.append(setup.app)
    if not gone:
        return False
    note = "process died: " + ", ".join(f"{p.name} {p.exit_text()}" for p in gone)
    logs = "\n".join(f"  {p.name} ({p.log_path}):\n{p.log_tail()}" for p in gone)
    statuses[chain.name] = {"status": "failed", "note": f"{note}\n{logs}"}
    log(f"{prefix} {chain.name:<13} FAILED: {note}\n{logs}")
    return True


def short_version(text: str) -> str:
    """`HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://...` -> up to the version."""
    words = text.replace("nginx version: ", "").split()
    return " ".join(words[:3] if words and words[0] == "HAProxy" else words[:2])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    names = [n for n in CONTENDERS if args.only is None or n in args.only]
    ensure_tools()
    raise_fd_limit(max(args.connections))
    args.wrk_cpu, server_cpu, pinning = choose_cpus(args)
    if args.wrk_cpu is not None:
        os.sched_setaffinity(0, {args.wrk_cpu})

    started = datetime.now(UTC)
    machine = machine_info(args)
    load_before = os.getloadavg()
    log(f"mesh bench  {started:%Y-%m-%d %H:%M:%S} UTC")
    log(
        f"machine     {machine['cpu_model']}, nproc {machine['nproc']}, "
        f"kernel {machine['kernel']}, python {machine['python']}"
    )
    log(
        f"tools       {short_version(machine['nginx'])}, {short_version(machine['haproxy'])}, "
        f"{short_version(machine['wrk'])}, {ssl.OPENSSL_VERSION}"
    )
    log(f"sidecar     {args.mesh}, python {machine['mesh_python']}")
    log(f"pinning     {pinning}")
    log(
        f"load        wrk keep-alive, {args.threads} threads, connections "
        f"{','.join(map(str, args.connections))}; {args.rounds} rounds x {args.duration}s "
        f"(+{args.warmup}s warm-up before each), contenders interleaved, median of rounds"
    )
    if load_before[0] > 0.5:
        log(
            f"WARNING     load average is {load_before[0]:.2f} before the run: something else "
            "is using the CPUs, results will be noisy"
        )

    procs = Processes(verbose=args.verbose)
    workdir = Path(tempfile.mkdtemp(prefix="mesh-bench-"))
    workdir.chmod(0o755)  # nginx workers run as nobody when started by root
    setup = Setup(args=args, procs=procs, ports=Ports(), workdir=workdir, server_cpu=server_cpu)
    chains: dict[str, Chain] = {}
    statuses: dict[str, dict[str, Any]] = {n: {"status": "pending", "note": ""} for n in names}
    rows: dict[tuple[str, int], Row] = {(n, c): Row(n, c) for n in names for c in args.connections}
    interrupted = False
    fatal = ""
    try:
        log()
        log("starting the app and the contenders")
        setup.start_app()
        log(f"  app           nginx :{setup.app_port} (pid {setup.app.pid if setup.app else '?'})")
        for name in names:
            try:
                chain = start_contender(setup, name)
            except Skipped as exc:
                statuses[name] = {"status": "skipped", "note": str(exc)}
                log(f"  {name:<13} SKIPPED: {exc}")
                continue
            except SetupFailed as exc:
                statuses[name] = {"status": "failed", "note": str(exc)}
                log(f"  {name:<13} FAILED to start: {exc}")
                continue
            chains[name] = chain
            statuses[name] = {
                "status": "ok",
                "note": "; ".join(chain.notes),
                "chain": chain.description,
                "pids": [p.pid for p in chain.hops],
            }
            log(f"  {name:<13} {chain.description}")
            for note in chain.notes:
                log(f"  {'':<13} {note}")
        procs.remember_descendants()

        order = [n for n in names if n in chains]
        seconds = args.rounds * len(args.connections) * len(order) * (args.duration + args.warmup)
        log(f"measuring {len(order)} contenders, about {seconds // 60}m{seconds % 60:02d}s")
        for round_no in range(1, args.rounds + 1):
            # Rotate the order each round so no contender always runs first or last.
            shift = (round_no - 1) % max(len(order), 1)
            this_round = order[shift:] + order[:shift]
            for conns in args.connections:
                for name in this_round:
                    live = chains.get(name)
                    if live is None:
                        continue
                    if died(live, setup, statuses, f"[round {round_no}] c={conns:<4}"):
                        del chains[name]
                        continue
                    if args.warmup:
                        run_load(setup, live, conns, args.warmup, args.wrk_cpu)
                    try:
                        sample = measure(setup, live, conns, round_no)
                    except ValueError as exc:
                        rows[(name, conns)].failures.append(str(exc))
                        log(f"[round {round_no}] c={conns:<4} {name:<13} wrk failed: {exc}")
                        continue
                    if died(live, setup, statuses, f"[round {round_no}] c={conns:<4}"):
                        del chains[name]  # the sample is not kept: a hop died during it
                        continue
                    rows[(name, conns)].samples.append(sample)
                    cpu = sample.per_request(sample.hop_cpu_ms) if live.hops else None
                    errors = f"  errors {sample.wrk.errors}" if sample.wrk.errors else ""
                    log(
                        f"[round {round_no}/{args.rounds}] c={conns:<4} {name:<13} "
                        f"{sample.wrk.rps:>9.0f} req/s  p50 {sample.wrk.p50_ms:.3f} ms  "
                        f"p99 {sample.wrk.p99_ms:.3f} ms  "
                        f"CPU {fmt(cpu * 1e3 if cpu is not None else None, '.1f')} us/req{errors}"
                    )
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted: stopping every process started here")
    except SetupFailed as exc:
        fatal = str(exc)
        log(f"\nFAILED: {exc}")
    finally:
        procs.stop_all()
        if args.keep_temp:
            log(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    summaries = {key: summarize(row) for key, row in rows.items() if row.samples}
    if summaries:
        print_table(args.connections, names, summaries, statuses)
    checks = bar_checks(args.connections, summaries, statuses)
    if not fatal:
        print_bar(checks)
        print_layer_cost(args.connections, summaries)

    report = {
        "schema": 1,
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "interrupted": interrupted,
        "fatal": fatal or None,
        "args": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "only": args.only,
        },
        "pinning": {"wrk_cpu": args.wrk_cpu, "server_cpu": server_cpu, "text": pinning},
        "machine": machine,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "contenders": statuses,
        "baselines": {n: BASELINE[n] for n in names},
        "results": [
            {
                "contender": row.contender,
                "connections": row.connections,
                "baseline": BASELINE[row.contender],
                "median": summaries.get(key, {}),
                "ratios": ratios_for(key, summaries),
                "failures": row.failures,
                "rounds": [sample_json(s) for s in row.samples],
            }
            for key, row in rows.items()
        ],
        "bar": checks,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    log(f"\nJSON written to {args.json}")
    if interrupted:
        return 130
    if fatal:
        return 2
    return 1 if any(c["result"] == "FAIL" for c in checks) else 0


def ratios_for(
    key: tuple[str, int], summaries: dict[tuple[str, int], dict[str, Any]]
) -> dict[str, float | None]:
    row = summaries.get(key, {})
    base = summaries.get((BASELINE[key[0]], key[1]), {})
    return {
        "rps": ratio(row.get("rps"), base.get("rps")),
        "p50": ratio(row.get("p50_ms"), base.get("p50_ms")),
        "p99": ratio(row.get("p99_ms"), base.get("p99_ms")),
        "cpu_per_req": ratio(row.get("cpu_ms_per_req"), base.get("cpu_ms_per_req")),
    }


def sample_json(sample: Sample) -> dict[str, Any]:
    wrk = sample.wrk
    return {
        "round": sample.round,
        "requests": wrk.requests,
        "seconds": wrk.seconds,
        "rps": wrk.rps,
        "p50_ms": wrk.p50_ms,
        "p75_ms": wrk.p75_ms,
        "p90_ms": wrk.p90_ms,
        "p99_ms": wrk.p99_ms,
        "non_2xx": wrk.non_2xx,
        "socket_errors": wrk.socket_errors,
        "hop_cpu_ms": sample.hop_cpu_ms,
        "hop_a_cpu_ms": sample.hop_a_cpu_ms,
        "hop_b_cpu_ms": sample.hop_b_cpu_ms,
        "app_cpu_ms": sample.app_cpu_ms,
        "cpu_ms_per_req": (
            sample.per_request(sample.hop_cpu_ms) if sample.memory.processes else None
        ),
        "app_cpu_ms_per_req": sample.per_request(sample.app_cpu_ms),
        "hop_rss_peak_kb": sample.memory.peak_kb,
        "hop_rss_kb": sample.memory.rss_kb,
        "hop_pss_kb": sample.memory.pss_kb,
        "hop_processes": sample.memory.processes,
        "wall_ms": sample.wall_ms,
        "server_cpu_ms": vars(sample.server_cpu),
        "wrk_cpu_ms": vars(sample.wrk_cpu),
        "other_on_server_cpu_ms": sample.other_ms,
        "other_on_server_cpu_pct": sample.other_pct,
    }


if __name__ == "__main__":
    sys.exit(main())
