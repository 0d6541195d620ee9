"""Write a seed corpus for the fuzzer: well-formed requests plus the smuggling corpus.

python -m fuzz.seeds DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.hardening.smuggling_corpus import corpus

WELL_FORMED = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p?q=1 HTTP/1.1\r\nHost: a:80\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
    b"GET http://b/x HTTP/1.1\r\nHost: a\r\nConnection: x-a, close\r\nX-A: 1\r\n\r\n",
    b"PUT /x HTTP/1.0\r\nContent-Length: 1\r\n\r\nzGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
]


def write_seeds(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    seeds = WELL_FORMED + [case.render(i) for i, case in enumerate(corpus())]
    for i, seed in enumerate(seeds):
        (directory / f"seed-{i:05d}").write_bytes(seed)
    return len(seeds)


if __name__ == "__main__":
    print(write_seeds(Path(sys.argv[1])), "seeds written")
