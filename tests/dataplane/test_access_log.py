"""The access log (`--access-log`): one JSON line per request on stdout, without secrets.

Both sidecars of the pair log every request once, with the request id that crossed the
pair, its direction, method, path, status, duration and body sizes. Header values such as
Authorization and Cookie, and query strings, never appear in the log.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.dataplane.conftest import MeshPair
from tests.support.processes import MeshProcess, wait_until
from tests.support.rawclient import HttpConnection
from tests.support.upstream import Reply

FIELDS = {
    "request_id",
    "direction",
    "method",
    "path",
    "status",
    "duration_ms",
    "bytes_in",
    "bytes_out",
}


def records_for(proc: MeshProcess, request_id: str) -> list[dict[str, Any]]:
    records = []
    for line in proc.stdout_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line still being written, or not a log record
        if isinstance(record, dict) and record.get("request_id") == request_id:
            records.append(record)
    return records


def wait_for_record(proc: MeshProcess, request_id: str) -> dict[str, Any]:
    wait_until(lambda: records_for(proc, request_id), 5, f"{proc.name} to log {request_id}")
    (record,) = records_for(proc, request_id)
    return record


def test_one_line_per_request_with_its_fields(mesh: MeshPair) -> None:
    rid = f"log-{uuid.uuid4().hex}"
    body = b"b" * 1234
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("POST", "/logged/path", [("X-Request-Id", rid)], body)
        response = conn.read_response()
    assert response.status == 200
    for proc, direction in ((mesh.outbound, "outbound"), (mesh.inbound, "inbound")):
        record = wait_for_record(proc, rid)
        assert record.keys() >= FIELDS, record
        assert record["direction"] == direction
        assert (record["method"], record["path"], record["status"]) == ("POST", "/logged/path", 200)
        assert isinstance(record["duration_ms"], int | float) and record["duration_ms"] >= 0
        assert record["bytes_in"] == len(body)
        assert record["bytes_out"] == len(response.body)


def test_every_request_is_logged_exactly_once(mesh: MeshPair) -> None:
    ids = [f"once-{i}-{uuid.uuid4().hex}" for i in range(5)]
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        for rid in ids:
            conn.request("GET", "/once", [("X-Request-Id", rid)])
            assert conn.read_response().status == 200
    for proc in (mesh.outbound, mesh.inbound):
        for rid in ids:
            wait_for_record(proc, rid)


def test_secrets_and_query_strings_are_not_logged(mesh: MeshPair) -> None:
    rid = f"secret-{uuid.uuid4().hex}"
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request(
            "GET",
            "/private?token=QUERYSECRET&user=alice",
            [
                ("X-Request-Id", rid),
                ("Authorization", "Bearer SECRET"),
                ("Cookie", "session=SECRET2"),
                ("Proxy-Authorization", "Basic PROXYSECRET"),
            ],
        )
        assert conn.read_response().status == 200
    for proc in (mesh.outbound, mesh.inbound):
        record = wait_for_record(proc, rid)
        assert record["path"] == "/private"
        for path in (proc.stdout_path, proc.stderr_path):
            text = path.read_text(errors="replace")
            for secret in ("SECRET", "QUERYSECRET", "alice", "PROXYSECRET"):
                assert secret not in text, f"{secret} leaked into {path.name}"
    # The upstream does get what it is owed.
    (seen,) = mesh.upstream.requests
    assert seen.header("authorization") == "Bearer SECRET"
    assert seen.target == "/private?token=QUERYSECRET&user=alice"


def test_failed_exchange_is_logged_with_its_status(mesh: MeshPair) -> None:
    rid = f"fail-{uuid.uuid4().hex}"
    mesh.upstream.handler = lambda req: Reply(raw=b"", close=True)
    with HttpConnection(mesh.outbound_port, timeout=5) as conn:
        conn.request("POST", "/fails", [("X-Request-Id", rid)], b"x")
        assert conn.read_response().status == 502
    assert wait_for_record(mesh.inbound, rid)["status"] == 502
    assert wait_for_record(mesh.outbound, rid)["status"] == 502
