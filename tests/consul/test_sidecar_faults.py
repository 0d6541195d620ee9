"""A sidecar against a scripted misbehaving Consul (RELIABILITY.md rows 37-39 and 41).

The caller's sidecar is a real `mesh sidecar --consul` process; the agent is the scripted
FakeConsul; the service's instances are recording upstreams (the caller speaks plain
HTTP/1.1 to an endpoint, so an upstream stands where a peer's sidecar would).

Row 37 asks for 100 % success for 60 s under each fault; here each fault lasts about a
second (long enough for the watch to notice and back off), one after another, under
steady traffic, and not one request may fail.
"""

from __future__ import annotations

import functools
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.consul.helpers import SETTINGS, Traffic, consul_config, named_app, start_caller
from tests.sidecar.helpers import refuses
from tests.support.fake_consul import FakeConsul, entry
from tests.support.processes import MeshProcess, free_port, http_get, wait_until

pytestmark = pytest.mark.timeout(60)

# Wrong types and dropped connections take the same paths as garbage and refusals here;
# tests/discovery/test_consul_faults.py has every fault against the resolver itself.
FAULTS = ["error", "garbage", "huge", "hang", "refused"]


@pytest.fixture
def fake() -> FakeConsul:
    with FakeConsul() as fake:
        yield fake


def test_last_good_endpoints_serve_through_every_fault(
    tmp_path: Path, procs: list[MeshProcess], fake: FakeConsul
) -> None:
    with named_app("b1") as b1, named_app("b2") as b2:
        fake.set_entries("b", [entry(b1.port), entry(b2.port)])
        caller, port = start_caller(procs, tmp_path, fake.url, "b", timeout=1, wait=1)
        wait_until(lambda: len(caller.admin("/clusters")["b"]["endpoints"]) == 2, 5, "b")
        traffic = Traffic(port, rate=100).start()
        try:
            for fault in FAULTS:
                since = time.monotonic()
                if fault == "refused":
                    fake.refuse()
                else:
                    fake.set_mode(fault)
                if fault != "refused":
                    # The fault met at least one query of the watch.
                    met = functools.partial(fake.health_queries, "b", since)
                    wait_until(lambda: bool(met()), 5, f"a query ({fault})")  # noqa: B023
                served = traffic.total + 50
                wait_until(lambda: traffic.total >= served, 5, f"traffic ({fault})")  # noqa: B023
                cluster = caller.admin("/clusters")["b"]
                assert len(cluster["endpoints"]) == 2, (fault, cluster)
                assert cluster["stale_since"] is not None, fault
                assert caller.admin("/ready")["ready"] is True
            fake.resume()
            fake.set_mode("ok")
            wait_until(
                lambda: caller.admin("/clusters")["b"]["stale_since"] is None, 10, "recovery"
            )
        finally:
            traffic.stop()
        assert traffic.failures == [], traffic.failures[:5]
        assert traffic.answers["b1"] > 0 and traffic.answers["b2"] > 0
        assert "keeping 2 last known endpoint(s)" in caller.logs()
        assert "answering again" in caller.logs()


def test_no_answer_at_start_means_not_ready_and_fast_503s(
    tmp_path: Path, procs: list[MeshProcess]
) -> None:
    with FakeConsul() as fake, named_app("b1") as b1:
        fake.refuse()
        proxy_port = free_port()
        caller, port = start_caller(
            procs, tmp_path, fake.url, "b", "--proxy-port", str(proxy_port), wait_ready=False
        )
        wait_until(lambda: admin_up(caller), 10, "the admin listener")
        ready = caller.admin("/ready")
        assert ready["ready"] is False and "waiting for discovery: b" in ready["reason"]

        # The upstream port: a bounded wait for a first answer, then a 503 saying why.
        started = time.monotonic()
        status, headers, _ = http_get(f"http://127.0.0.1:{port}/")
        assert (status, headers.get("x-mesh-error")) == (503, "no-endpoints")
        assert time.monotonic() - started < 3.0
        # Proxy mode: whether `b` is a mesh service is unknown yet. Never guess "no" and
        # send the call to its original destination: refuse it at once.
        started = time.monotonic()
        status, headers, _ = proxy_get(proxy_port, "http://c/")
        assert (status, headers.get("x-mesh-error")) == (503, "no-endpoints")
        assert time.monotonic() - started < 1.0

        # The agent appears and answers with an authoritative empty list: ready, fast 503s.
        fake.resume()
        fake.set_entries("b", [])
        wait_until(lambda: caller.admin("/ready")["ready"], 10, "readiness")
        started = time.monotonic()
        status, headers, _ = http_get(f"http://127.0.0.1:{port}/")
        assert (status, headers.get("x-mesh-error")) == (503, "no-endpoints")
        assert time.monotonic() - started < 0.5

        fake.set_entries("b", [entry(b1.port)])
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/")[0] == 200, 5, "b1")
        assert proxy_get(proxy_port, "http://b/")[2] == b"b1"


def admin_up(proc: MeshProcess) -> bool:
    """The admin API answers, and the listeners are up (readiness is past "starting")."""
    try:
        return bool(proc.admin("/ready")["reason"] != "starting")
    except OSError:
        return False


def proxy_get(proxy_port: int, url: str) -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{proxy_port}"})
    )
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def test_an_agent_that_never_answers_leaves_the_sidecar_not_ready(
    tmp_path: Path, procs: list[MeshProcess], fake: FakeConsul
) -> None:
    fake.set_mode("hang")
    caller, port = start_caller(procs, tmp_path, fake.url, "b", wait_ready=False, timeout=1)
    wait_until(lambda: admin_up(caller), 10, "the admin listener")
    started = time.monotonic()
    status, headers, _ = http_get(f"http://127.0.0.1:{port}/")
    assert (status, headers.get("x-mesh-error")) == (503, "no-endpoints")
    assert time.monotonic() - started < 3.0
    assert caller.admin("/ready")["ready"] is False
    fake.set_mode("ok")


