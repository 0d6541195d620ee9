"""AsyncConsul against a real Consul agent, and its failure mapping against scripted servers."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from consul import Check
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from discovery.consul_client import (
    AsyncConsul,
    ConsulBadResponse,
    ConsulError,
    ConsulUnavailable,
)
from tests.support.consul_agent import ConsulAgent

# Until tests/conftest.py imports them, the fixtures come from here.

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

TOKEN = "7f3c2a9e-secret-token-value"


@pytest.fixture
async def client(consul_agent: ConsulAgent) -> AsyncIterator[AsyncConsul]:
    async with AsyncConsul.from_url(consul_agent.http_addr) as consul:
        yield consul


def unique(prefix: str) -> str:
    # The agent is shared by the session: every test names its own services.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def register_with_sidecar(consul: AsyncConsul, service: str, port: int) -> None:
    await consul.agent.service.register(service, service_id=service, address="127.0.0.1", port=port)
    await consul.agent.service.register(
        f"{service}-sidecar-proxy",
        service_id=f"{service}-sidecar-proxy",
        address="127.0.0.1",
        port=port + 1,
        kind="connect-proxy",
        proxy={
            "DestinationServiceName": service,
            "DestinationServiceID": service,
            "LocalServiceAddress": "127.0.0.1",
            "LocalServicePort": port,
        },
    )


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll a condition that has no event to wait on, for at most 5s."""
    for _ in range(500):
        if predicate():
            return
        await anyio.sleep(0.01)
    raise TimeoutError("condition not met within 5s")


async def test_blocking_health_connect_wakes_on_new_sidecar(client: AsyncConsul) -> None:
    service = unique("web")
    index, instances = await client.health_connect(service)
    assert isinstance(index, int) and index >= 1
    assert instances == []

    # With nothing changing, a blocking query holds for its wait and keeps the index. For a
    # service with no sidecar yet, Consul wakes the query on any sidecar's registration, and
    # other tests register theirs on the shared agent; a real watch then asks again, and so
    # does this one, a few times at most. Each answer is still the empty one.
    for _ in range(5):
        started = time.monotonic()
        same, unchanged = await client.health_connect(service, index=index, wait=0.5)
        assert unchanged == [] and same >= index
        if time.monotonic() - started >= 0.45 and same == index:
            break
        index = same
    else:
        raise AssertionError("no blocking query held for its wait in five tries")

    result: list[tuple[int, list[dict[str, Any]]]] = []

    async def watch() -> None:
        # As a real watch does: a return is not necessarily our change, so ask again.
        current, found = index, list[dict[str, Any]]()
        while not found:
            current, found = await client.health_connect(service, index=current, wait=20)
        result.append((current, found))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await wait_until(lambda: client.http.statistics()["active"] >= 1)
        async with AsyncConsul.from_url(client.http.base_uri) as writer:
            await register_with_sidecar(writer, service, 21000)
    # Woken by the registration, long before the 20s wait.
    assert time.monotonic() - started < 5
    (new_index, instances) = result[0]
    assert new_index > index
    [entry] = instances
    assert entry["Service"]["Kind"] == "connect-proxy"
    assert entry["Service"]["Proxy"]["DestinationServiceName"] == service
    assert entry["Service"]["Port"] == 21001


async def test_leaf_has_spiffe_uri_san_and_roots_block(client: AsyncConsul) -> None:
    service = unique("api")
    roots_index, roots = await client.roots()
    assert isinstance(roots_index, int) and roots_index >= 1
    trust_domain = roots["TrustDomain"]
    [active] = [root for root in roots["Roots"] if root["Active"]]

    leaf_index, leaf = await client.leaf(service)
    assert isinstance(leaf_index, int)
    cert = x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    [uri] = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uri == leaf["ServiceURI"] == f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/{service}"
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(active["RootCert"].encode()))

    # No rotation pending: both blocking queries hold for their wait and return the same state.
    started = time.monotonic()
    again_index, again = await client.leaf(service, index=leaf_index, wait=0.5)
    same_index, _ = await client.roots(index=roots_index, wait=0.5)
    assert time.monotonic() - started >= 0.9
    assert (again_index, again["SerialNumber"]) == (leaf_index, leaf["SerialNumber"])
    assert same_index == roots_index


