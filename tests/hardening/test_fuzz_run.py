"""A bounded coverage-guided fuzz run in CI (RELIABILITY row 11).

atheris drives `fuzz.fuzz_http1` (the parser and forwarder with the smuggling invariants)
from a seed corpus made of well-formed requests and the smuggling corpus, for 10 s.
Any broken invariant is a libFuzzer crash: the run fails and the input is saved. The longer
run is documented in the README (`-runs=1000000`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.seeds import write_seeds
from tests.support.processes import REPO

pytestmark = pytest.mark.timeout(90)

#: Seconds of fuzzing in CI (override with MESH_FUZZ_SECONDS).
SECONDS = int(os.environ.get("MESH_FUZZ_SECONDS", "10"))


def test_bounded_fuzz_run_keeps_the_invariants(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    write_seeds(seeds)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuzz.fuzz_http1",
            "-runs=1000000",
            "-max_len=512",
            f"-max_total_time={SECONDS}",
            "-use_value_profile=1",
            "-seed=1",
            f"-artifact_prefix={artifacts}/",
            str(seeds),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
    )
    log = proc.stderr + proc.stdout
    crashes = list(artifacts.iterdir())
    assert proc.returncode == 0 and not crashes, (
        f"invariant broken; inputs saved: {[c.name for c in crashes]}\n{log[-4000:]}"
    )
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert done, log[-2000:]
    runs = int(done.group(1))
    print(f"fuzz: {runs} runs in {done.group(2)} s")
    assert runs > 5_000
