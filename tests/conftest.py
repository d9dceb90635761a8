"""Fixtures for the tests that run the CLI, the configs and the examples end to end (CPU, a few batches)."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The JPEG copy of CIFAR-10 (ImageFolder layout): extracted beside the code (gitignored) on a
# development machine, else only the archive in the `shared` folder beside the repository.
CIFAR10_JPG = REPO / "data" / "cifar10-jpg"
CIFAR10_JPG_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
# Images per class in the small copy the training tests use: enough for two batches of 4.
MINI_PER_CLASS = {"train": 3, "test": 1}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run the tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def single_thread() -> Iterator[None]:
    """Run torch on one thread: the models are tiny, and OpenMP threads that spin-wait for each other
    on a busy machine make a step of a small ResNet ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def wandb_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """W&B offline and silent, its folders under ``tmp_path``; the run and W&B's service ended afterwards.

    ``WandbLogger(offline=True)`` sets ``WANDB_MODE`` for the whole process; monkeypatch restores it.
    """
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true"}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        folder = tmp_path / "wandb-home" / name.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(name, str(folder))
    yield
    import wandb

    if wandb.run is not None:
        wandb.finish()
    # W&B's service process outlives the run and resolves a relative `save_dir` (the configs' "runs") in
    # its own working directory, the first test's: stop it, so the next test starts one in its own.
    wandb.teardown()


@pytest.fixture(scope="session")
def cifar10_jpg_mini(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image ImageFolder copy of the JPEG CIFAR-10 (3 train and 1 test image per class).

    Taken from ``data/cifar10-jpg`` when it is extracted there, else from ``../shared/data/cifar10-jpg.tar.gz``;
    the test is skipped when neither exists. Small, so that a test decodes 40 images, not 60,000.
    """
    root = tmp_path_factory.mktemp("cifar10-jpg-mini")
    if (CIFAR10_JPG / "train").is_dir() and (CIFAR10_JPG / "test").is_dir():
        for split, count in MINI_PER_CLASS.items():
            for class_dir in sorted(p for p in (CIFAR10_JPG / split).iterdir() if p.is_dir()):
                (root / split / class_dir.name).mkdir(parents=True)
                for image in sorted(class_dir.glob("*.jpg"))[:count]:
                    shutil.copyfile(image, root / split / class_dir.name / image.name)
        return root
    if CIFAR10_JPG_ARCHIVE.is_file():
        wanted = {f"{split}/{name:04d}.jpg" for split, count in MINI_PER_CLASS.items() for name in range(count)}
        expected, extracted = 10 * len(wanted), 0
        with tarfile.open(CIFAR10_JPG_ARCHIVE) as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and len(parts) == 3 and f"{parts[0]}/{parts[2]}" in wanted:
                    tar.extract(member, root, filter="data")
                    extracted += 1
                    if extracted == expected:
                        break
        if extracted != expected:
            pytest.skip(f"{CIFAR10_JPG_ARCHIVE} does not hold the expected train/<class>/NNNN.jpg layout")
        return root
    pytest.skip(
        f"needs the JPEG copy of CIFAR-10: neither {CIFAR10_JPG} nor {CIFAR10_JPG_ARCHIVE} exists"
        " (extract it with: mkdir -p data/cifar10-jpg && tar xzf ../shared/data/cifar10-jpg.tar.gz -C data/cifar10-jpg)"
    )
