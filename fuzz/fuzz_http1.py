"""Coverage-guided fuzzing of the request parser and forwarder (atheris / libFuzzer).

    python -m fuzz.seeds /tmp/http1-seeds                  # seed corpus (smuggling cases)
    python -m fuzz.fuzz_http1 -runs=1000000 -max_len=512 -artifact_prefix=/tmp/ /tmp/http1-seeds

Each input is one client's bytes; `fuzz.forward_harness.check` runs them through a real
`ServerConnection` and raises when an invariant breaks, which libFuzzer reports as a crash
(the input is saved under `-artifact_prefix`). The data path is compiled, so coverage comes
from the interpreted parts (target checks, the harness, h11's re-parse); libFuzzer's value
profile (`-use_value_profile=1`) helps it past comparisons there.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["fuzz", "h11", "mesh"]):
    from fuzz.forward_harness import check


def test_one_input(data: bytes) -> None:
    check(data)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
