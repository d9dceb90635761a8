from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_dsl.core.split import split_network
from lightning_dsl.models import CIFARResNet, cifar_resnet
from lightning_dsl.models.cifar_resnet import PadShortcut, load_weights

PUBLISHED = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
}


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)],
)
def test_parameter_count(depth: int, expected: int) -> None:
    # 20/32/44/56/110 -> 0.27M/0.46M/0.66M/0.85M/1.7M in He et al. (2016), Table 6.
    assert num_parameters(cifar_resnet(depth)) == expected


def test_canonical_state_dict_names() -> None:
    keys = list(cifar_resnet(20).state_dict())
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    assert "layer1.2.conv2.weight" in keys and "layer3.2.bn2.running_var" in keys
    assert keys[-2:] == ["linear.weight", "linear.bias"]
    assert not any("shortcut" in k or k.startswith(("stem", "head")) for k in keys)


def test_architecture() -> None:
    net = cifar_resnet(20)
    assert [len(stage) for stage in (net.layer1, net.layer2, net.layer3)] == [3, 3, 3]
    assert [stage[0].conv2.out_channels for stage in (net.layer1, net.layer2, net.layer3)] == [16, 32, 64]
    assert [stage[0].conv1.stride for stage in (net.layer1, net.layer2, net.layer3)] == [(1, 1), (2, 2), (2, 2)]
    assert isinstance(net.layer2[0].shortcut, PadShortcut) and isinstance(net.layer3[0].shortcut, PadShortcut)
    assert isinstance(net.layer1[0].shortcut, nn.Identity) and isinstance(net.layer2[1].shortcut, nn.Identity)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pad_shortcut_subsamples_and_pads_symmetrically_without_parameters() -> None:
    shortcut = PadShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_model_is_picklable() -> None:
    net = cifar_resnet(20).eval()
    clone = pickle.loads(pickle.dumps(net))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(clone(x), net(x))


def test_kaiming_normal_init() -> None:
    torch.manual_seed(0)
    net = cifar_resnet(110)
    weights = torch.cat([m.weight.flatten() for m in net.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 64])
    # kaiming_normal_ with fan_in = 64 * 3 * 3: std = sqrt(2 / 576) ~ 0.0589 (PyTorch's default would be ~0.024).
    assert weights.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.02)


@pytest.mark.parametrize(("depth", "num_units"), [(8, 5), (20, 11), (56, 29), (110, 56)])
def test_cut_units_count(depth: int, num_units: int) -> None:
    assert len(cifar_resnet(depth).cut_units()) == num_units == 1 + 3 * ((depth - 2) // 6) + 1


@pytest.mark.parametrize(
    ("depth", "expected"),
    [
        (20, {"shallow": 4, "middle": 5, "deep": 7}),
        (56, {"shallow": 10, "middle": 14, "deep": 19}),
        (110, {"shallow": 19, "middle": 28, "deep": 37}),
    ],
)
def test_named_cuts(depth: int, expected: dict[str, int]) -> None:
    assert cifar_resnet(depth).named_cuts() == expected


@pytest.mark.parametrize("depth", [20, 110])
def test_sequential_of_units_equals_forward(depth: int) -> None:
    torch.manual_seed(0)
    net = cifar_resnet(depth, num_classes=7)
    # Non-trivial BatchNorm statistics, so that eval mode actually uses them.
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(nn.Sequential(*net.cut_units())(x), net(x))
        halves = split_network(net, "middle")
        assert torch.equal(halves.server(halves.client(x)), net(x))


def test_cut_units_share_parameters_and_keep_state_dict_canonical() -> None:
    net = cifar_resnet(20)
    keys_before = list(net.state_dict())
    units = net.cut_units()
    assert units[0].conv1 is net.conv1 and units[0].bn1 is net.bn1
    assert units[-1].linear is net.linear
    assert units[1] is net.layer1[0] and units[-2] is net.layer3[-1]
    assert list(net.state_dict()) == keys_before
    assert num_parameters(nn.Sequential(*units)) == num_parameters(net)


@pytest.mark.parametrize("depth", [0, 7, 8.0, 21, 100, -4, True])
def test_bad_depth(depth: object) -> None:
    with pytest.raises(ValueError, match=r"`depth` to be 6n \+ 2") as excinfo:
        cifar_resnet(depth)  # type: ignore[arg-type]
    assert f"but got {depth!r}" in str(excinfo.value)
    assert "20, 32, 44, 56, 110" in str(excinfo.value)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match=f"`num_classes` to be a positive integer, but got {num_classes!r}"):
        cifar_resnet(20, num_classes=num_classes)  # type: ignore[arg-type]


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.th"
    with pytest.raises(FileNotFoundError, match="`weights`") as excinfo:
        cifar_resnet(20, weights=path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("wrap", [False, True])
def test_round_trip_plain_and_published_formats(tmp_path: Path, prefix: str, wrap: bool) -> None:
    torch.manual_seed(0)
    source = cifar_resnet(20).eval()
    state = {prefix + k: v for k, v in source.state_dict().items()}
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": state, "best_prec1": 91.0} if wrap else state, path)
    loaded = cifar_resnet(20, weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), source(x))


