"""The fault suite's world: valid tiny inputs every case starts from, built once per session (per worker)."""

import pytest

from fault_harness import build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict:
    return build_world(tmp_path_factory.mktemp("world"))
