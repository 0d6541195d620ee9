"""HTTP/2 abuse against a real sidecar's listener, frame by frame (RELIABILITY rows 10, 16, 17).

    raw hyperframe/hpack client -> sidecar inbound listener (h2c) -> RecordingUpstream

Each case writes frames a well-behaved client never would, then reads what the sidecar
answers: a malformed request resets its own stream and never reaches the app, rapid resets
and frame floods end in GOAWAY with memory bounded, streams past the limit are refused, and
a stalled head is cut off by the header timeout. A fresh connection works after each.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence

import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.support.processes import MeshProcess, Sidecars, free_port, peak_rss_kib, write_yaml
from tests.support.upstream import RecordedRequest, RecordingUpstream, Reply, echo_sha256

pytestmark = pytest.mark.timeout(60)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x7, 0x8, 0xB
HEADER_TIMEOUT = 1.0
RSS_LIMIT_KIB = 150 * 1024


class RawH2:
    """An HTTP/2 client that writes whatever frames it is given."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = Encoder()
        self.buffer = b""
        self.closed = False
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def headers(
        self, stream_id: int, fields: Sequence[tuple[str, str]], end_stream: bool = True
    ) -> HeadersFrame:
        frame = HeadersFrame(stream_id)
        frame.data = self.encoder.encode(list(fields))
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    def send(self, *frames: Frame) -> bool:
        """False when the sidecar has closed the connection meanwhile."""
        try:
            self.sock.sendall(b"".join(f.serialize() for f in frames))
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
            return False
        return True

    def send_raw(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
            return False
        return True

    def frames(self, until: float = 5.0) -> Iterator[Frame]:
        """Frames as they arrive, until the connection closes or `until` seconds pass."""
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            while len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                self.buffer = self.buffer[9 + length :]
                yield frame
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return
            self.buffer += data

    def wait_for(
        self, kind: type[Frame], stream_id: int | None = None, until: float = 5.0
    ) -> Frame:
        for frame in self.frames(until):
            if isinstance(frame, kind) and (stream_id is None or frame.stream_id == stream_id):
                return frame
        raise AssertionError(f"no {kind.__name__} (closed={self.closed})")

    def goaway_or_close(self, until: float = 10.0) -> GoAwayFrame | None:
        for frame in self.frames(until):
            if isinstance(frame, GoAwayFrame):
                return frame
        assert self.closed, "the connection stayed open"
        return None


def request(path: str = "/", **extra: str) -> list[tuple[str, str]]:
    fields = [(":method", "GET"), (":scheme", "http"), (":authority", "app"), (":path", path)]
    return fields + list(extra.items())


def slow_for_path(request: RecordedRequest) -> Reply:
    if request.target.startswith("/slow"):
        return Reply(status=200, body=b"slow\n", delay=1.5)
    return echo_sha256(request)


@pytest.fixture(scope="module")
def app() -> Iterator[RecordingUpstream]:
    with RecordingUpstream(slow_for_path) as upstream:
        yield upstream


#: The sidecar under test and its inbound listener's port.
_PORTS: dict[int, int] = {}


@pytest.fixture(scope="module")
def sidecar(app: RecordingUpstream, sidecars: Sidecars) -> MeshProcess:
    port = free_port()
    config = {"limits": {"header_timeout": HEADER_TIMEOUT}}
    proc = sidecars.start(
        "--service", "app", "--app-port", str(app.port), "--listen", f"127.0.0.1:{port}",
        "--config", str(write_yaml(sidecars.log_dir / "limits.yaml", config)), name="limits",
    )  # fmt: skip
    _PORTS[id(proc)] = port
    return proc


def port_of(sidecar: MeshProcess) -> int:
    return _PORTS[id(sidecar)]


def still_serves(sidecar: MeshProcess) -> None:
    with RawH2(port_of(sidecar)) as client:
        client.send(client.headers(1, request("/after")))
        frame = client.wait_for(HeadersFrame, 1)
        assert b"200" in frame.data or frame.data  # a response head arrived


MALFORMED = {
    "uppercase name": request(**{"X-Upper": "1"}),
    "transfer-encoding": request(**{"transfer-encoding": "chunked"}),
    "connection": request(connection="keep-alive"),
    "keep-alive": request(**{"keep-alive": "timeout=5"}),
    "upgrade": request(upgrade="websocket"),
    "te other than trailers": request(te="gzip"),
    "CRLF in a value": request(**{"x-smuggle": "a\r\nx-injected: 1"}),
    "colon in a name": request(**{"x:colon": "1"}),
    "missing :path": [(":method", "GET"), (":scheme", "http"), (":authority", "app")],
    "pseudo-header after regular": [*request(), (":status", "200")],
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_resets_its_stream_and_reaches_nothing(
    case: str, sidecar: MeshProcess, app: RecordingUpstream
) -> None:
    marker = f"/malformed-{case.replace(' ', '-')}"
    fields = [(n, marker) if n == ":path" else (n, v) for n, v in MALFORMED[case]]
    with RawH2(port_of(sidecar)) as client:
        client.send(client.headers(1, fields))
        reset = client.wait_for(RstStreamFrame, 1)
        assert reset.error_code == PROTOCOL_ERROR
        # The connection itself goes on: the next stream is answered.
        client.send(client.headers(3, request("/fine")))
        client.wait_for(HeadersFrame, 3)
    assert not [r for r in app.requests if r.target.startswith(marker)]


def test_body_shorter_than_content_length_never_reaches_the_app(
    sidecar: MeshProcess, app: RecordingUpstream
) -> None:
    with RawH2(port_of(sidecar)) as client:
        head = client.headers(1, [*request("/short-body"), ("content-length", "10")], False)
        head.data = client.encoder.encode(
            [(":method", "POST"), (":scheme", "http"), (":authority", "app"),
             (":path", "/short-body"), ("content-length", "10")]
        )  # fmt: skip
        data = DataFrame(1, b"12345")
        data.flags.add("END_STREAM")
        client.send(head, data)
        for frame in client.frames(5):
            if isinstance(frame, RstStreamFrame | GoAwayFrame):
                assert frame.error_code == PROTOCOL_ERROR
                break
        else:
            raise AssertionError("neither RST_STREAM nor GOAWAY")
    assert not [r for r in app.requests if r.target == "/short-body"]
    still_serves(sidecar)


def test_rapid_reset_gets_goaway_within_a_thousand_streams(
    sidecar: MeshProcess, app: RecordingUpstream
) -> None:
    before = len(app.requests)
    with RawH2(port_of(sidecar)) as client:
        sent = 0
        for batch in range(50):  # 5,000 x (HEADERS + RST_STREAM), in batches of 100
            frames: list[Frame] = []
            for i in range(100):
                stream_id = 1 + 2 * (batch * 100 + i)
                frames += [client.headers(stream_id, request("/reset")), RstStreamFrame(stream_id)]
                frames[-1].error_code = CANCEL
            if not client.send(*frames):
                break
            sent += 100
        goaway = client.goaway_or_close()
    assert goaway is not None, "closed without GOAWAY"
    assert goaway.error_code == ENHANCE_YOUR_CALM
    assert goaway.last_stream_id <= 2 * 1000 + 1, goaway.last_stream_id
    assert len(app.requests) - before <= 1000
    still_serves(sidecar)


def test_continuation_flood_closes_with_bounded_memory(sidecar: MeshProcess) -> None:
    with RawH2(port_of(sidecar)) as client:
        head = client.headers(1, request("/continuation"))
        head.flags.discard("END_HEADERS")
        client.send(head)
        for _ in range(5000):
            frame = ContinuationFrame(1)
            frame.data = client.encoder.encode([("x-filler", "f" * 4000)])
            if not client.send(frame):
                break
        client.goaway_or_close()
    assert peak_rss_kib(sidecar.proc.pid) < RSS_LIMIT_KIB
    still_serves(sidecar)


def flood_frames(kind: str, client: RawH2) -> Iterator[Frame]:
    if kind == "empty DATA":
        yield client.headers(1, request("/flood"), end_stream=False)
    for i in range(20_000):
        if kind == "PING":
            yield PingFrame(0, opaque_data=i.to_bytes(8, "big"))
        elif kind == "SETTINGS":
            yield SettingsFrame(0)
        else:
            yield DataFrame(1, b"")


@pytest.mark.parametrize("kind", ["PING", "SETTINGS", "empty DATA"])
def test_frame_flood_gets_goaway(kind: str, sidecar: MeshProcess) -> None:
    with RawH2(port_of(sidecar)) as client:
        batch: list[Frame] = []
        for frame in flood_frames(kind, client):
            batch.append(frame)
            if len(batch) == 500:
                if not client.send(*batch):
                    break
                batch = []
        goaway = client.goaway_or_close()
    if goaway is not None:
        assert goaway.error_code == ENHANCE_YOUR_CALM
    assert peak_rss_kib(sidecar.proc.pid) < RSS_LIMIT_KIB
    still_serves(sidecar)


def test_streams_past_the_limit_are_refused(sidecar: MeshProcess, app: RecordingUpstream) -> None:
    with RawH2(port_of(sidecar)) as client:
        client.send(*(client.headers(1 + 2 * i, request(f"/slow/{i}")) for i in range(150)))
        refused: set[int] = set()
        answered: set[int] = set()
        for frame in client.frames(10):
            if isinstance(frame, RstStreamFrame):
                assert frame.error_code == REFUSED_STREAM
                refused.add(frame.stream_id)
            elif isinstance(frame, HeadersFrame):
                answered.add(frame.stream_id)
            if len(refused) + len(answered) == 150:
                break
    assert len(refused) == 50 and len(answered) == 100
    assert len([r for r in app.requests if r.target.startswith("/slow/")]) == 100


def test_a_stalled_request_head_is_cut_off(sidecar: MeshProcess) -> None:
    with RawH2(port_of(sidecar)) as client:
        head = client.headers(1, request("/stalled"))
        head.flags.discard("END_HEADERS")
        client.send(head)
        started = time.monotonic()
        client.goaway_or_close(until=HEADER_TIMEOUT * 6)
        assert time.monotonic() - started < HEADER_TIMEOUT * 6


def test_sigterm_sends_goaway_and_finishes_the_streams_in_flight(
    app: RecordingUpstream, sidecars: Sidecars
) -> None:
    port = free_port()
    proc = sidecars.start(
        "--service", "app", "--app-port", str(app.port), "--listen", f"127.0.0.1:{port}",
        name="draining",
    )  # fmt: skip
    with RawH2(port) as client:
        client.send(client.headers(1, request("/slow/drain")))
        client.wait_for(SettingsFrame)
        proc.signal()
        goaway = client.wait_for(GoAwayFrame)
        assert goaway.error_code == 0
        answer = client.wait_for(HeadersFrame, 1)
        assert answer.stream_id == 1
    assert proc.proc.wait(15) == 0


def test_a_header_frame_trickled_byte_by_byte_is_cut_off(sidecar: MeshProcess) -> None:
    with RawH2(port_of(sidecar)) as client:
        frame = client.headers(1, request("/trickle")).serialize()
        started = time.monotonic()
        for byte in frame[:-1]:  # one byte every 0.2 s: never a whole frame in time
            if not client.send_raw(bytes([byte])):
                break
            for _ in client.frames(0.2):
                pass
            if client.closed or time.monotonic() - started > HEADER_TIMEOUT * 6:
                break
        assert client.closed
        assert time.monotonic() - started < HEADER_TIMEOUT * 6


def test_a_header_list_over_the_limit_never_reaches_the_app(
    sidecar: MeshProcess, app: RecordingUpstream
) -> None:
    with RawH2(port_of(sidecar)) as client:
        client.wait_for(SettingsFrame)
        client.send(SettingsFrame(0, flags=["ACK"]))
        block = client.encoder.encode(
            [*request("/too-big"), *((f"x-big-{i}", "v" * 4000) for i in range(20))]
        )  # about 80 KiB: over limits.max_header_bytes (60 KiB)
        pieces = [block[i : i + 16000] for i in range(0, len(block), 16000)]
        head = HeadersFrame(1, data=pieces[0], flags=["END_STREAM"])
        rest = [ContinuationFrame(1, data=p) for p in pieces[1:]]
        rest[-1].flags.add("END_HEADERS")
        client.send(head, *rest)
        for frame in client.frames(5):
            if isinstance(frame, RstStreamFrame | GoAwayFrame):
                break
        else:
            assert client.closed, "neither RST_STREAM, GOAWAY nor a close"
    assert not [r for r in app.requests if r.target == "/too-big"]
    still_serves(sidecar)