def test_checkpoint_with_arbitrary_objects_loads_with_a_warning(tmp_path: Path) -> None:
    source = cifar_resnet(20)
    path = tmp_path / "with-args.th"
    # Old training scripts pickle their argparse namespace next to the weights; weights_only=True refuses it.
    torch.save({"state_dict": source.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        loaded = cifar_resnet(20, weights=path)
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)


def test_weights_from_url_use_torch_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    source = cifar_resnet(20)
    calls: list[tuple[str, object]] = []

    def fake_load_state_dict_from_url(url: str, **kwargs: object) -> dict[str, object]:
        calls.append((url, kwargs.get("map_location")))
        return {"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_load_state_dict_from_url)
    url = "https://example.org/resnet20-12fca82f.th"
    loaded = cifar_resnet(20, weights=url)
    assert calls == [(url, "cpu")]
    assert torch.equal(loaded.linear.weight, source.linear.weight)


def test_weights_that_are_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="`weights` to name a state dict.*holds a list"):
        cifar_resnet(20, weights=path)


def test_mismatched_weights_leave_the_model_untouched(tmp_path: Path) -> None:
    path = tmp_path / "resnet20.pt"
    torch.save(cifar_resnet(20).state_dict(), path)
    torch.manual_seed(0)
    net = CIFARResNet(20, num_classes=100)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="shape mismatches"):
        load_weights(net, path)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def published(shared_data: Path, depth: int) -> Path:
    path = shared_data / "pretrained" / PUBLISHED[depth]
    if not path.is_file():
        pytest.skip(f"needs {path}, which is absent")
    return path


@pytest.mark.shared_data
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_published_checkpoints_load_strictly(shared_data: Path, depth: int) -> None:
    path = published(shared_data, depth)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    net = cifar_resnet(depth, weights=path)
    own = net.state_dict()
    # The files predate BatchNorm's `num_batches_tracked` buffer; every other name matches exactly.
    assert set(state) == {k for k in own if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(own[k], v) for k, v in state.items())


@pytest.mark.shared_data
def test_published_checkpoint_with_wrong_depth_or_classes(shared_data: Path) -> None:
    path = published(shared_data, 20)
    with pytest.raises(ValueError, match=r"missing from the checkpoint \(60\).*looks like depth=20, num_classes=10"):
        cifar_resnet(32, weights=path)
    with pytest.raises(ValueError) as excinfo:
        cifar_resnet(20, num_classes=100, weights=path)
    message = str(excinfo.value)
    assert "CIFARResNet(depth=20, num_classes=100)" in message
    assert "linear.weight: checkpoint (10, 64) vs model (100, 64)" in message
    assert "missing" not in message and "unexpected" not in message


@pytest.mark.shared_data
def test_resnet20_accuracy_on_jpeg_test_split(shared_data: Path, cifar10_jpg_test: Path) -> None:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    net = cifar_resnet(20, weights=published(shared_data, 20)).eval()
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    dataset = datasets.ImageFolder(str(cifar10_jpg_test), transform=transform)
    assert len(dataset) == 10_000 and dataset.classes[:2] == ["airplane", "automobile"]
    loader = DataLoader(dataset, batch_size=500, num_workers=2)
    start = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (net(images).argmax(dim=1) == labels).sum().item()
    accuracy = 100 * correct / len(dataset)
    print(f"ResNet-20 on the JPEG test split: {accuracy:.2f}% in {time.perf_counter() - start:.1f} s")
    assert accuracy == pytest.approx(81.03, abs=0.3)  # ../shared/data/README.md
