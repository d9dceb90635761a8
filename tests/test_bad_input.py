"""Bad input gets a clear error before training starts (issue 2, "Bad input"; issue 5, "Bad input").

Each test checks the exception type and that the message names the argument, the bad value and
what is allowed. The errors raised inside ``Trainer.fit`` are also checked to leave every
parameter and buffer as it was: nothing trains on bad input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.plugins import MixedPrecision
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.data import CIFARDataModule

IN_SHAPE = (3, 8, 8)
NUM_CLASSES = 3
RESNET_CUTS = r"\['deep', 'middle', 'shallow'\]"

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*no `val_dataloader`:UserWarning",
    "ignore:.*cannot be pickled:UserWarning",
    "ignore:.*LeafSpec.*",
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny networks gain nothing from a second thread, and on two busy cores OpenMP's barriers cost 100x.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_network(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Five cut units: conv, BatchNorm, ReLU, pool + flatten, linear. Split 3 gives z of shape (N, 4, 8, 8)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(4, NUM_CLASSES),
    ).to(dtype)


def build(**kwargs: Any) -> DecoupledSplitModule:
    kwargs.setdefault("network", make_network())
    kwargs.setdefault("split_index", 3)
    kwargs.setdefault("num_classes", NUM_CLASSES)
    kwargs.setdefault("input_shape", IN_SHAPE)
    return DecoupledSplitModule(**kwargs)


def make_trainer(**kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return Trainer(**{**options, **kwargs})


def loader(labels: list[int], dtype: torch.dtype = torch.float32) -> DataLoader:
    x = torch.randn(len(labels), *IN_SHAPE, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return DataLoader(TensorDataset(x, torch.tensor(labels)), batch_size=4, shuffle=False)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: dict[str, Tensor]) -> None:
    after = module.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), f"{name} changed"


def exact(text: str) -> str:
    return re.escape(text)


# ---------------------------------------------------------------------------------------------- split_index
@pytest.mark.parametrize("split_index", [0, -1, -3, 5, 6, "0", "5"])
def test_split_index_out_of_range_on_a_sequential(split_index: int | str) -> None:
    with pytest.raises(ValueError, match=r"argument `split_index` to be in \[1, 4\] for this Sequential with 5 cut"):
        build(split_index=split_index)
    with pytest.raises(ValueError, match=rf"but got {int(split_index)}\.$"):
        build(split_index=split_index)


def test_split_index_name_on_a_network_without_named_cuts() -> None:
    with pytest.raises(ValueError) as info:
        build(split_index="shallow")
    assert str(info.value) == (
        "Expected argument `split_index` to be an integer (this network names no cuts) in [1, 4], but got 'shallow'."
    )


@pytest.mark.parametrize("split_index", [0, -1, 11, 12])
def test_split_index_out_of_range_on_resnet20(split_index: int) -> None:
    # ResNet-20: stem, 9 blocks, head = 11 cut units.
    with pytest.raises(
        ValueError,
        match=rf"`split_index` to be in \[1, 10\] or one of {RESNET_CUTS} for this CIFARResNet with 11 cut units"
        rf".* but got {split_index}\.$",
    ):
        build(network="resnet20", num_classes=10, input_shape=(3, 32, 32), split_index=split_index)


@pytest.mark.parametrize("split_index", ["bogus", "Shallow", "middle ", ""])
def test_unknown_cut_name_on_resnet20(split_index: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"`split_index` to be one of {RESNET_CUTS} or an integer in \[1, 10\],"
        rf" but got {exact(repr(split_index))}\.$",
    ):
        build(network="resnet20", num_classes=10, input_shape=(3, 32, 32), split_index=split_index)


@pytest.mark.parametrize(("name", "index"), [("shallow", 4), ("middle", 5), ("deep", 7)])
def test_resnet20_cut_names_are_accepted(name: str, index: int) -> None:
    """The control for the two tests above: the three documented names resolve."""
    model = build(network="resnet20", num_classes=10, input_shape=(3, 32, 32), split_index=name)
    assert (model.split_index, model.num_units, len(model.client), len(model.server)) == (index, 11, index, 11 - index)


@pytest.mark.parametrize("split_index", [2.0, True, [2]])
def test_split_index_of_the_wrong_type(split_index: object) -> None:
    with pytest.raises(
        TypeError, match=rf"`split_index` to be an int or a cut name, but got {exact(repr(split_index))}"
    ):
        build(split_index=split_index)


def test_split_index_is_required() -> None:
    with pytest.raises(
        ValueError, match=r"Argument `split_index` is required: the number of cut units .* or a cut name"
    ):
        build(split_index=None)


# ---------------------------------------------------------------------------------------------- mode and options
@pytest.mark.parametrize("mode", ["SL", "split", "", "decoupled"])
def test_unknown_mode_lists_the_allowed_modes(mode: str) -> None:
    with pytest.raises(
        ValueError, match=rf"`mode` to be one of \['dsl', 'sl', 'hybrid'\], but got {exact(repr(mode))}"
    ):
        build(mode=mode)


@pytest.mark.parametrize("num_classes", [1, 0, -3, True, 10.0, "10"])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match=rf"`num_classes` to be an int >= 2, but got {exact(repr(num_classes))}"):
        build(num_classes=num_classes)


def test_bad_scheduler_interval() -> None:
    with pytest.raises(ValueError, match=r"`scheduler_interval` to be 'epoch' or 'step', got 'batch'"):
        build(scheduler_interval="batch")


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_feedback_every_below_one(every: object) -> None:
    with pytest.raises(ValueError, match=rf"`feedback_every` to be an int >= 1, but got {exact(repr(every))}\.$"):
        build(mode="hybrid", feedback_every=every)


@pytest.mark.parametrize("weight", [-0.1, 1.5, 2, float("nan"), "0.5", True])
def test_feedback_weight_outside_unit_interval(weight: object) -> None:
    with pytest.raises(
        ValueError, match=rf"`feedback_weight` to be a number in \[0, 1\], but got {exact(repr(weight))}"
    ):
        build(mode="hybrid", feedback_weight=weight)


@pytest.mark.parametrize(
    ("mode", "options", "match"),
    [
        (
            "dsl",
            {"feedback_weight": 0.5},
            r"argument `feedback_weight` to be None in mode 'dsl'.*got feedback_weight=0.5",
        ),
        ("sl", {"feedback_every": 2}, r"argument `feedback_every` to be None in mode 'sl'.*got feedback_every=2"),
        (
            "sl",
            {"feedback_weight": 1.0, "feedback_every": 1},
            r"argument `feedback_weight` and argument `feedback_every` to be None in mode 'sl'"
            r".*got feedback_weight=1.0, feedback_every=1",
        ),
    ],
)
def test_hybrid_options_are_refused_in_other_modes(mode: str, options: dict[str, Any], match: str) -> None:
    """Refused (not warned), even at values that would agree with the mode: the option would be silently ignored."""
    with pytest.raises(ValueError, match=match) as info:
        build(mode=mode, **options)
    assert "apply only to mode 'hybrid'" in str(info.value) and "set mode='hybrid'" in str(info.value)


def test_hybrid_options_are_taken_in_hybrid_with_documented_defaults() -> None:
    assert (build(mode="hybrid").feedback_weight, build(mode="hybrid").feedback_every) == (0.5, 1)
    model = build(mode="hybrid", feedback_weight=0, feedback_every=3)
    assert (model.feedback_weight, model.feedback_every) == (0.0, 3)
    assert [model.feedback_weight_at(b) for b in range(3)] == [None, None, None]  # λ = 0: never sends anything down


# ---------------------------------------------------------------------------------------------- auxiliary head
def test_aux_head_that_does_not_accept_the_cut_activation() -> None:
    with pytest.raises(ValueError) as info:
        build(aux_head=nn.Linear(7, NUM_CLASSES))
    message = str(info.value)
    assert message.startswith(
        "Argument `aux_head` (Linear) does not accept the cut activation of shape (2, 4, 8, 8) (batch, *per-sample"
    )
    assert "mat1 and mat2 shapes cannot be multiplied" in message  # the underlying error is kept


@pytest.mark.parametrize(
    ("head", "returned"),
    [
        (nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, NUM_CLASSES + 1)), r"\(2, 4\)"),
        (nn.Flatten(), r"\(2, 256\)"),
        (nn.Sequential(nn.AdaptiveAvgPool2d(1)), r"\(2, 4, 1, 1\)"),
    ],
)
def test_aux_head_with_the_wrong_output_shape(head: nn.Module, returned: str) -> None:
    with pytest.raises(
        ValueError,
        match=r"Argument `aux_head` \(\w+\) must return logits of shape \(batch, num_classes\) = \(2, 3\) for the cut"
        rf" activation of shape \(2, 4, 8, 8\), but returned {returned}\.$",
    ):
        build(aux_head=head)


def test_aux_head_that_does_not_fit_is_refused_at_setup_before_training() -> None:
    """Without `input_shape` the head is checked against the first batch in `setup`: before any step."""
    model = build(aux_head=nn.Sequential(nn.Flatten(), nn.Linear(99, NUM_CLASSES)), input_shape=None)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"Argument `aux_head` \(Sequential\) does not accept the cut activation"):
        make_trainer().fit(model, datamodule=_Data([0, 1, 2, 0]))
    assert_unchanged(model, before)


@pytest.mark.parametrize("head", ["attention", "Linear", "mlp2", ""])
def test_unknown_head_name(head: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"`aux_head` to be one of \['linear', 'mlp', 'conv'\] or an nn.Module, got {exact(repr(head))}",
    ):
        build(aux_head=head)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pol": 2}, r"Unknown keys \['pol'\] in argument `aux_head_kwargs`: allowed are \['pool', 'hidden'\]"),
        ({"pool": -1}, r"`aux_head_kwargs\['pool'\]` to be an int >= 0 \(0: no pooling\), got -1"),
        ({"pool": True}, r"`aux_head_kwargs\['pool'\]` to be an int >= 0 \(0: no pooling\), got True"),
        ({"pool": 1.5}, r"`aux_head_kwargs\['pool'\]` to be an int >= 0 \(0: no pooling\), got 1.5"),
        ({"hidden": 0}, r"`aux_head_kwargs\['hidden'\]` to be a positive int, got 0"),
    ],
)
def test_bad_head_options(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(aux_head="mlp", aux_head_kwargs=kwargs)


def test_conv_head_on_a_flat_activation() -> None:
    with pytest.raises(ValueError) as info:
        build(aux_head="conv", split_index=4)  # z: (N, 4) after pool + flatten
    assert str(info.value) == (
        "Expected argument `aux_head` to be 'linear', 'mlp' or an nn.Module for a cut activation of per-sample shape"
        " (4,), got 'conv', which needs image-shaped activations (C, H, W)."
    )


# ---------------------------------------------------------------------------------------------- codecs
@pytest.mark.parametrize("argument", ["codec", "grad_codec"])
@pytest.mark.parametrize("name", ["int4", "float16", "FP16", "int8_channel"])
def test_unknown_codec_name(argument: str, name: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"`{argument}` to be one of \['none', 'fp16', 'bf16', 'int8', 'int8-channel'\] or a Codec,"
        rf" got {exact(repr(name))}\.$",
    ):
        build(mode="sl", **{argument: name})


@pytest.mark.parametrize(
    ("argument", "mode"), [("codec", "dsl"), ("codec", "sl"), ("grad_codec", "sl"), ("grad_codec", "hybrid")]
)
def test_fp16_codec_cannot_carry_a_bfloat16_network(argument: str, mode: str) -> None:
    with pytest.raises(ValueError) as info:
        build(network=make_network(torch.bfloat16), mode=mode, **{argument: "fp16"})
    assert str(info.value) == (
        f"Expected argument `{argument}` to be a codec that can carry torch.bfloat16 tensors, got 'fp16': codec 'fp16'"
        " cannot represent bfloat16 values (range up to 3.4e38 vs 65504); use 'bf16' or 'none'."
    )


def test_grad_codec_is_not_checked_in_dsl_where_nothing_is_sent_down() -> None:
    model = build(network=make_network(torch.bfloat16), mode="dsl", grad_codec="fp16")
    assert model.aux_head[1].weight.dtype == torch.bfloat16


class ArgmaxClient(nn.Module):
    """A client unit whose output is an integer tensor (no codec but "none" can carry it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1).argmax(dim=1, keepdim=True)


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8", "int8-channel"])
def test_lossy_codecs_cannot_carry_an_integer_cut(codec: str) -> None:
    network = nn.Sequential(ArgmaxClient(), nn.Sequential())
    with pytest.raises(ValueError) as info:
        build(network=network, split_index=1, aux_head=nn.Identity(), codec=codec)
    assert str(info.value) == (
        f"Expected argument `codec` to be a codec that can carry torch.int64 tensors, got {codec!r}: codec {codec!r}"
        " encodes only real floating-point tensors; use 'none'."
    )