async def test_intentions_match_and_authorize(client: AsyncConsul) -> None:
    destination, source = unique("db"), unique("app")
    _, roots = await client.roots()
    client_uri = f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/{source}"

    # Dev mode has ACLs off and default-allow intentions.
    allowed = await client.authorize(destination, client_uri, "01")
    assert allowed["Authorized"] is True

    index, matches = await client.intentions_match(destination)
    assert isinstance(index, int) and index >= 1
    assert matches == []

    created: list[str] = []

    async def create() -> None:
        await wait_until(lambda: client.http.statistics()["active"] >= 1)
        created.append(await client.intention_create(source, destination, "deny"))

    try:
        started = time.monotonic()
        new_index = index
        async with anyio.create_task_group() as tg:
            tg.start_soon(create)
            while not matches:
                new_index, matches = await client.intentions_match(
                    destination, index=new_index, wait=20
                )
        assert time.monotonic() - started < 5
        assert new_index > index
        [match] = matches
        assert (match["ID"], match["SourceName"], match["Action"]) == (created[0], source, "deny")

        denied = await client.authorize(destination, client_uri, "01")
        assert denied["Authorized"] is False
    finally:
        for intention_id in created:
            await client.intention_delete(intention_id)


async def test_check_update_sets_ttl_check(client: AsyncConsul) -> None:
    service = unique("ttl")
    await client.agent.service.register(service, service_id=service, port=9, check=Check.ttl("30s"))
    check_id = f"service:{service}"

    await client.check_update(check_id, "passing", "all good")
    checks = await client.agent.checks()
    assert (checks[check_id]["Status"], checks[check_id]["Output"]) == ("passing", "all good")

    await client.check_update(check_id, "critical", "down")
    _, nodes = await client.health.service(service, passing=True)
    assert nodes == []
    with pytest.raises(ValueError, match="status must be"):
        await client.check_update(check_id, "fine")
    with pytest.raises(ConsulError) as caught:
        await client.check_update("no-such-check", "passing")
    assert caught.value.status in (404, 500)


async def test_py_consul_api_runs_on_the_adapter(client: AsyncConsul) -> None:
    key = unique("mesh/test")
    assert await client.kv.put(key, "v1") is True
    index, item = await client.kv.get(key)
    assert item["Value"] == b"v1"
    assert int(index) >= 1
    assert (await client.agent.self())["Config"]["Datacenter"] == "dc1"


# Scripted servers: one canned reply per connection, every request recorded.


