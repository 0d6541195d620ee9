"""A TCP service declared through a real Consul agent: the caller's config does not say TCP.

The service's sidecar (`app_protocol: tcp`) registers Meta `protocol=tcp`; the caller's
upstream has no protocol, so each connection on it follows what Consul says. An HTTP
service found the same way keeps working as HTTP (tests/consul covers it at length).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.consul.helpers import SETTINGS, named_app, wait_endpoints
from tests.protocols.test_tcp import EchoServer, exchange
from tests.support.consul_agent import ConsulAgent
from tests.support.processes import MeshProcess, free_port, http_get, write_yaml

pytestmark = pytest.mark.timeout(60)


def test_consul_meta_protocol_tcp_makes_the_callers_port_a_tunnel(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    tcp_service, http_service = f"kv-{uuid.uuid4().hex[:8]}", f"web-{uuid.uuid4().hex[:8]}"
    echo = EchoServer()
    web = named_app("web")
    try:
        inbound, http_inbound = free_port(), free_port()
        server_config = {"consul": SETTINGS, "app_protocol": "tcp", "access_log": True}
        procs.append(
            MeshProcess.sidecar(
                tmp_path, "--service", tcp_service, "--app-port", str(echo.port),
                "--listen", f"127.0.0.1:{inbound}", "--consul", consul_agent.http_addr,
                "--config", str(write_yaml(tmp_path / "kv.yaml", server_config)),
                name="kv",
            )
        )  # fmt: skip
        procs.append(
            MeshProcess.sidecar(
                tmp_path, "--service", http_service, "--app-port", str(web.port),
                "--listen", f"127.0.0.1:{http_inbound}", "--consul", consul_agent.http_addr,
                "--config", str(write_yaml(tmp_path / "web.yaml", {"consul": SETTINGS})),
                name="web",
            )
        )  # fmt: skip
        tcp_port, http_port = free_port(), free_port()
        caller = MeshProcess.sidecar(
            tmp_path, "--service", "a", "--consul", consul_agent.http_addr,
            "--upstream", f"{tcp_service}={tcp_port}", "--upstream", f"{http_service}={http_port}",
            "--config", str(write_yaml(tmp_path / "a.yaml", {"consul": SETTINGS})),
            name="a",
        )  # fmt: skip
        procs.append(caller)
        wait_endpoints(caller, tcp_service, [f"127.0.0.1:{inbound}"])
        wait_endpoints(caller, http_service, [f"127.0.0.1:{http_inbound}"])

        (entry,) = consul_agent.get_json(f"/v1/catalog/service/{tcp_service}-sidecar-proxy")
        assert entry["ServiceMeta"] == {"protocol": "tcp"}
        (entry,) = consul_agent.get_json(f"/v1/catalog/service/{http_service}-sidecar-proxy")
        assert "protocol" not in (entry["ServiceMeta"] or {})

        payload = os.urandom(2 * 1024 * 1024)
        assert exchange(tcp_port, payload) == payload
        status, _, body = http_get(f"http://127.0.0.1:{http_port}/")
        assert (status, body) == (200, b"web")
        stats = caller.admin("/listeners")
        assert stats[f"upstream:{tcp_service}"]["tcp"]["accepted"] == 1
        assert stats[f"upstream:{tcp_service}"]["accepted"] == 1  # the tunnel, no HTTP
        assert stats[f"upstream:{http_service}"]["tcp"]["accepted"] == 0
    finally:
        echo.close()
        web.close()
