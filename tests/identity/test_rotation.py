"""Leaf rotation without restarts, under load, and a broken rotation (row 24).

A real sidecar pair with mTLS between them:

    load threads -> client sidecar (upstream `app`) --mTLS--> app sidecar -> recording upstream
                                   (upstream `probe`) --mTLS--> TLS recording peer

50 long chunked streams stay open while short requests run through the pair; mid-way both
sidecars' leaves are re-issued with `mesh ca issue` into the directories they load from.
Every request must succeed, every stream must arrive byte-exact, and new handshakes must
show the new serials: the app sidecar's to a fresh TLS client, the client sidecar's to the
probe peer (which closes after each response, so each probe request is a new handshake).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.identity.conftest import LogWatch
from tests.support.certs import Leaf, Pki, client_context, server_serial, spiffe_id
from tests.support.processes import MESH, MeshProcess, Sidecars, free_port, wait_until, write_yaml
from tests.support.rawclient import HttpConnection, IncompleteResponse
from tests.support.tlsclient import TlsHttpConnection
from tests.support.tlspeer import TlsRecordingPeer
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply

LONG_STREAMS = 50
SHORT_MIN = 2000
SHORT_WORKERS = 4
#: The long streams stay open at least this long (and until the load is done).
LONG_STREAM_SECONDS = 3.0
#: Seconds from the new files being in place to new handshakes showing them (poll is 1 s).
ROTATION_DEADLINE = 2.5


def mesh_ca_issue(pki: Pki, service: str, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MESH, "ca", "issue", "--ca", str(pki.ca_dir), "--service", service, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def issued_serial(proc: subprocess.Popen[str]) -> int:
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    found = re.search(r"serial ([0-9a-f]+)", out)
    assert found, out
    return int(found.group(1), 16)


def chunk(stream: int, n: int) -> bytes:
    return hashlib.sha256(f"{stream}:{n}".encode()).digest() * 32  # 1 KiB


@dataclass
class SlowStreams:
    """The upstream side of the long streams: chunks every 50 ms until released."""

    release: threading.Event = field(default_factory=threading.Event)
    started: set[int] = field(default_factory=set)
    #: stream -> (sha256, size) of everything the upstream sent.
    sent: dict[int, tuple[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def body(self, stream: int) -> Iterator[bytes]:
        with self.lock:
            self.started.add(stream)
        hasher, size = hashlib.sha256(), 0
        for n in itertools.count():
            data = chunk(stream, n)
            hasher.update(data)
            size += len(data)
            yield data
            if n >= 600 or (self.release.is_set() and n >= 3):
                break  # bounded: 600 chunks is 30 s, far past any release
            self.release.wait(0.05)
        with self.lock:
            self.sent[stream] = (hasher.hexdigest(), size)


def handler(streams: SlowStreams, request: RecordedRequest) -> Reply:
    if request.target.startswith("/long/"):
        stream = int(request.target.rsplit("/", 1)[1])
        return Reply(framing="chunked", body=streams.body(stream))
    # One write for head and body: the upstream's sockets do not disable Nagle, and a
    # second small write would wait for a delayed ACK.
    body = request.target.encode()
    return Reply(raw=b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


@dataclass
class Pair:
    client_proc: MeshProcess
    app_proc: MeshProcess
    upstream: RecordingUpstream
    probe: TlsRecordingPeer
    app_port: int
    client_port: int
    probe_port: int
    client_leaf: Leaf
    app_leaf: Leaf


@pytest.fixture
def pair(pki: Pki, sidecars: Sidecars) -> Iterator[Pair]:
    probe_leaf = pki.issue("probe")
    with (
        RecordingUpstream() as upstream,
        TlsRecordingPeer(probe_leaf.cert, probe_leaf.key, probe_leaf.roots) as probe,
    ):
        app_leaf, client_leaf = pki.issue("app"), pki.issue("client")
        app_port, client_port, probe_port = free_port(), free_port(), free_port()
        app_proc = sidecars.start(
            "--service", "app", "--app-port", str(upstream.port),
            "--listen", f"127.0.0.1:{app_port}", *app_leaf.flags(), name="app",
        )  # fmt: skip
        catalog = write_yaml(
            sidecars.log_dir / "catalog.yaml",
            {"services": {"app": [f"127.0.0.1:{app_port}"], "probe": [f"127.0.0.1:{probe.port}"]}},
        )
        client_proc = sidecars.start(
            "--service", "client", "--catalog", str(catalog),
            "--upstream", f"app={client_port}", "--upstream", f"probe={probe_port}",
            *client_leaf.flags(), name="client",
        )  # fmt: skip
        yield Pair(
            client_proc,
            app_proc,
            upstream,
            probe,
            app_port,
            client_port,
            probe_port,
            client_leaf,
            app_leaf,
        )
        for proc in (client_proc, app_proc):
            assert proc.proc.poll() is None, proc.logs()


class ShortLoad:
    """Short requests through the pair from a few threads, every answer checked."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0
        self.failures: list[str] = []
        self.threads: list[threading.Thread] = []

    def add_workers(self, count: int) -> None:
        for _ in range(count):
            worker = len(self.threads)
            thread = threading.Thread(target=self._run, args=(worker,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def count(self) -> int:
        with self.lock:
            return self.done

    def _run(self, worker: int) -> None:
        conn: HttpConnection | None = None
        try:
            for n in range(5000):  # bounded; the test stops the load long before
                if self.stop.is_set():
                    return
                target = f"/short/{worker}/{n}"
                try:
                    if conn is None:
                        conn = HttpConnection(self.port, timeout=10)
                    conn.request("GET", target)
                    response = conn.read_response()
                    ok = response.status == 200 and response.body == target.encode()
                    problem = "" if ok else f"{target}: {response.status} {response.body[:200]!r}"
                except (OSError, IncompleteResponse) as exc:
                    problem = f"{target}: {exc!r}"
                with self.lock:
                    self.done += 1
                    if problem:
                        self.failures.append(problem)
                if problem and conn is not None:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self.threads)


def read_long_stream(port: int, stream: int, results: dict[int, object]) -> None:
    try:
        with HttpConnection(port, timeout=15) as conn:
            conn.request("GET", f"/long/{stream}")
            response = conn.read_response(keep_body=0)
            results[stream] = (
                response.status,
                response.framing,
                response.body_sha256,
                response.body_size,
            )
    except (OSError, IncompleteResponse) as exc:
        results[stream] = repr(exc)


def probe_serial(pair: Pair) -> int | None:
    """Send one request to the probe peer; the client serial its new handshake saw."""
    with HttpConnection(pair.probe_port, timeout=5) as conn:
        conn.request("GET", "/probe", host="probe")
        response = conn.read_response()
    assert response.status == 200, response.body[:300]
    return pair.probe.handshakes()[-1].client_serial


@pytest.mark.timeout(90)
def test_rotation_under_load_drops_nothing(pair: Pair, pki: Pki) -> None:
    prober = client_context(pki.issue("prober"))
    assert server_serial(pair.app_port, prober) == pair.app_leaf.serial
    assert probe_serial(pair) == pair.client_leaf.serial

    streams = SlowStreams()
    pair.upstream.handler = lambda request: handler(streams, request)
    results: dict[int, object] = {}
    readers = [
        threading.Thread(target=read_long_stream, args=(pair.client_port, i, results), daemon=True)
        for i in range(LONG_STREAMS)
    ]
    load = ShortLoad(pair.client_port)
    app_log, client_log = LogWatch(pair.app_proc), LogWatch(pair.client_proc)
    try:
        for reader in readers:
            reader.start()
        wait_until(lambda: len(streams.started) == LONG_STREAMS, 15, "all long streams to start")
        streams_open_since = time.monotonic()
        load.add_workers(SHORT_WORKERS)
        wait_until(lambda: load.count() >= 700, 30, "700 short requests before the rotation")

        # Rotate both leaves at once, with the CLI an operator would use.
        issuing = [
            mesh_ca_issue(pki, "app", pair.app_leaf.dir),
            mesh_ca_issue(pki, "client", pair.client_leaf.dir),
        ]
        new_app, new_client = [issued_serial(p) for p in issuing]
        rotated_at = time.monotonic()
        accepted_at_rotation = pair.app_proc.admin("/listeners")["inbound"]["accepted"]
        assert not streams.release.is_set() and not results, "long streams ended too early"

        wait_until(
            lambda: server_serial(pair.app_port, prober) == new_app,
            ROTATION_DEADLINE,
            "the app sidecar to present its new leaf",
        )
        assert server_serial(pair.app_port, prober, server_name="mesh") == new_app
        wait_until(
            lambda: probe_serial(pair) == new_client,
            ROTATION_DEADLINE,
            "the client sidecar to present its new leaf",
        )
        took = time.monotonic() - rotated_at
        assert took <= ROTATION_DEADLINE
        app_log.wait_for(f"loaded certificate serial {new_app:x} for {spiffe_id('app')}")
        client_log.wait_for(f"loaded certificate serial {new_client:x} for {spiffe_id('client')}")

        # 1,000 more after the new leaves are in use, with more concurrency than before:
        # the pool must open new sidecar-to-sidecar connections, each a handshake with
        # both new leaves.
        load.add_workers(2 * SHORT_WORKERS)
        target = max(SHORT_MIN, load.count() + 1000)
        wait_until(
            lambda: (
                load.count() >= target
                and time.monotonic() - streams_open_since >= LONG_STREAM_SECONDS
            ),
            60,
            f"{target} short requests, with the long streams open {LONG_STREAM_SECONDS} s",
        )
        load.join()
        accepted = pair.app_proc.admin("/listeners")["inbound"]["accepted"]
        assert accepted > accepted_at_rotation, "no new sidecar connection after the rotation"
        assert not results, "long streams ended before they were released"
    finally:
        load.stop.set()
        streams.release.set()
        for reader in readers:
            reader.join(20)
        load.join()

    assert load.failures == [], load.failures[:10]
    assert load.count() >= SHORT_MIN
    assert len(results) == LONG_STREAMS
    for stream in range(LONG_STREAMS):
        sha, size = streams.sent[stream]
        assert results[stream] == (200, "chunked", sha, size), (stream, results[stream])
        assert size >= 4 * 1024
    errors = [line for line in app_log.lines() + client_log.lines() if " ERROR " in line]
    assert errors == [], errors[:5]


@pytest.mark.timeout(60)
def test_broken_rotation_keeps_the_old_leaf_serving(pki: Pki, sidecars: Sidecars) -> None:
    leaf = pki.issue("ledger")
    prober = client_context(pki.issue("prober"))
    with RecordingUpstream() as upstream:
        port = free_port()
        proc = sidecars.start(
            "--service", "ledger", "--app-port", str(upstream.port),
            "--listen", f"127.0.0.1:{port}", *leaf.flags(), name="ledger",
        )  # fmt: skip
        old = leaf.serial
        assert server_serial(port, prober) == old

        def still_serving() -> None:
            assert server_serial(port, prober) == old
            with TlsHttpConnection(port, prober) as conn:
                conn.request("GET", "/after-broken-rotation")
                assert conn.read_response().status == 200

        # Garbage where the certificate was, replaced atomically.
        watch = LogWatch(proc)
        garbage = leaf.dir / "cert.pem.new"
        garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        os.replace(garbage, leaf.cert)
        line = watch.wait_for("keeping the current certificate", "cannot read certificate")
        assert str(leaf.cert) in line
        still_serving()

        # A valid certificate whose key is not the one beside it (a half-done rotation).
        other = pki.issue("ledger", name="ledger-elsewhere")
        mismatched = leaf.dir / "cert.pem.new"
        mismatched.write_bytes(other.cert.read_bytes())
        os.replace(mismatched, leaf.cert)
        watch = LogWatch(proc)
        watch.wait_for("keeping the current certificate", "cannot load")
        still_serving()

        # A complete re-issue is picked up again.
        new = issued_serial(mesh_ca_issue(pki, "ledger", leaf.dir))
        wait_until(
            lambda: server_serial(port, prober) == new,
            ROTATION_DEADLINE,
            "the repaired leaf to be served",
        )
        assert proc.proc.poll() is None