@asynccontextmanager
async def scripted_server(
    reply: bytes,
    delay: float = 0.0,
    requests: list[bytes] | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            if requests is not None:
                requests.append(head + body)
            await asyncio.sleep(delay)  # stands for Consul holding a blocking query
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def http_reply(status: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_garbage_json_is_bad_response() -> None:
    reply = http_reply("200 OK", b"{not json", {"X-Consul-Index": "5"})
    async with scripted_server(reply) as url, AsyncConsul.from_url(url) as consul:
        with pytest.raises(ConsulBadResponse, match="/v1/agent/connect/ca/roots"):
            await consul.roots()
        with pytest.raises(ConsulBadResponse):
            await consul.agent.self()  # py-consul's own callback, same mapping


async def test_wrong_shapes_are_bad_responses() -> None:
    reply = http_reply("200 OK", b'{"Roots": "nope"}', {"X-Consul-Index": "5"})
    async with scripted_server(reply) as url, AsyncConsul.from_url(url) as consul:
        with pytest.raises(ConsulBadResponse, match="Roots"):
            await consul.roots()
        with pytest.raises(ConsulBadResponse, match="expected list"):
            await consul.health_connect("web")
    no_index = http_reply("200 OK", b"[]")
    async with scripted_server(no_index) as url, AsyncConsul.from_url(url) as consul:
        with pytest.raises(ConsulBadResponse, match="X-Consul-Index"):
            await consul.health_connect("web")


async def test_token_goes_in_header_and_never_into_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "env-token-loses")
    requests: list[bytes] = []
    echo = f"permission denied for token {TOKEN}".encode()
    async with (
        scripted_server(http_reply("403 Forbidden", echo), requests=requests) as url,
        AsyncConsul.from_url(url, token=TOKEN) as consul,
    ):
        with pytest.raises(ConsulError) as caught:
            await consul.leaf("web")
        # py-consul's catalog.register puts the token in the query string; it must not get there.
        with pytest.raises(ConsulError):
            await consul.catalog.register("node1", "127.0.0.1")
    for failure in (str(caught.value), repr(caught.value), caught.value.body):
        assert TOKEN not in failure
    assert caught.value.status == 403
    assert "<redacted>" in caught.value.body
    assert TOKEN not in repr(consul) and TOKEN not in repr(consul.http)
    for request in requests:
        request_line, _, rest = request.partition(b"\r\n")
        assert TOKEN.encode() not in request_line
        assert f"X-Consul-Token: {TOKEN}".encode() in rest
        assert b"env-token-loses" not in request


def issue(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, tmp: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str, str]:
    """A P-256 cert for 127.0.0.1 (a CA when *issuer* is None), written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    signer_cert, signer_key = issuer or (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key, str(cert_path), str(key_path)


async def test_https_with_ca_file_and_client_cert(tmp_path: Path) -> None:
    ca_cert, ca_key, ca_path, _ = issue("ca", None, tmp_path)
    _, _, server_cert, server_key = issue("server", (ca_cert, ca_key), tmp_path)
    _, _, client_cert, client_key = issue("client", (ca_cert, ca_key), tmp_path)
    _, _, other_ca, _ = issue("other-ca", None, tmp_path)
    # Like an agent with verify_incoming: the client must present a cert from the same CA.
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_path)
    tls.load_cert_chain(server_cert, server_key)
    tls.verify_mode = ssl.CERT_REQUIRED
    reply = http_reply("200 OK", b'{"Config": {"Datacenter": "dc1"}}')
    async with scripted_server(reply, tls=tls) as url:
        async with AsyncConsul.from_url(
            url, verify=ca_path, cert=(client_cert, client_key)
        ) as consul:
            assert (await consul.agent.self())["Config"]["Datacenter"] == "dc1"
        async with AsyncConsul.from_url(url, verify=other_ca, cert=(client_cert, client_key)) as c:
            with pytest.raises(ConsulUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                await c.agent.self()


async def test_unreachable_agent_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now: connection refused.
    async with AsyncConsul("127.0.0.1", port, connect_timeout=2) as consul:
        with anyio.fail_after(5), pytest.raises(ConsulUnavailable, match="ConnectError"):
            await consul.roots()


async def test_silent_agent_times_out_as_unavailable() -> None:
    reply = http_reply("200 OK", b"{}")
    async with (
        scripted_server(reply, delay=10) as url,
        AsyncConsul.from_url(url, request_timeout=0.3) as consul,
    ):
        started = time.monotonic()
        with pytest.raises(ConsulUnavailable):
            await consul.agent.self()
        assert time.monotonic() - started < 2


async def test_blocking_read_timeout_covers_wait_and_jitter() -> None:
    # The server answers after 1s, as Consul does at the end of a 1s wait; a plain request
    # timeout of 0.3s would have cut it off.
    reply = http_reply("200 OK", b"[]", {"X-Consul-Index": "9"})
    async with (
        scripted_server(reply, delay=1.0) as url,
        AsyncConsul.from_url(url, request_timeout=0.3) as consul,
    ):
        assert await consul.health_connect("web", index=8, wait=1.0) == (9, [])
        with pytest.raises(ConsulUnavailable):
            await consul.health_connect("web")


# Agent restarts: the pooled client must recover, and the lead's watch code must expect what
# each agent mode does to state and indexes.


async def test_client_recovers_after_dev_agent_restart(consul_binary: str) -> None:
    with ConsulAgent(consul_binary) as agent:
        async with AsyncConsul.from_url(agent.http_addr) as consul:
            _, before = await consul.roots()
            await consul.agent.service.register("survivor", port=9)
            for n in range(10):
                await consul.kv.put("counter", str(n))
            kv_index, _ = await consul.kv.get("counter")
            pid = agent.pid
            agent.restart()
            assert agent.pid != pid and agent.http_addr == consul.http.base_uri
            # The pooled keep-alive connection died with the old process; no error surfaces.
            _, after = await consul.roots()
            # Dev mode keeps no server state: a new CA and trust domain, no KV, and indexes
            # start over, so a watch sees its index go backwards.
            assert after["TrustDomain"] != before["TrustDomain"]
            new_kv_index, value = await consul.kv.get("counter")
            assert value is None
            assert int(new_kv_index) < int(kv_index)
            # The agent's own service definitions are persisted in the data dir, though.
            assert "survivor" in await consul.agent.services()
        agent.stop()
        assert not agent.running
        async with AsyncConsul.from_url(agent.http_addr, connect_timeout=1) as consul:
            with pytest.raises(ConsulUnavailable):
                await consul.roots()


async def test_persistent_agent_keeps_state_across_restart(consul_binary: str) -> None:
    with ConsulAgent(consul_binary, persistent=True) as agent:
        async with AsyncConsul.from_url(agent.http_addr) as consul:
            _, before = await consul.roots()
            intention_id = await consul.intention_create("a", "b", "allow")
            agent.restart()
            _, after = await consul.roots()
            assert after["TrustDomain"] == before["TrustDomain"]
            _, matches = await consul.intentions_match("b")
            assert [m["ID"] for m in matches] == [intention_id]
