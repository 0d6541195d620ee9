"""Fixtures for the protocol tests: a mesh CA and a module-scoped group of real sidecars."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.certs import Pki
from tests.support.processes import Sidecars


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecars]:
    group = Sidecars(tmp_path_factory.mktemp("sidecars"))
    yield group
    group.stop_all()
