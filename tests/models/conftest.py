"""Fixtures for the model tests: the data kept beside the repository (``../shared/data``)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

# The `shared` folder beside the repository root; never committed, absent on most machines.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return ``../shared/data``, skipping the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA}, which is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cifar10_jpg_test(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extract the ``test/`` split of ``cifar10-jpg.tar.gz`` once per session; return its folder."""
    archive = shared_data / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"needs {archive}, which is absent")
    root = tmp_path_factory.mktemp("cifar10-jpg")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("test/")]
        tar.extractall(root, members=members, filter="data")
    return root / "test"
