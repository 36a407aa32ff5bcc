"""Shared test fixtures: the real shared data folder (skipped when absent) and a small random screen."""

import os
import pathlib

import pytest

from random_screen import build_random_screen

# Tests must never grab every core or a GPU; keep JAX on the CPU unless a test says otherwise.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO_DPATH = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA_DPATH = REPO_DPATH.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dpath() -> pathlib.Path:
    """`../shared/data` beside the repo; tests that need it skip cleanly in a user's clone."""
    if not SHARED_DATA_DPATH.is_dir():
        pytest.skip(f"real data folder not found: {SHARED_DATA_DPATH}")
    return SHARED_DATA_DPATH


@pytest.fixture
def random_screen():
    return build_random_screen()