def test_hostile_entries_are_refused(
    tmp_path: Path, procs: list[MeshProcess], fake: FakeConsul
) -> None:
    with named_app("b1") as b1:
        upstream_port = free_port()
        hostile = [entry(0), entry(upstream_port, address="0.0.0.0"), entry(upstream_port)]
        fake.set_entries("b", [*hostile, entry(b1.port)])
        caller = MeshProcess.sidecar(
            tmp_path, "--service", "a", "--upstream", f"b={upstream_port}",
            "--consul", fake.url, "--config", str(consul_config(tmp_path, "a")), name="a",
        )  # fmt: skip
        procs.append(caller)
        cluster = caller.admin("/clusters")["b"]
        assert [e["address"] for e in cluster["endpoints"]] == [f"127.0.0.1:{b1.port}"]
        assert {r["reason"] for r in cluster["rejected"]} == {
            "port 0 out of range",
            "unspecified address 0.0.0.0",
            "resolves to this sidecar (loop)",
        }
        # Only the sidecar itself left: a loop, refused with 508, never a recursion.
        fake.set_entries("b", [entry(upstream_port)])
        wait_until(lambda: caller.admin("/clusters")["b"]["endpoints"] == [], 5, "the loop")
        status, headers, _ = http_get(f"http://127.0.0.1:{upstream_port}/")
        assert (status, headers.get("x-mesh-error")) == (508, "loop-detected")


def test_shutdown_leaves_consul_before_the_listener_closes(
    tmp_path: Path, procs: list[MeshProcess], fake: FakeConsul
) -> None:
    """Row 41: the fake agent sees the instance leave (maintenance) while its listener still
    accepts; the listener closes after the grace; deregistration follows the drain."""
    with named_app("b1") as app:
        listen = free_port()
        sidecar = MeshProcess.sidecar(
            tmp_path, "--service", "b", "--app-port", str(app.port),
            "--listen", f"127.0.0.1:{listen}", "--consul", fake.url,
            "--config", str(consul_config(tmp_path, "b")), name="b",
        )  # fmt: skip
        procs.append(sidecar)
        check = f"service:b-{socket.gethostname()}-{listen}-sidecar-proxy"
        wait_until(lambda: fake.state.checks.get(check, ("",))[0] == "passing", 5, "passing")
        sidecar.signal(signal.SIGTERM)
        signalled = time.monotonic()
        left = closed = None
        while sidecar.proc.poll() is None and time.monotonic() < signalled + 15:
            if left is None and fake.seen("PUT", "/v1/agent/service/maintenance/"):
                left = time.monotonic()
                assert not refuses(listen), "the listener closed before leaving Consul"
            if closed is None and refuses(listen):
                closed = time.monotonic()
            time.sleep(0.01)  # polling the fake's record and the listener
        assert sidecar.proc.wait(5) == 0, sidecar.logs()
        if closed is None:  # it closed and the process exited between two polls
            closed = time.monotonic()
        assert left is not None
        assert left < closed
        assert closed - left >= 0.9 * SETTINGS["drain_grace"]
        [maintenance_proxy, maintenance_app] = fake.seen("PUT", "/v1/agent/service/maintenance/")
        assert maintenance_proxy.path.endswith("-sidecar-proxy")
        assert maintenance_proxy.query["enable"].lower() == "true"
        deregistered = fake.seen("PUT", "/v1/agent/service/deregister/")
        assert len(deregistered) == 2
        assert all(d.at > maintenance_app.at for d in deregistered)
        assert fake.state.services == {}


def test_token_from_file_or_environment_travels_only_in_the_header(
    tmp_path: Path, procs: list[MeshProcess], fake: FakeConsul
) -> None:
    secret, env_secret = "s3cr3t-file-token", "s3cr3t-env-token"
    token_file = tmp_path / "token"
    token_file.write_text(f"{secret}\n")
    with named_app("b1") as app:
        listen = free_port()
        env = {"CONSUL_HTTP_TOKEN": env_secret}
        sidecar = MeshProcess.sidecar(
            tmp_path, "--service", "b", "--app-port", str(app.port),
            "--listen", f"127.0.0.1:{listen}", "--consul", fake.url,
            "--consul-token-file", str(token_file), "--log-level", "debug",
            "--config", str(consul_config(tmp_path, "b")), name="b", env=env,
        )  # fmt: skip
        procs.append(sidecar)
        wait_until(lambda: bool(fake.seen("PUT", "/v1/agent/check/update/")), 5, "updates")
        config = sidecar.admin("/config")
        assert config["consul"]["token_file"] == "<redacted>"
        assert sidecar.stop() == 0
        # The env token alone (no file) is used when no file is given.
        other = MeshProcess.sidecar(
            tmp_path, "--service", "c", "--proxy-port", str(free_port()),
            "--consul", fake.url, name="c", env=env,
        )  # fmt: skip
        procs.append(other)
        assert other.stop() == 0
    seen_b = [r for r in fake.requests if r.headers.get("x-consul-token") == secret]
    seen_c = [r for r in fake.requests if r.headers.get("x-consul-token") == env_secret]
    assert seen_b and seen_c
    assert len(seen_b) + len(seen_c) == len(fake.requests)  # every request carried one
    for request in fake.requests:
        assert secret not in request.path and secret not in str(request.query)
    for proc in (sidecar, other):
        assert secret not in proc.logs() and env_secret not in proc.logs()
