import pickle
import shutil
import subprocess
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch.utils.data import RandomSampler, SequentialSampler
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.transforms.v2 import functional as TF

from lightning_dsl.data import CIFARDataModule
from lightning_dsl.data import images as images_module
from lightning_dsl.data.images import CACHE_FILENAME, InMemoryImageDataset, decode_images

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def fake_split(num_classes: int, per_class: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Random HWC uint8 images, ``per_class`` of each class, in shuffled order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class)).tolist()
    return rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8), labels


def dump(path: Path, entry: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(entry, f)


def make_torchvision_cifar10(root: Path, per_class_per_batch: int = 2, test_per_class: int = 3) -> dict:
    """torchvision's cifar-10-batches-py: 5 training batches, a test batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for k in range(1, 6):
        x, y = fake_split(10, per_class_per_batch, seed=k)
        dump(folder / f"data_batch_{k}", {"data": x.transpose(0, 3, 1, 2).reshape(len(y), -1), "labels": y})
        train_x.append(x)
        train_y += y
    test_x, test_y = fake_split(10, test_per_class, seed=0)
    test_x[0] = 128  # a constant image, to check the normalization
    dump(folder / "test_batch", {"data": test_x.transpose(0, 3, 1, 2).reshape(len(test_y), -1), "labels": test_y})
    dump(folder / "batches.meta", {"label_names": CIFAR10_CLASSES})
    return {"train_x": np.concatenate(train_x), "train_y": train_y, "test_x": test_x, "test_y": test_y}


def make_torchvision_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, per_class in (("train", 3), ("test", 1)):
        x, y = fake_split(100, per_class, seed=per_class)
        dump(folder / split, {"data": x.transpose(0, 3, 1, 2).reshape(len(y), -1), "fine_labels": y})
    dump(folder / "meta", {"fine_label_names": [f"class{i:03d}" for i in range(100)]})


def make_image_folder(root: Path, classes: list[str] = CIFAR10_CLASSES, train_per_class: int = 6) -> dict:
    """PNG files (lossless) in the ImageFolder layout; returns the pixels by split."""
    pixels: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for split, per_class in (("train", train_per_class), ("test", 2)):
        x, y = fake_split(len(classes), per_class, seed=len(split))
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            path = root / split / classes[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
        pixels[split] = [x[[i for i, label in enumerate(y) if label == c]] for c in range(len(classes))]
    return pixels


@pytest.fixture
def tv_root(tmp_path: Path) -> Path:
    make_torchvision_cifar10(tmp_path)
    return tmp_path


def all_items(dataset: InMemoryImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = dataset.__getitems__(list(range(len(dataset))))
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def raw_images(dataset: InMemoryImageDataset) -> set[bytes]:
    return {image.numpy().tobytes() for image in dataset.images}


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize(("name", "num_classes"), [("cifar10", 10), ("cifar100", 100)])
def test_num_classes_known_right_after_init(name: str, num_classes: int) -> None:
    assert CIFARDataModule(name=name, root="/nonexistent").num_classes == num_classes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "mnist"}, r"`name`.*\['cifar10', 'cifar100'\].*'mnist'"),
        ({"normalization": "minmax"}, r"`normalization`.*'dataset', 'imagenet'.*'minmax'"),
        ({"val_size": -1}, r"`val_size`.*-1"),
        ({"train_subset": 5}, r"`train_subset`.*at least 10.*got 5"),
        ({"name": "cifar100", "train_subset": 50}, r"`train_subset`.*at least 100.*got 50"),
        ({"batch_size": 0}, r"`batch_size`.*positive.*got 0"),
        ({"eval_batch_size": 0}, r"`eval_batch_size`.*positive.*got 0"),
        ({"num_workers": -1}, r"`num_workers`.*got -1"),
    ],
)
def test_bad_arguments_are_rejected_in_init(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CIFARDataModule(**kwargs)


def test_sizes_are_checked_against_the_data_in_setup(tv_root: Path) -> None:
    with pytest.raises(ValueError, match=r"`val_size`.*\[0, 99\].*got 100"):
        CIFARDataModule(root=str(tv_root), val_size=100).setup()
    # 90 training images left after holding out 10, 9 per class: at most 90 in a balanced subset.
    with pytest.raises(ValueError, match=r"`train_subset`.*\[10, 90\].*val_size=10.*got 91"):
        CIFARDataModule(root=str(tv_root), val_size=10, train_subset=91).setup()


# ---------------------------------------------------------------------- finding and loading the data
def test_missing_data_error_names_root_and_both_remedies(tmp_path: Path) -> None:
    dm = CIFARDataModule(root=str(tmp_path / "data"))
    for hook in (dm.prepare_data, dm.setup):
        with pytest.raises(FileNotFoundError) as info:
            hook()
        message = str(info.value)
        assert str((tmp_path / "data").resolve()) in message
        assert "cifar-10-batches-py" in message and "train" in message and "test" in message
        assert "download=True" in message
        assert "tar xzf ../shared/data/cifar10-jpg.tar.gz" in message and "root=data/cifar10-jpg" in message


def test_missing_data_error_points_at_the_other_dataset(tmp_path: Path) -> None:
    make_torchvision_cifar100(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/, which is CIFAR-100: name='cifar100'"):
        CIFARDataModule(name="cifar10", root=str(tmp_path)).prepare_data()


def test_failed_download_explains_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(self: CIFAR10) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(CIFAR10, "download", no_network)
    with pytest.raises(FileNotFoundError, match="Downloading CIFAR-10 .* failed with URLError") as info:
        CIFARDataModule(root=str(tmp_path), download=True).prepare_data()
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert "download=True" in str(info.value) and "cifar10-jpg" in str(info.value)


def test_torchvision_format(tv_root: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root), batch_size=16, num_workers=0, augment=False)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.data_format == "torchvision" and dm.classes == CIFAR10_CLASSES
    assert (len(dm.train_set), len(dm.test_set)) == (100, 30)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.max()) < 10


def test_cifar100_torchvision_format(tmp_path: Path) -> None:
    make_torchvision_cifar100(tmp_path)
    dm = CIFARDataModule(name="cifar100", root=str(tmp_path), train_subset=100)
    dm.setup()
    assert dm.num_classes == 100 and len(dm.classes) == 100
    assert torch.bincount(dm.train_set.targets, minlength=100).tolist() == [1] * 100


def test_image_folder_format_decodes_exact_pixels(tmp_path: Path) -> None:
    pixels = make_image_folder(tmp_path)
    dm = CIFARDataModule(root=str(tmp_path), augment=False)
    dm.setup()
    assert dm.data_format == "imagefolder"
    assert dm.classes == CIFAR10_CLASSES and (len(dm.train_set), len(dm.test_set)) == (60, 20)
    for split, dataset in (("train", dm.train_set), ("test", dm.test_set)):
        for c in range(10):
            decoded = dataset.images[dataset.targets == c].permute(0, 2, 3, 1).numpy()
            expected = pixels[split][c]
            assert sorted(i.tobytes() for i in decoded) == sorted(i.tobytes() for i in expected)


def test_image_folder_cache_is_written_reused_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_image_folder(tmp_path)
    CIFARDataModule(root=str(tmp_path)).prepare_data()
    assert (tmp_path / CACHE_FILENAME).is_file()
    first = CIFARDataModule(root=str(tmp_path))
    with monkeypatch.context() as m:  # a valid cache means no decoding
        m.setattr(images_module, "decode_images", lambda *args: pytest.fail("decoded despite a valid cache"))
        first.setup()
    # Changing a file invalidates the cache.
    changed = next((tmp_path / "train" / "cat").iterdir())
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(changed)
    second = CIFARDataModule(root=str(tmp_path), augment=False)
    second.setup()
    assert np.zeros((32, 32, 3), dtype=np.uint8).tobytes() in {
        i.permute(1, 2, 0).numpy().tobytes() for i in second.train_set.images
    }


def test_an_unwritable_cache_only_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    make_image_folder(tmp_path)
    monkeypatch.setattr(torch, "save", disk_full)
    dm = CIFARDataModule(root=str(tmp_path))
    with pytest.warns(UserWarning, match="Could not write the cache"):
        dm.prepare_data()
    with pytest.warns(UserWarning, match="Could not write the cache"):
        dm.setup()  # decodes again
    assert len(dm.train_set) == 60 and sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"]


def test_image_folder_with_the_wrong_number_of_classes(tmp_path: Path) -> None:
    make_image_folder(tmp_path, classes=["cat", "dog", "frog"])
    with pytest.raises(ValueError, match=r"Found 3 class folders in .*train \(cat, dog, frog\).*'cifar10' has 10"):
        CIFARDataModule(root=str(tmp_path)).setup()


# ---------------------------------------------------------------------- transforms
@pytest.mark.parametrize(
    ("normalization", "mean", "std"),
    [("dataset", CIFAR10_MEAN, CIFAR10_STD), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)],
)
def test_normalization_of_a_constant_image(tv_root: Path, normalization: str, mean: tuple, std: tuple) -> None:
    dm = CIFARDataModule(root=str(tv_root), normalization=normalization)
    dm.setup()
    x, _ = dm.test_set[0]  # the fake test split starts with a constant 128 image
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(x, expected.view(3, 1, 1).expand(3, 32, 32))


def test_without_augmentation_items_are_the_normalized_images(tv_root: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root), augment=False)
    dm.setup()
    x, _ = all_items(dm.train_set)
    expected = (dm.train_set.images.float() / 255 - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(
        CIFAR10_STD
    ).view(3, 1, 1)
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(all_items(dm.train_set)[0], x)


def test_augmentation_matches_random_crop_with_padding_and_flip() -> None:
    image = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    padded = TF.pad(image[0], [4])
    candidates = {}
    for top in range(9):
        for left in range(9):
            crop = TF.crop(padded, top, left, 32, 32)
            candidates[crop.numpy().tobytes()] = (top, left, False)
            candidates[TF.horizontal_flip(crop).numpy().tobytes()] = (top, left, True)
    dataset = InMemoryImageDataset(
        image, torch.zeros(1), CIFAR10_MEAN, CIFAR10_STD, augment=True, generator=torch.Generator().manual_seed(0)
    )
    outputs = dataset.crop_and_flip(image.expand(4000, 3, 32, 32))
    seen = [candidates[out.numpy().tobytes()] for out in outputs]  # KeyError: not a crop-and-flip of the image
    assert len(set(seen)) == 162  # every offset and both flips happen
    assert 0.45 < sum(flip for *_, flip in seen) / len(seen) < 0.55


def test_only_the_training_split_is_augmented(tv_root: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root), val_size=20)
    dm.setup()
    assert dm.train_set.augment and not dm.val_set.augment and not dm.test_set.augment
    assert not torch.equal(all_items(dm.train_set)[0], all_items(dm.train_set)[0])
    torch.testing.assert_close(all_items(dm.val_set)[0], all_items(dm.val_set)[0])


# ---------------------------------------------------------------------- splits and subsets
def test_validation_split_is_stratified_and_disjoint(tv_root: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root), val_size=20)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, 30)
    assert torch.bincount(dm.val_set.targets, minlength=10).tolist() == [2] * 10
    assert torch.bincount(dm.train_set.targets, minlength=10).tolist() == [8] * 10
    train, val = raw_images(dm.train_set), raw_images(dm.val_set)
    assert not train & val and len(train | val) == 100
    assert dm.val_dataloader().dataset is dm.val_set


def test_without_val_size_validation_uses_the_test_split(tv_root: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root))
    dm.setup()
    assert dm.val_set is None and dm.val_dataloader().dataset is dm.test_set and len(dm.train_set) == 100


@pytest.mark.parametrize(("val_size", "train_subset"), [(0, 50), (10, 45), (0, 13)])
def test_train_subset_is_class_balanced(tv_root: Path, val_size: int, train_subset: int) -> None:
    dm = CIFARDataModule(root=str(tv_root), val_size=val_size, train_subset=train_subset)
    dm.setup()
    counts = torch.bincount(dm.train_set.targets, minlength=10)
    assert int(counts.sum()) == train_subset and int(counts.max() - counts.min()) <= 1
    if val_size:
        assert not raw_images(dm.train_set) & raw_images(dm.val_set)


def test_same_seed_same_data_other_seed_other_data(tv_root: Path) -> None:
    def first_batch_and_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, set[bytes]]:
        dm = CIFARDataModule(root=str(tv_root), val_size=20, train_subset=50, batch_size=8, num_workers=0, seed=seed)
        dm.setup()
        x, y = next(iter(dm.train_dataloader()))
        return x, y, raw_images(dm.val_set)

    x0, y0, val0 = first_batch_and_split(0)
    x1, y1, val1 = first_batch_and_split(0)
    x2, y2, val2 = first_batch_and_split(1)
    assert torch.equal(x0, x1) and torch.equal(y0, y1) and val0 == val1
    assert not torch.equal(x0, x2) and val0 != val2


def test_dataloaders(tv_root: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root), batch_size=32, eval_batch_size=64, num_workers=2, pin_memory=False)
    dm.setup()
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert isinstance(train.sampler, RandomSampler) and isinstance(test.sampler, SequentialSampler)
    assert (train.batch_size, val.batch_size, test.batch_size) == (32, 64, 64)
    assert not train.drop_last and train.persistent_workers and train.num_workers == 2
    assert len(train) == 4  # 100 images, the last batch kept


def test_workers_give_reproducible_batches(tv_root: Path) -> None:
    def batches() -> list[torch.Tensor]:
        dm = CIFARDataModule(root=str(tv_root), batch_size=50, num_workers=1, pin_memory=False)
        dm.setup()
        return [x for x, _ in dm.train_dataloader()]

    first, second = batches(), batches()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ---------------------------------------------------------------------- the JPEG copy beside the project
@pytest.mark.shared_data
def test_shared_jpeg_copy(tmp_path: Path) -> None:
    archive = SHARED_DATA / "cifar10-jpg.tar.gz"
    if not archive.is_file() or shutil.which("tar") is None:
        pytest.skip(f"{archive} (or `tar`) not found: the shared JPEG copy of CIFAR-10 is optional")
    listing = subprocess.run(["tar", "tzf", str(archive)], check=True, capture_output=True, text=True).stdout
    files = [Path(name) for name in listing.split() if name.endswith(".jpg")]
    assert Counter(f.parts[0] for f in files) == {"train": 50_000, "test": 10_000}
    assert Counter(f.parts[1] for f in files if f.parts[0] == "train") == dict.fromkeys(CIFAR10_CLASSES, 5_000)
    assert Counter(f.parts[1] for f in files if f.parts[0] == "test") == dict.fromkeys(CIFAR10_CLASSES, 1_000)
    # Creating 60,000 files is slow on a busy disk: extract the test split and check that it decodes as expected.
    subprocess.run(["tar", "xzf", str(archive), "-C", str(tmp_path), "test"], check=True)
    (tmp_path / "train").mkdir()
    assert CIFARDataModule(root=str(tmp_path))._find_format() == "imagefolder"
    test = ImageFolder(str(tmp_path / "test"))
    assert test.classes == CIFAR10_CLASSES and len(test) == 10_000
    images = decode_images([path for path, _ in test.samples[::5]], (3, 32, 32))
    assert images.shape == (2_000, 3, 32, 32) and images.dtype == torch.uint8
    torch.testing.assert_close(images.float().mean((0, 2, 3)) / 255, torch.tensor(CIFAR10_MEAN), atol=0.01, rtol=0)


# ---------------------------------------------------------------------- with a Trainer
class _LinearProbe(LightningModule):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3 * 32 * 32, num_classes)
        self.steps = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.steps += 1
        x, y = batch
        return torch.nn.functional.cross_entropy(self.linear(x.flatten(1)), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.linear(x.flatten(1)), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(tmp_path: Path) -> Trainer:
    return Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_fit_with_a_trainer(tv_root: Path, tmp_path: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root), batch_size=32, num_workers=0, val_size=10, train_subset=50)
    model = _LinearProbe(dm.num_classes)
    _trainer(tmp_path).fit(model, datamodule=dm)
    assert model.steps == 2  # 50 images in batches of 32, the last one kept


def test_missing_data_stops_fit_before_training(tmp_path: Path) -> None:
    model = _LinearProbe(10)
    with pytest.raises(FileNotFoundError, match="download=True"):
        _trainer(tmp_path).fit(model, datamodule=CIFARDataModule(root=str(tmp_path / "none")))
    assert model.steps == 0


def test_predict_dataloader_is_the_test_split_in_order(tv_root: Path) -> None:
    dm = CIFARDataModule(root=str(tv_root), batch_size=16, eval_batch_size=8, num_workers=0)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert sum(len(x) for x, _ in batches) == len(dm.test_set) == 30
    assert torch.equal(torch.cat([y for _, y in batches]), torch.cat([y for _, y in dm.test_dataloader()]))
