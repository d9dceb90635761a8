from __future__ import annotations

import pytest
from torch import nn

from lightning_dsl.models import CIFARResNet, create_model, list_models, register_model
from lightning_dsl.models import registry as registry_module


def test_builtin_models_are_registered() -> None:
    names = list_models()
    assert names == sorted(names)
    for name in ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202", "small_cnn"):
        assert name in names


@pytest.mark.parametrize(("name", "depth"), [("resnet20", 20), ("resnet56", 56), ("resnet110", 110)])
def test_create_model_builds_the_named_resnet(name: str, depth: int) -> None:
    net = create_model(name, num_classes=100)
    assert isinstance(net, CIFARResNet)
    assert net.depth == depth
    assert net.linear.out_features == 100


def test_create_model_passes_kwargs_to_small_cnn() -> None:
    net = create_model("small_cnn", in_channels=3, num_classes=7, width=8)
    assert isinstance(net, nn.Sequential)
    assert net[0][0].in_channels == 3
    assert net[-1][-1].out_features == 7


def test_unknown_name_lists_registered_models() -> None:
    with pytest.raises(ValueError, match="`name`") as excinfo:
        create_model("resnet-110")
    message = str(excinfo.value)
    assert "but got 'resnet-110'" in message
    assert "'resnet20'" in message and "'small_cnn'" in message
    assert "Did you mean 'resnet110'?" in message


def test_register_model_returns_the_function_and_rejects_a_clash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_MODELS", dict(registry_module._MODELS))

    def tiny_mlp(num_classes: int = 3) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert register_model(tiny_mlp) is tiny_mlp
    assert register_model(tiny_mlp) is tiny_mlp  # registering the same function again is harmless
    assert "tiny_mlp" in list_models()
    assert create_model("tiny_mlp", num_classes=5).out_features == 5

    def resnet20() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="'resnet20'.*already taken"):
        register_model(resnet20)
    assert create_model("resnet20").__class__ is CIFARResNet
