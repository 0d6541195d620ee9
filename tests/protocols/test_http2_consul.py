"""An HTTP/2 service declared through a real Consul agent: the caller's config does not say so.

The service's sidecar (`app_protocol: http2`, its app an h2c server) registers Meta
`protocol=http2`; the caller's upstream has no protocol, so its sidecar speaks HTTP/2 to
that service because Consul says so, and trailers cross both hops.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.consul.helpers import SETTINGS, wait_endpoints
from tests.support.consul_agent import ConsulAgent
from tests.support.h2peer import H2App, H2Peer
from tests.support.processes import MeshProcess, free_port, write_yaml

pytestmark = pytest.mark.timeout(60)


def test_consul_meta_protocol_http2_makes_callers_speak_http2(
    tmp_path: Path, procs: list[MeshProcess], consul_agent: ConsulAgent
) -> None:
    service = f"rpc-{uuid.uuid4().hex[:8]}"
    with H2App() as app:
        inbound, port = free_port(), free_port()
        config = {"consul": SETTINGS, "app_protocol": "http2"}
        procs.append(
            MeshProcess.sidecar(
                tmp_path, "--service", service, "--app-port", str(app.port),
                "--listen", f"127.0.0.1:{inbound}", "--consul", consul_agent.http_addr,
                "--config", str(write_yaml(tmp_path / "rpc.yaml", config)), name="rpc",
            )
        )  # fmt: skip
        caller = MeshProcess.sidecar(
            tmp_path, "--service", "a", "--consul", consul_agent.http_addr,
            "--upstream", f"{service}={port}",
            "--config", str(write_yaml(tmp_path / "a.yaml", {"consul": SETTINGS})), name="a",
        )  # fmt: skip
        procs.append(caller)
        wait_endpoints(caller, service, [f"127.0.0.1:{inbound}"])
        (entry,) = consul_agent.get_json(f"/v1/catalog/service/{service}-sidecar-proxy")
        assert entry["ServiceMeta"] == {"protocol": "http2"}

        with H2Peer(port) as peer:
            response = peer.request("POST", "/echo", body=b"via consul")
        assert (response.status, bytes(response.body)) == (200, b"via consul")
        assert response.trailers["x-trailer"] == "done"
        (endpoint,) = caller.admin("/clusters")[service]["endpoints"]
        assert endpoint["pool"]["http2"]["opened"] == 1