@pytest.mark.parametrize("codec", ["none", "fp16", "bf16", "int8", "int8-channel"])
def test_every_codec_carries_a_float64_network(codec: str) -> None:
    """Not bad input: a lossy codec on float64 loses precision exactly as on float32, and decodes to float64."""
    model = build(network=make_network(torch.float64), mode="sl", codec=codec, grad_codec=codec)
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    received, _ = model.cut.send_up(z, torch.tensor([0, 1]))
    assert received.dtype == torch.float64 and model.cut.send_down(z).dtype == torch.float64


def test_fp16_codec_is_refused_under_bf16_precision_before_training() -> None:
    """Under bf16 autocast the cut carries bfloat16 activations, which fp16 cannot hold (see above)."""
    model = build(mode="sl", codec="fp16")
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=r"argument `codec` to be a codec that can carry torch.bfloat16 tensors, got 'fp16'"
    ):
        make_trainer(precision="bf16-mixed").fit(model, loader([0, 1, 2, 0]))
    assert_unchanged(model, before)
    assert model.cut.traffic.bytes_up == 0


# ---------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize(("mode", "options"), [("sl", {}), ("hybrid", {"feedback_weight": 0.5, "feedback_every": 2})])
def test_16_mixed_precision_is_refused_with_feedback(mode: str, options: dict[str, Any]) -> None:
    model = build(mode=mode, **options)
    before = snapshot(model)
    # On CPU, Trainer(precision="16-mixed") falls back to bf16; the plugin keeps float16 autocast.
    trainer = make_trainer(plugins=[MixedPrecision("16-mixed", "cpu")])
    with pytest.raises(ValueError) as info:
        trainer.fit(model, loader([0, 1, 2, 0]))
    assert str(info.value) == (
        f"precision='16-mixed' is supported in mode 'dsl' only (the gradient sent down in mode {mode!r} would be"
        " loss-scaled twice): use precision='bf16-mixed' or 32."
    )
    assert_unchanged(model, before)


