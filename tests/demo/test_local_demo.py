"""`mesh demo` as a user sees it: mTLS and authorization on every hop, the payments switch.

The demo is started as a real process (every service a `mesh attach` with its app, the load
generator behind its own sidecar). Through the load generator's proxy port a test calls the
mesh as the `loadgen` identity would; flipping payments to failing shows up in the live view
and in the summary (retries when it fails half the time, an ejection when it is down); and
after the run, or SIGINT, no process of the demo is left.
"""

from __future__ import annotations

import http.client
import re
import signal
import socket
from pathlib import Path

import pytest

from sidecar.demo.topology import FAULTY, SERVICES
from tests.sidecar.helpers import descendants, start_time, still_running, stop_leftovers
from tests.support.processes import MeshProcess, wait_until

pytestmark = pytest.mark.timeout(90)


class Demo:
    def __init__(self, tmp_path: Path, procs: list[MeshProcess], *args: str) -> None:
        self.process = MeshProcess(["demo", "--rps", "20", *args], tmp_path, name="demo")
        procs.append(self.process)
        self.seen: dict[int, int] = {}

    def output(self) -> str:
        return self.process.stdout_path.read_text(errors="replace")

    def record(self) -> None:
        """Remember every descendant (PID and start time) to check they are gone later."""
        for pid in descendants(self.process.proc.pid):
            if (started := start_time(pid)) is not None:
                self.seen.setdefault(pid, started)

    def wait_for(self, text: str, timeout: float = 45) -> None:
        def there() -> bool:
            if self.process.proc.poll() is not None:
                raise AssertionError(f"the demo exited early:\n{self.output()}")
            self.record()
            return text in self.output()

        wait_until(there, timeout, repr(text), step=0.1)

    def finish(self) -> str:
        """Wait for the exit; the output, once every process it started is gone."""
        try:
            assert self.process.proc.wait(30) == 0, self.output()
            text = self.output()
            assert text.rstrip().endswith("all demo processes stopped"), text
            left = [pid for pid, t in self.seen.items() if still_running(pid, t)]
            assert left == [], f"still running: {left}"
            return text
        finally:
            stop_leftovers(self.seen)


def service_row(text: str, name: str) -> tuple[int, int, str]:
    """The summary's row for a service: requests, errors, reasons."""
    row = re.search(rf"^  {name}\s+(\d+)\s+(\d+)  (.*)$", text, re.MULTILINE)
    assert row is not None, text
    return int(row[1]), int(row[2]), row[3]


def resilience_row(text: str, caller: str, upstream: str) -> tuple[int, int, int, str]:
    """The summary's resilience row: retries, refused, ejections, breaker state."""
    row = re.search(
        rf"^  {caller} -> {upstream}\s+(\d+)\s+(\d+)\s+(\d+)  (\S+)$", text, re.MULTILINE
    )
    assert row is not None, text
    return int(row[1]), int(row[2]), int(row[3]), row[4]


def get_via(proxy_port: int, url: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
    try:
        conn.request("GET", url)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.headers.get("x-mesh-error", "")
    finally:
        conn.close()


def test_payments_failing_shows_retries_errors_and_the_call_tree(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    demo = Demo(tmp_path, procs, "--duration", "4", "--payments", "failing")
    demo.wait_for("== sending")
    text = demo.finish()
    assert f"{FAULTY}: failing" in text
    requests, errors, reasons = service_row(text, FAULTY)
    assert requests > 0 and errors > 0 and "503 app" in reasons, text
    # The failure stays on the order path: the other services answered every request.
    for name in ("users", "products", "notifications"):
        assert service_row(text, name)[1] == 0, text
    for spec in SERVICES:
        assert service_row(text, spec.name)[0] > 0, text
    # The callers' sidecars retried the 503s (half the retries succeed).
    retries, _, _, _ = resilience_row(text, "orders", FAULTY)
    assert retries > 0, text
    tree = text[text.index("== one request: GET /orders") :]
    assert re.search(r"└─ orders \d{3}", tree) and re.search(r"─ payments \d{3}", tree), tree


def test_mtls_authorization_and_the_runtime_switch_then_sigint(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    demo = Demo(tmp_path, procs)
    demo.wait_for("load:")
    text = demo.output()
    proxy_port = int(re.search(r"started loadgen\s+sidecar proxy :(\d+)", text)[1])  # type: ignore[index]
    entry_port = int(re.search(r"started frontend\s+sidecar :(\d+)", text)[1])  # type: ignore[index]
    mode_file = Path(re.search(r"`echo failing > (\S+)`", text)[1])  # type: ignore[index]

    # The load generator's identity may call the entry, and nothing else.
    assert get_via(proxy_port, "http://frontend/users/1") == (200, "")
    assert get_via(proxy_port, "http://payments/") == (403, "forbidden")
    # The entry's sidecar speaks only TLS: a plain HTTP request gets no HTTP answer.
    with socket.create_connection(("127.0.0.1", entry_port), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: frontend\r\n\r\n")
        try:
            answer = plain.recv(64)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/"), answer

    mode_file.write_text("down\n")
    load_line = re.compile(r"load:.*errors\s+(\d+).*payments: down")
    demo.wait_for("payments: down", timeout=10)
    wait_until(
        lambda: any(int(m[1]) > 0 for m in load_line.finditer(demo.output())),
        15,
        "errors in the live view once payments is down",
        step=0.2,
    )
    demo.record()
    demo.process.signal(signal.SIGINT)
    text = demo.finish()
    assert service_row(text, FAULTY)[1] > 0, text
    # Five failures in a row opened orders' breaker on payments: it was ejected.
    _, _, ejections, _ = resilience_row(text, "orders", FAULTY)
    assert ejections > 0, text
