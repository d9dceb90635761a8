"""Rough edges a new user hit, each re-tried as that user would (issue 19, "The rough edges")."""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl import DecoupledSplitModule

NUM_CLASSES = 3

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*no `val_dataloader`:UserWarning",
    "ignore:.*LeafSpec.*",
    "ignore:.*smaller than the logging interval.*",
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(4, NUM_CLASSES),
    )


def data(samples: int = 16, seed: int = 0, side: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, side, side, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (samples,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    kwargs.setdefault("max_epochs", 1)
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


class OwnNetwork(DecoupledSplitModule):
    """As ``examples/own_project.py`` does: the subclass builds the network and fixes some base arguments."""

    def __init__(self, width: int = 4, **kwargs: Any) -> None:
        self.width = width
        super().__init__(network=None, aux_head="mlp", **kwargs)

    def build_network(self) -> nn.Module:
        return make_network()


def test_a_subclass_that_passes_network_none_loads_from_its_checkpoint(tmp_path: Path) -> None:
    model = OwnNetwork(width=4, split_index=3, num_classes=NUM_CLASSES, input_shape=(3, 8, 8))
    assert "network" not in model.hparams and "aux_head" not in model.hparams  # the subclass fixes both
    assert model.hparams["width"] == 4
    trainer(tmp_path, limit_train_batches=2).fit(model, data())
    trainer_path = tmp_path / "own.ckpt"
    model.trainer.save_checkpoint(trainer_path)
    loaded = OwnNetwork.load_from_checkpoint(trainer_path)
    x = next(iter(data()))[0]
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded.aux_head(loaded.client(x)), model.aux_head(model.client(x)))


def adam(params: Any) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=1e-3)


def test_resuming_with_another_kind_of_optimizer_is_refused_before_training(tmp_path: Path) -> None:
    model = DecoupledSplitModule(
        make_network(), split_index=3, num_classes=NUM_CLASSES, client_optimizer=adam, server_optimizer=adam
    )
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(tmp_path, limit_train_batches=2, callbacks=[checkpoints]).fit(model, data())
    path = tmp_path / "last.ckpt"

    # Optimizers are code, not hyperparameters: the default SGD comes back (the network, a module, is passed again).
    loaded = DecoupledSplitModule.load_from_checkpoint(path, network=make_network())
    before = copy.deepcopy(loaded.state_dict())
    with pytest.raises(
        ValueError, match=r"without the options \['dampening', 'momentum'\] that argument `client_optimizer` builds"
    ):
        trainer(tmp_path, max_epochs=2, limit_train_batches=2).fit(loaded, data(), ckpt_path=path)
    after = loaded.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing trained

    # With the run's own optimizers it resumes (the optimizer states are Adam's, stepped on).
    resumed = DecoupledSplitModule.load_from_checkpoint(
        path, network=make_network(), client_optimizer=adam, server_optimizer=adam
    )
    run = trainer(tmp_path, max_epochs=2, limit_train_batches=2)
    run.fit(resumed, data(), ckpt_path=path)
    assert run.current_epoch == 2 and all(isinstance(o, torch.optim.Adam) for o in run.optimizers)
    assert all(int(s["step"]) == 4 for o in run.optimizers for s in o.state.values())


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("client_optimizer", torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)),
        ("server_optimizer", "sgd"),
        ("client_lr_scheduler", 3),
    ],
)
def test_an_optimizer_instance_is_refused_naming_the_argument(argument: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"Expected argument `{argument}` to be a callable that builds the"):
        DecoupledSplitModule(make_network(), split_index=3, num_classes=NUM_CLASSES, **{argument: value})


def test_a_wrong_input_shape_with_an_unpooled_head_is_refused_on_the_first_batch(tmp_path: Path) -> None:
    model = DecoupledSplitModule(
        make_network(),
        split_index=3,
        num_classes=NUM_CLASSES,
        input_shape=(3, 8, 8),
        aux_head_kwargs={"pool": 0},
    )
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"per-sample shape \(3, 16, 16\), but argument `input_shape` is \(3, 8, 8\)"):
        trainer(tmp_path, limit_train_batches=2).fit(model, data(side=16))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_pooled_head_takes_inputs_of_another_size(tmp_path: Path) -> None:
    """Global pooling makes the head independent of the input size: such inputs stay allowed."""
    model = DecoupledSplitModule(make_network(), split_index=3, num_classes=NUM_CLASSES, input_shape=(3, 8, 8))
    trainer(tmp_path, limit_train_batches=2).fit(model, data(side=16))
    assert model.batches_trained == 2


def test_a_plain_list_of_client_loaders_is_refused(tmp_path: Path) -> None:
    model = DecoupledSplitModule(
        make_network(), split_index=3, num_classes=NUM_CLASSES, num_clients=2, input_shape=(3, 8, 8)
    )
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"plain list of 2 loaders.*lightning_dsl.data.client_loaders"):
        trainer(tmp_path).fit(model, [data(8), data(16, seed=1)])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("num_clients", "given", "expected"),
    [(2, None, True), (10, None, True), (11, None, False), (11, True, True), (2, False, False)],
)
def test_evaluate_clients_default_stays_affordable(num_clients: int, given: bool | None, expected: bool) -> None:
    kwargs = {} if given is None else {"evaluate_clients": given}
    model = DecoupledSplitModule(
        make_network(), split_index=3, num_classes=NUM_CLASSES, num_clients=num_clients, **kwargs
    )
    assert model.evaluate_clients is expected


def test_functools_partial_optimizers_are_accepted() -> None:
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    model = DecoupledSplitModule(make_network(), split_index=3, num_classes=NUM_CLASSES, client_optimizer=sgd)
    assert model.client_optimizer is sgd