def test_16_mixed_precision_is_accepted_in_dsl() -> None:
    model = build(mode="dsl")
    make_trainer(plugins=[MixedPrecision("16-mixed", "cpu")], max_steps=2).fit(model, loader([0, 1, 2, 0]))
    assert model.batches_trained == 1


# ---------------------------------------------------------------------------------------------- labels
class _Data(LightningDataModule):
    def __init__(self, labels: list[int], num_classes: int | None = None) -> None:
        super().__init__()
        self.labels = labels
        if num_classes is not None:
            self.num_classes = num_classes

    def train_dataloader(self) -> DataLoader:
        return loader(self.labels)


@pytest.mark.parametrize("mode", ["dsl", "sl", "hybrid"])
@pytest.mark.parametrize(("labels", "bad"), [([0, 1, 3, 2], 3), ([0, -1, 2, 1], -1), ([7, 0, 9, 1], 9)])
def test_labels_outside_num_classes_stop_fit_at_the_first_batch(mode: str, labels: list[int], bad: int) -> None:
    model = build(mode=mode)
    before = snapshot(model)
    with pytest.raises(ValueError) as info:
        make_trainer().fit(model, loader(labels + [0, 1, 2, 0]))
    assert str(info.value) == (
        f"Found label {bad} in a batch, outside [0, 2] allowed by argument `num_classes`={NUM_CLASSES}."
    )
    assert_unchanged(model, before)  # client, server, aux head and BatchNorm buffers
    assert model.batches_trained == 0 and model.cut.traffic.bytes_up == 0


