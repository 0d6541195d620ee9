"""The smuggling corpus through a real sidecar (RELIABILITY rows 1-5).

Every case of `smuggling_corpus` goes over its own connection to one inbound sidecar in
front of a recording upstream, many at a time. A case passes when either

- the sidecar refused it: 400/501 (or 413/431/505), then closed the connection, and the
  upstream saw no byte of it; or
- exactly one canonical message reached the upstream: the `/smug/<id>` request, parsed
  cleanly by h11, with at most one of Content-Length and Transfer-Encoding (and that one
  `chunked`), one Host, answered 200 to the client.

No case may ever put `/smuggled/<id>` in front of the upstream as a request. "No byte
upstream" is checked by reconciliation over the whole run: every request the upstream
parsed belongs to an accepted case, h11 refused nothing, and no upstream connection ended
part-way through a request (a leaked fragment would show as one of those).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.hardening.smuggling_corpus import Case, corpus, marker
from tests.support.processes import MeshProcess, Sidecars, free_port
from tests.support.rawclient import RawResult, send_raw
from tests.support.upstream import RecordedRequest, RecordingUpstream

pytestmark = pytest.mark.timeout(120)

REFUSALS = {400, 413, 431, 501, 505}
WORKERS = 24
#: Wall-clock budget for the whole corpus (the run itself takes about 10-20 s here).
BUDGET = 60.0


@dataclass
class Sent:
    case: Case
    case_id: int
    result: RawResult

    @property
    def status(self) -> int | None:
        data = self.result.data
        while data.startswith(b"HTTP/1.1 1"):  # interim (100 Continue) heads come first
            data = data.partition(b"\r\n\r\n")[2]
        if not data.startswith(b"HTTP/1.1 ") or len(data) < 12:
            return None
        try:
            return int(data[9:12])
        except ValueError:
            return None


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MeshProcess, int, RecordingUpstream]]:
    group = Sidecars(tmp_path_factory.mktemp("smuggling"))
    with RecordingUpstream() as upstream:
        port = free_port()
        sidecar = group.start(
            "--service", "app", "--app-port", str(upstream.port),
            "--listen", f"127.0.0.1:{port}", name="smuggling",
        )  # fmt: skip
        try:
            yield sidecar, port, upstream
        finally:
            group.stop_all()


def send(port: int, case: Case, case_id: int) -> Sent:
    return Sent(case, case_id, send_raw(port, case.render(case_id), timeout=5.0))


def canonical_problem(request: RecordedRequest) -> str:
    """Why a forwarded request is not canonical, or ""."""
    names = [n.lower() for n, _ in request.headers]
    if "content-length" in names and "transfer-encoding" in names:
        return "both Content-Length and Transfer-Encoding"
    if names.count("content-length") > 1 or names.count("transfer-encoding") > 1:
        return "repeated framing header"
    if request.header_all("transfer-encoding") not in ([], ["chunked"]):
        return f"transfer-encoding {request.header_all('transfer-encoding')}"
    if request.header_all("host") != ["app"]:
        return f"host {request.header_all('host')}"
    if "x-trailer" in names:
        return "a chunked trailer field was forwarded as a header"
    if request.http_version != "1.1":
        return f"version {request.http_version}"
    return ""


def judge(sent: Sent, forwarded: list[RecordedRequest]) -> str:
    """ "" when the case passed, else what went wrong."""
    status = sent.status
    if status in REFUSALS:
        if not sent.result.closed:
            return f"{status} but the connection stayed open"
        if forwarded:
            return f"{status} but {len(forwarded)} request(s) reached the upstream"
        return ""
    if sent.case.must_refuse:
        return f"must be refused, got {status}"
    if status != 200:
        return f"unexpected answer {sent.result.data[:120]!r}"
    if len(forwarded) != 1:
        return f"200 but {len(forwarded)} requests reached the upstream"
    return canonical_problem(forwarded[0])


def test_smuggling_corpus(target: tuple[MeshProcess, int, RecordingUpstream]) -> None:
    sidecar, port, upstream = target
    cases = corpus()
    assert len(cases) >= 1000
    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda item: send(port, item[1], item[0]), enumerate(cases)))
    elapsed = time.monotonic() - start
    assert sidecar.proc.poll() is None, sidecar.logs()

    by_target: dict[str, list[RecordedRequest]] = {}
    for request in upstream.requests:
        by_target.setdefault(request.target, []).append(request)
    failures = []
    for sent in results:
        problem = judge(sent, by_target.pop(f"/smug/{marker(sent.case_id).decode()}", []))
        if problem:
            failures.append(f"{sent.case.family} {sent.case.label!r} (#{sent.case_id}): {problem}")
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n" + "\n".join(failures[:40])
    # Nothing else reached the upstream: no smuggled request, no fragment of a refused one.
    assert by_target == {}, sorted(by_target)[:20]
    assert upstream.errors == []
    assert not [c.id for c in upstream.connections if c.incomplete_request]

    outcomes = Counter("refused" if s.status in REFUSALS else "forwarded" for s in results)
    statuses = Counter(s.status for s in results)
    report = f"{len(cases)} cases in {elapsed:.1f} s: {dict(outcomes)}, statuses {dict(statuses)}"
    print(report)
    if os.environ.get("MESH_CORPUS_REPORT"):
        with open(os.environ["MESH_CORPUS_REPORT"], "a") as out:
            out.write(report + "\n")
    assert elapsed < BUDGET
