"""The gRPC rules on their own: status mapping, `grpc-timeout`, and gRPC-shaped proxy errors.

No sockets here: these are the pure pieces the data path calls (the end-to-end behaviour
through real sidecars is in test_grpc_calls.py).
"""

from __future__ import annotations

import pytest

from mesh import errors
from mesh.grpc import timeout, wire
from mesh.grpc.status import StatusCode, code_for_http_status, code_for_reason
from mesh.http1.body import Body
from mesh.http1.message import Response
from mesh.metrics.requests import reason_words
from mesh.respond import error_response
from tests.support.fakes import make_request

pytestmark = pytest.mark.timeout(10)

GRPC = [(b"content-type", b"application/grpc")]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.NoEndpoints(), StatusCode.UNAVAILABLE),
        (errors.UpstreamConnectFailed(), StatusCode.UNAVAILABLE),
        (errors.CircuitOpen(), StatusCode.UNAVAILABLE),
        (errors.AllEndpointsEjected(), StatusCode.UNAVAILABLE),
        (errors.Draining(), StatusCode.UNAVAILABLE),
        (errors.UpstreamReset(), StatusCode.UNAVAILABLE),
        (errors.UpstreamTimeout(), StatusCode.DEADLINE_EXCEEDED),
        (errors.Forbidden(), StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated("no token", b"Bearer"), StatusCode.UNAUTHENTICATED),
        (errors.BulkheadFull(), StatusCode.RESOURCE_EXHAUSTED),
        (errors.RateLimited("slow down", 1), StatusCode.RESOURCE_EXHAUSTED),
        (errors.BadRequest(), StatusCode.INTERNAL),
        (errors.RouteNotFound(), StatusCode.UNIMPLEMENTED),
        (errors.FaultInjected(status=503), StatusCode.UNAVAILABLE),
        (errors.FaultInjected(status=403), StatusCode.PERMISSION_DENIED),
    ],
)
def test_proxy_failures_map_to_the_grpc_code_a_client_acts_on(
    error: errors.MeshError, code: StatusCode
) -> None:
    assert code_for_reason(error.reason, error.status) == code


def test_every_error_word_has_a_code_of_its_own_or_by_its_status() -> None:
    for word in reason_words():
        assert isinstance(code_for_reason(word, 503), StatusCode)
    assert code_for_reason("some-future-word", 504) == StatusCode.UNAVAILABLE
    assert code_for_reason("some-future-word", 418) == StatusCode.UNKNOWN


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, StatusCode.INTERNAL),
        (401, StatusCode.UNAUTHENTICATED),
        (403, StatusCode.PERMISSION_DENIED),
        (404, StatusCode.UNIMPLEMENTED),
        (429, StatusCode.UNAVAILABLE),
        (502, StatusCode.UNAVAILABLE),
        (503, StatusCode.UNAVAILABLE),
        (504, StatusCode.UNAVAILABLE),
        (500, StatusCode.UNKNOWN),
        (418, StatusCode.UNKNOWN),
    ],
)
def test_http_answers_map_by_the_grpc_table(status: int, code: StatusCode) -> None:
    assert code_for_http_status(status) == code


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"2H", 7200.0),
        (b"3M", 180.0),
        (b"5S", 5.0),
        (b"250m", 0.25),
        (b"1500u", 0.0015),
        (b"99999999n", 0.099999999),
    ],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert timeout.parse(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [b"", b"S", b"10", b"10s", b"-1S", b"1.5S", b"123456789S", b" 1S", b"1SS"]
)
def test_a_malformed_grpc_timeout_is_a_bad_request(value: bytes) -> None:
    with pytest.raises(errors.BadRequest):
        timeout.parse(value)


@pytest.mark.parametrize("seconds", [0.0000005, 0.003, 0.25, 1.5, 59.0, 3600.0, 10**7])
def test_written_timeouts_never_give_more_time_and_fit_eight_digits(seconds: float) -> None:
    value = timeout.format_seconds(seconds)
    assert len(value) <= 9
    written = timeout.parse(value)
    assert written <= seconds * (1 + 1e-9)
    assert written >= seconds * 0.999 or seconds < 1e-6
    assert timeout.format_seconds(-1.0) == b"1n"


def test_a_proxy_failure_of_a_grpc_call_is_a_trailers_only_answer() -> None:
    request = make_request(b"POST", [(b"content-type", b"application/grpc+proto")])
    answer = error_response(errors.NoEndpoints("no endpoint for greeter"), request)
    assert answer.status == 200
    assert answer.body is None and answer.content_length == 0
    head = dict(answer.headers)
    assert head[b"content-type"] == b"application/grpc"
    assert head[b"grpc-status"] == b"14"
    assert wire.decode_message(head[b"grpc-message"]) == "no-endpoints: no endpoint for greeter"
    assert head[b"x-mesh-error"] == b"no-endpoints"
    assert answer.error_reason == "no-endpoints"
    assert wire.head_status(answer) == StatusCode.UNAVAILABLE


def test_other_requests_keep_their_http_error() -> None:
    answer = error_response(errors.Forbidden("denied"), make_request(b"POST"))
    assert answer.status == 403
    assert dict(answer.headers)[b"content-type"].startswith(b"text/plain")
    assert b"grpc-status" not in dict(answer.headers)


def test_grpc_message_is_percent_encoded() -> None:
    encoded = wire.encode_message("50% done: café\n")
    assert encoded == b"50%25 done: caf%C3%A9%0A"
    assert wire.decode_message(encoded) == "50% done: café\n"


def test_status_comes_from_the_head_or_the_trailers() -> None:
    trailers_only = Response(200, [*GRPC, (b"grpc-status", b"14")])
    assert wire.head_status(trailers_only) == StatusCode.UNAVAILABLE
    streaming = Response(200, list(GRPC), Body.complete(b"x"))
    assert wire.head_status(streaming) is None
    assert wire.head_status(Response(503, [])) == StatusCode.UNAVAILABLE
    assert wire.head_status(Response(200, [(b"content-type", b"text/html")])) == StatusCode.UNKNOWN
    assert wire.trailer_status(None) == StatusCode.UNKNOWN
    assert wire.trailer_status(Body.complete(b"")) == StatusCode.UNKNOWN
    broken = Body()
    broken.fail(ConnectionResetError())
    assert wire.trailer_status(broken) == StatusCode.UNKNOWN
    cancelled = Body()
    cancelled.abandon()
    assert wire.trailer_status(cancelled) == StatusCode.CANCELLED
    assert wire.parse_status(b"junk") == StatusCode.UNKNOWN