def test_float_labels_are_refused() -> None:
    model = build()
    x = torch.randn(4, *IN_SHAPE)
    with pytest.raises(
        ValueError, match=r"Expected integer class labels, but the batch's labels have dtype torch.float32"
    ):
        make_trainer().fit(model, DataLoader(TensorDataset(x, torch.zeros(4)), batch_size=4))


def test_num_classes_that_disagrees_with_the_data_module() -> None:
    model = build()
    with pytest.raises(ValueError, match=r"Argument `num_classes` is 3, but the data module has 10 classes"):
        make_trainer().fit(model, datamodule=_Data([0, 1, 2, 0], num_classes=10))


# ---------------------------------------------------------------------------------------------- networks
class Plain(nn.Module):
    """A network with no cut points: not an nn.Sequential, no cut_units()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("network", [Plain(), nn.Linear(3, 3), nn.ModuleList([nn.Linear(3, 3), nn.ReLU()])])
def test_network_that_cannot_be_cut(network: nn.Module) -> None:
    name = type(network).__name__
    with pytest.raises(
        TypeError,
        match=r"Expected argument `network` to be an `nn.Sequential` or a module with a `cut_units\(\)` method that"
        rf" returns its units in order, but got `{name}`, which has neither\. Wrap your layers in `nn.Sequential",
    ):
        build(network=network, split_index=1)


@pytest.mark.parametrize("units", [0, 1])
def test_network_with_fewer_than_two_units(units: int) -> None:
    network = nn.Sequential(*[nn.Linear(3, 3)] * units)
    with pytest.raises(ValueError) as info:
        build(network=network, split_index=1)
    assert str(info.value) == (
        f"Expected argument `network` to have at least 2 cut units (one per side), but this Sequential has {units}:"
        " add layers, or list finer units in `cut_units()`."
    )


def test_unknown_model_name() -> None:
    with pytest.raises(
        ValueError,
        match=r"`network` to be an nn.Module or a registered model name, one of \[.*'resnet20'.*\], but got 'resnet21'",
    ):
        build(network="resnet21")


def test_no_network_and_no_build_network() -> None:
    with pytest.raises(ValueError, match=r"Argument `network` is None and build_network\(\) is not overridden"):
        build(network=None)


def test_input_shape_the_client_cannot_run_on() -> None:
    with pytest.raises(ValueError, match=r"cannot run on inputs of shape \(1, 8, 8\) \(argument `input_shape`\)"):
        build(input_shape=(1, 8, 8))


# ---------------------------------------------------------------------------------------------- data
def test_missing_cifar_data_offline_stops_fit_before_training(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    model = build(network="resnet20", num_classes=10, split_index="shallow", input_shape=(3, 32, 32))
    before = snapshot(model)
    with pytest.raises(FileNotFoundError) as info:
        make_trainer().fit(model, datamodule=CIFARDataModule(name="cifar10", root=str(root), download=False))
    message = str(info.value)
    # where it looked ...
    assert f"CIFAR-10 data not found under `root`={str(root.resolve())!r}" in message
    assert str(root.resolve() / "cifar-10-batches-py") in message
    assert f"{root.resolve() / 'train'}/<class>/*" in message and f"{root.resolve() / 'test'}/<class>/*" in message
    # ... and the two ways to get it
    assert "1. download=True (needs internet)" in message
    assert "2. point `root` at a copy you already have" in message
    assert_unchanged(model, before)
