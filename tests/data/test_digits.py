import pytest
import torch
from sklearn.datasets import load_digits

from lightning_dsl.data import DigitsDataModule


@pytest.fixture(scope="module")
def dm() -> DigitsDataModule:
    module = DigitsDataModule(batch_size=32)
    module.setup()
    return module


def denormalized(module: DigitsDataModule, split: str) -> torch.Tensor:
    return getattr(module, f"{split}_set").tensors[0] * module.std + module.mean


def test_split_sizes_cover_all_images(dm: DigitsDataModule) -> None:
    sizes = (len(dm.train_set), len(dm.val_set), len(dm.test_set))
    assert sizes == (1257, 270, 270) and sum(sizes) == 1797 and dm.num_classes == 10


def test_splits_are_disjoint_and_complete(dm: DigitsDataModule) -> None:
    pixels = torch.cat([denormalized(dm, s) for s in ("train", "val", "test")]) * 16
    rows = sorted(tuple(r) for r in pixels.round().flatten(1).long().tolist())
    expected = sorted(tuple(r) for r in torch.tensor(load_digits().images).flatten(1).long().tolist())
    assert rows == expected


def test_splits_are_stratified(dm: DigitsDataModule) -> None:
    total = torch.bincount(torch.tensor(load_digits().target), minlength=10).float()
    for split, fraction in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        counts = torch.bincount(getattr(dm, f"{split}_set").tensors[1], minlength=10).float()
        assert torch.all((counts - fraction * total).abs() <= 1.5), (split, counts)


def test_shapes_and_dtypes(dm: DigitsDataModule) -> None:
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.val_dataloader().dataset) == 270 and len(dm.test_dataloader().dataset) == 270


def test_normalized_with_the_training_statistics(dm: DigitsDataModule) -> None:
    train = dm.train_set.tensors[0]
    assert abs(float(train.mean())) < 1e-5 and abs(float(train.std()) - 1) < 1e-5
    scaled = denormalized(dm, "train")
    assert float(scaled.min()) > -1e-5 and float(scaled.max()) < 1 + 1e-5  # pixels 0..16 scaled to [0, 1]
    assert dm.mean == pytest.approx(float(scaled.mean()), abs=1e-6) and 0.2 < dm.mean < 0.4
    # The other splits use the same statistics, so they are only roughly standardized.
    torch.testing.assert_close(
        denormalized(dm, "test") * 16, (denormalized(dm, "test") * 16).round(), atol=1e-4, rtol=0
    )


def test_seeded_splits_and_shuffling() -> None:
    def split_and_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        module = DigitsDataModule(seed=seed)
        module.setup()
        return module.val_set.tensors[1], next(iter(module.train_dataloader()))[1]

    (val0, batch0), (val1, batch1), (val2, batch2) = split_and_batch(0), split_and_batch(0), split_and_batch(1)
    assert torch.equal(val0, val1) and torch.equal(batch0, batch1)
    assert not torch.equal(val0, val2) and not torch.equal(batch0, batch2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, r"`val_fraction`.*got 0.0"),
        ({"val_fraction": 1.0}, r"`val_fraction`.*got 1.0"),
        ({"test_fraction": -0.1}, r"`test_fraction`.*got -0.1"),
        ({"test_fraction": 0.001}, r"`test_fraction`.*at least one.*per class.*got 0.001"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction.*0.5.*0.5"),
        ({"batch_size": 0}, r"`batch_size`.*got 0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)
