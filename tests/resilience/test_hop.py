"""Cross-hop retry headers: reading the caller's, deciding how much to retry, writing ours."""

from __future__ import annotations

import pytest

from mesh.http1.message import Headers
from mesh.resilience.hop import (
    ALL,
    NEVER_SENT_ONLY,
    NONE,
    CallerHop,
    allowance,
    read_caller,
    stamp,
)

pytestmark = pytest.mark.timeout(10)


def test_no_headers_is_the_free_common_case() -> None:
    assert read_caller([(b"accept", b"*/*")]) is None
    assert allowance(None, True) == ALL


def test_reads_attempt_and_deadline() -> None:
    caller = read_caller([(b"x-mesh-attempt", b"2"), (b"x-mesh-deadline-ms", b"1500")])
    assert caller == CallerHop(2, 1500)


@pytest.mark.parametrize("value", [b"", b"-1", b"two", b"1.5", b"9" * 20])
def test_broken_values_are_ignored(value: bytes) -> None:
    caller = read_caller([(b"x-mesh-attempt", value), (b"x-mesh-deadline-ms", value)])
    assert caller == CallerHop(0, None)
    assert allowance(caller, True) == ALL, "a broken header never turns retries off wrongly"


def test_values_are_capped() -> None:
    caller = read_caller([(b"x-mesh-attempt", b"123456"), (b"x-mesh-deadline-ms", b"9" * 12)])
    assert caller == CallerHop(100, 86_400_000)


def test_allowance() -> None:
    assert allowance(CallerHop(1, None), defer_to_caller=True) == NEVER_SENT_ONLY
    assert allowance(CallerHop(1, None), defer_to_caller=False) == ALL
    assert allowance(CallerHop(2, None), defer_to_caller=False) == NONE
    assert allowance(CallerHop(7, 100), defer_to_caller=True) == NONE


def test_stamp_appends_fresh_and_replaces_otherwise() -> None:
    headers: Headers = [(b"accept", b"*/*")]
    stamp(headers, 1, 2500, fresh=True)
    assert headers == [
        (b"accept", b"*/*"),
        (b"x-mesh-attempt", b"1"),
        (b"x-mesh-deadline-ms", b"2500"),
    ]
    stamp(headers, 2, None, fresh=False)
    assert headers == [(b"accept", b"*/*"), (b"x-mesh-attempt", b"2")]
    doubled: Headers = [(b"x-mesh-attempt", b"1"), (b"x-mesh-attempt", b"3")]
    stamp(doubled, 17, -5, fresh=False)
    assert doubled == [(b"x-mesh-attempt", b"17"), (b"x-mesh-deadline-ms", b"0")]
