"""Ordinary Lightning habits with ``DecoupledSplitModule`` (issue #11), against hand-written references.

Plain DataLoaders in fit/validate/test/predict, plain ``ddp`` on two CPU processes, gradient clipping
and accumulation (the module's arguments, since the Trainer's flags are refused in manual
optimization), ``trainer.predict``, and ``LearningRateMonitor`` names. Networks without BatchNorm
and in float64 wherever a result is compared with a reference.
"""

from __future__ import annotations

import copy
import functools
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from lightning_dsl import DecoupledSplitModule
from lightning_dsl.core.accumulation import Window, accumulation_window
from lightning_dsl.core.peek import peek_inputs
from lightning_dsl.trainer_glue import allow_partial_backward
from tests.test_bad_input import make_trainer

REPO = Path(__file__).resolve().parents[1]
IN_SHAPE = (3, 4, 4)
NUM_CLASSES = 5
SPLIT = 3  # client: flatten, linear, relu -> z of shape (N, 16)
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*no `val_dataloader`:UserWarning",
    "ignore:.*LeafSpec.*",
    "ignore:.*predict_dataloader.*:UserWarning",
)


# ---------------------------------------------------------------------------------------------- fixtures
def make_network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES)
    ).double()


def make_head(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(16, NUM_CLASSES).double()


def make_data(n: int = 24, seed: int = 2) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *IN_SHAPE, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=generator)


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, **SGD)


def make_module(network: nn.Module, head: nn.Module | str = "linear", **kwargs: Any) -> DecoupledSplitModule:
    kwargs.setdefault("client_optimizer", sgd)
    kwargs.setdefault("server_optimizer", sgd)
    return DecoupledSplitModule(network, split_index=SPLIT, num_classes=NUM_CLASSES, aux_head=head, **kwargs)


def loader(x: Tensor, y: Tensor | None = None, batch_size: int = 8, **kwargs: Any) -> DataLoader:
    dataset: Any = TensorDataset(x) if y is None else TensorDataset(x, y)
    return DataLoader(dataset, batch_size=batch_size, **kwargs)


def assert_same_state(actual: nn.Module, expected: nn.Module, exact: bool = False) -> None:
    """Parameters and buffers agree, in order (a slice of a Sequential keeps its original child names)."""
    got, want = actual.state_dict(), expected.state_dict()
    assert len(got) == len(want)
    for (name, value), expected_value in zip(got.items(), want.values(), strict=True):
        if exact:
            assert torch.equal(value, expected_value), name
        else:
            torch.testing.assert_close(value, expected_value, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------------------------- 1. plain loaders
class NoisyDataset(Dataset[tuple[Tensor, Tensor]]):
    """A dataset whose items draw from torch's and Python's global random states (as random transforms do)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        noise = 0.01 * torch.rand(1, dtype=torch.float64) + 0.01 * random.random()
        return self.x[i] + noise, self.y[i]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_plain_loader_builds_the_head_without_changing_the_epoch(num_workers: int) -> None:
    """A shuffled loader without a generator, random transforms, workers: the same training as with input_shape."""
    x, y = make_data(32)
    network = make_network()

    def run(input_shape: Any, peek_first: bool = False) -> DecoupledSplitModule:
        if input_shape is None:
            model = make_module(copy.deepcopy(network))  # draws nothing: the head is built at setup
            seed_everything(3)
        else:  # the head's initialisation draws right after seeding, as it does at setup in the other run
            seed_everything(3)
            model = make_module(copy.deepcopy(network), input_shape=input_shape)
        data = DataLoader(NoisyDataset(x, y), batch_size=8, shuffle=True, num_workers=num_workers)
        if peek_first:  # what a naive peek would do: a batch from a fresh iterator of the same loader
            next(iter(data))
        make_trainer().fit(model, data)
        return model

    given, peeked = run(IN_SHAPE), run(None)
    assert peeked.input_shape == IN_SHAPE and peeked.hparams["input_shape"] == IN_SHAPE
    assert_same_state(peeked, given, exact=True)
    assert not torch.equal(run(IN_SHAPE, peek_first=True).client[1].weight, given.client[1].weight)  # the test bites


def test_plain_loader_with_a_users_head_never_peeks(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_dsl.trainer_glue

    def fail(*_: Any) -> None:
        raise AssertionError("the loader was peeked although the head was passed as a module")

    monkeypatch.setattr(lightning_dsl.trainer_glue, "peek_inputs", fail)
    head = make_head()
    model = make_module(make_network(), head)
    assert model.aux_head is head  # the head from construction: the optimizer gets its parameters
    before = copy.deepcopy(head)
    x, y = make_data()
    make_trainer().fit(model, loader(x, y))
    assert model.input_shape == IN_SHAPE  # read from the first batch
    assert not torch.equal(head.weight, before.weight)


def test_a_users_head_that_does_not_fit_is_refused_on_the_first_batch() -> None:
    network = make_network()
    before = copy.deepcopy(network)
    model = make_module(network, nn.Linear(7, NUM_CLASSES).double())
    x, y = make_data()
    with pytest.raises(
        ValueError, match=r"`aux_head` \(Linear\) does not accept the cut activation of shape \(2, 16\)"
    ):
        make_trainer().fit(model, loader(x, y))
    assert_same_state(network, before, exact=True)  # refused before any parameter changed


@pytest.mark.parametrize("head", ["linear", "module"])
def test_validate_test_and_predict_with_plain_loaders_without_fit(head: str) -> None:
    x, y = make_data()
    trainer = make_trainer()
    for run in ("validate", "test"):
        model = make_module(make_network(), make_head() if head == "module" else "linear")
        (metrics,) = getattr(trainer, run)(model, loader(x, y), verbose=False)
        stage = "val" if run == "validate" else "test"
        assert set(metrics) >= {f"{stage}/loss", f"{stage}/acc", f"{stage}/aux_acc"}
    model = make_module(make_network(), make_head() if head == "module" else "linear")
    predictions = trainer.predict(model, loader(x))  # batches that are a tensor alone
    assert predictions is not None and [tuple(p.shape) for p in predictions] == [(8, NUM_CLASSES)] * 3
    torch.testing.assert_close(torch.cat(predictions), model(x))  # type: ignore[arg-type]


def test_a_one_shot_iterator_is_refused_with_a_clear_error() -> None:
    x, y = make_data()
    model = make_module(make_network())
    with pytest.raises(ValueError, match="Cannot build the auxiliary head: pass `input_shape`"):
        make_trainer().fit(model, iter(loader(x, y)))


def test_peek_inputs_leaves_the_loader_and_random_states_alone() -> None:
    generator = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.arange(10.0).view(10, 1)), batch_size=4, shuffle=True, generator=generator)
    states = generator.get_state(), torch.get_rng_state(), random.getstate()
    assert peek_inputs(data).tolist() == [[0.0]]  # type: ignore[union-attr]
    assert torch.equal(generator.get_state(), states[0]) and torch.equal(torch.get_rng_state(), states[1])
    assert random.getstate() == states[2]
    assert peek_inputs(iter(data)) is None
    assert peek_inputs([{"x": torch.zeros(1)}]) is None


# ---------------------------------------------------------------------------------------------- 2. plain ddp
def run_ddp(tmp_path: Path, strategy: str, mode: str, batchnorm: bool = False) -> tuple[dict, dict]:
    """Two gloo processes in a subprocess with a timeout: nothing outlives the test."""
    command = [sys.executable, str(REPO / "tests" / "ddp_run.py"), strategy, mode, str(tmp_path)]
    command += ["--batchnorm"] if batchnorm else []
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")


def ddp_module() -> Any:
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import ddp_run
    finally:
        sys.path.remove(str(REPO / "tests"))
    return ddp_run


@pytest.mark.parametrize(("strategy", "mode"), [("ddp", "dsl"), ("ddp", "sl"), ("ddp_spawn", "hybrid")])
def test_plain_ddp_keeps_replicas_identical_and_equals_one_process(tmp_path: Path, strategy: str, mode: str) -> None:
    rank0, rank1 = run_ddp(tmp_path, strategy, mode)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    # One process on the concatenated batches: rank r's j-th batch is the j-th slice of its DistributedSampler
    # (which Lightning adds for training, shuffled with the seed of seed_everything).
    run = ddp_module()
    data = run.make_data()
    shards = [list(DistributedSampler(data, run.WORLD, rank, shuffle=True, seed=run.SEED)) for rank in (0, 1)]
    order = [i for j in range(run.BATCHES) for shard in shards for i in shard[j * run.BATCH : (j + 1) * run.BATCH]]
    single = run.make_module(mode)
    seed_everything(run.SEED)  # as the script does: the auxiliary head is built at setup, from a peeked batch
    make_trainer().fit(single, DataLoader(data, batch_size=run.BATCH * run.WORLD, sampler=order))
    initial = run.make_module(mode).state_dict()
    for name, value in single.state_dict().items():
        torch.testing.assert_close(rank0[name], value, rtol=1e-9, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
        if name in initial and name.split(".")[0] in ("client", "server"):  # (the head is built at setup)
            assert not torch.equal(value, initial[name]), f"{name} did not train"


def test_plain_ddp_with_batchnorm_keeps_parameters_identical(tmp_path: Path) -> None:
    """With BatchNorm the parameters stay identical; the running statistics behave as in any DDP model.

    Each rank's statistics move with its own batches and DDP broadcasts rank 0's before each step, so
    at the end they differ by the last step (``sync_batchnorm=True`` syncs them, on GPUs only).
    """
    rank0, rank1 = run_ddp(tmp_path, "ddp", "sl", batchnorm=True)
    assert any("running_mean" in name for name in rank0)
    for name in rank0:
        if "running_" not in name:
            assert torch.equal(rank0[name], rank1[name]), name


def test_ddp_told_not_to_find_unused_parameters_is_refused() -> None:
    trainer: Any = SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=False))
    with pytest.raises(ValueError, match=r"find_unused_parameters=True.*Use strategy='ddp'"):
        allow_partial_backward(trainer)
    trainer.strategy = DDPStrategy()
    allow_partial_backward(trainer)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True


# ---------------------------------------------------------------------------------------------- 3. clipping
class Reference:
    """dsl and sl written by hand, with clipping and accumulation: one optimizer per side."""

    def __init__(self, network: nn.Sequential, head: nn.Module) -> None:
        self.client, self.server, self.head = network[:SPLIT], network[SPLIT:], head
        self.client_params = [*self.client.parameters(), *self.head.parameters()]
        self.client_opt = torch.optim.SGD(self.client_params, **SGD)
        self.server_opt = torch.optim.SGD(self.server.parameters(), **SGD)

    def clip(self, params: list[nn.Parameter], value: float | None, algorithm: str) -> None:
        if value and algorithm == "norm":
            nn.utils.clip_grad_norm_(params, value)
        elif value:
            nn.utils.clip_grad_value_(params, value)

    def train(
        self,
        batches: list[tuple[Tensor, Tensor]],
        mode: str,
        every: int = 1,
        clip: float | None = None,
        algorithm: str = "norm",
    ) -> None:
        for i, (x, y) in enumerate(batches):
            if i % every == 0:
                self.client_opt.zero_grad()
                self.server_opt.zero_grad()
            z = self.client(x)
            if mode == "dsl":
                (cross_entropy(self.head(z), y) / every).backward()
                (cross_entropy(self.server(z.detach()), y) / every).backward()
            else:  # end-to-end backprop; the head a probe on the detached activation
                (cross_entropy(self.server(z), y) / every).backward()
                (cross_entropy(self.head(z.detach()), y) / every).backward()
            if (i + 1) % every == 0 or i + 1 == len(batches):
                self.clip(self.client_params, clip, algorithm)
                self.clip(list(self.server.parameters()), clip, algorithm)
                self.client_opt.step()
                self.server_opt.step()


def fit_pair(
    mode: str, batch_size: int = 8, n: int = 24, ref_every: int = 1, **module_kwargs: Any
) -> tuple[DecoupledSplitModule, Reference, Trainer]:
    network, head = make_network(), make_head()
    reference = Reference(copy.deepcopy(network), copy.deepcopy(head))
    model = make_module(network, head, mode=mode, **module_kwargs)
    x, y = make_data(n)
    trainer = make_trainer()
    trainer.fit(model, loader(x, y, batch_size))
    clip = module_kwargs.get("gradient_clip_val")
    algorithm = module_kwargs.get("gradient_clip_algorithm", "norm")
    every = module_kwargs.get("accumulate_grad_batches", 1) * ref_every
    ref_batch = batch_size // ref_every
    reference.train(list(zip(x.split(ref_batch), y.split(ref_batch), strict=True)), mode, every, clip, algorithm)
    return model, reference, trainer


@pytest.mark.parametrize("mode", ["dsl", "sl"])
@pytest.mark.parametrize(("clip", "algorithm"), [(0.05, "norm"), (0.01, "value")])
def test_gradient_clipping_matches_reference(mode: str, clip: float, algorithm: str) -> None:
    model, reference, _ = fit_pair(mode, gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
    assert_same_state(model.client, reference.client)
    assert_same_state(model.server, reference.server)
    assert_same_state(model.aux_head, reference.head)
    unclipped, _, _ = fit_pair(mode)  # and the clipping did something
    assert not torch.allclose(unclipped.server[0].weight, model.server[0].weight)


def test_clipping_under_16_mixed_happens_after_unscaling() -> None:
    """With a loss scale of 2**12, clipping before unscaling would leave gradients 4096 times smaller."""
    seen: list[float] = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:
            seen.append(max(float(p.grad.abs().max()) for g in self.param_groups for p in g["params"]))
            return super().step(closure)

    network = make_network().float()
    model = make_module(
        network,
        gradient_clip_val=1e-3,
        gradient_clip_algorithm="value",
        input_shape=IN_SHAPE,
        client_optimizer=functools.partial(RecordingSGD, lr=0.1),
        server_optimizer=functools.partial(RecordingSGD, lr=0.1),
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    trainer = make_trainer(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    x, y = make_data()
    trainer.fit(model, loader(x.float(), y))
    assert len(seen) == 6 and all(value == pytest.approx(1e-3, rel=1e-3) for value in seen), seen


# ---------------------------------------------------------------------------------------------- 3. accumulation
@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_accumulating_two_batches_of_8_equals_one_batch_of_16(mode: str) -> None:
    model, reference, trainer = fit_pair(mode, batch_size=8, n=32, accumulate_grad_batches=2)
    one_batch = make_module(make_network(), make_head(), mode=mode)
    x, y = make_data(32)
    make_trainer().fit(one_batch, loader(x, y, batch_size=16))
    assert_same_state(model, one_batch)
    assert_same_state(model.client, reference.client)  # and the hand-written reference
    assert_same_state(model.server, reference.server)
    assert trainer.global_step == 2 * 2  # two windows, two optimizers


def test_accumulation_steps_the_last_partial_window_of_each_epoch() -> None:
    """3 batches per epoch with k = 2: windows [0, 1] and [2] (scaled 1/2 like the others, as Lightning does)."""
    network, head = make_network(), make_head()
    reference = Reference(copy.deepcopy(network), copy.deepcopy(head))
    model = make_module(network, head, mode="sl", accumulate_grad_batches=2)
    x, y = make_data(24)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, loader(x, y))
    for _ in range(2):
        reference.train(list(zip(x.split(8), y.split(8), strict=True)), "sl", every=2)
    assert_same_state(model.client, reference.client)
    assert_same_state(model.server, reference.server)
    assert trainer.global_step == 2 * 2 * 2  # 2 epochs x 2 windows x 2 optimizers


def test_accumulation_with_clipping_clips_the_accumulated_gradient() -> None:
    model, reference, _ = fit_pair("dsl", batch_size=8, n=32, accumulate_grad_batches=2, gradient_clip_val=0.05)
    assert_same_state(model.client, reference.client)
    assert_same_state(model.server, reference.server)


def test_accumulation_window() -> None:
    assert accumulation_window(3, 1) == Window(True, True, 1.0)
    assert [accumulation_window(i, 3).step for i in range(6)] == [False, False, True] * 2
    assert accumulation_window(4, 3, is_last_batch=True) == Window(False, True, 1 / 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gradient_clip_val": -1.0}, r"`gradient_clip_val` to be a number >= 0 or None, but got -1.0"),
        ({"gradient_clip_val": "1"}, r"`gradient_clip_val` to be a number >= 0 or None, but got '1'"),
        (
            {"gradient_clip_algorithm": "l1"},
            r"`gradient_clip_algorithm` to be one of \['norm', 'value'\], but got 'l1'",
        ),
        ({"accumulate_grad_batches": 0}, r"`accumulate_grad_batches` to be an int >= 1, but got 0"),
        ({"accumulate_grad_batches": 2.0}, r"`accumulate_grad_batches` to be an int >= 1, but got 2.0"),
    ],
)
def test_clipping_and_accumulation_arguments_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_module(make_network(), **kwargs)


@pytest.mark.parametrize(
    ("trainer_kwargs", "message"),
    [
        ({"gradient_clip_val": 0.5}, r"pass DecoupledSplitModule\(\.\.\., gradient_clip_val=0.5\) instead"),
        ({"accumulate_grad_batches": 4}, r"pass DecoupledSplitModule\(\.\.\., accumulate_grad_batches=4\) instead"),
    ],
)
def test_the_trainers_own_flags_point_to_the_modules_arguments(trainer_kwargs: dict[str, Any], message: str) -> None:
    x, y = make_data()
    with pytest.raises(ValueError, match=message):
        make_trainer(**trainer_kwargs).fit(make_module(make_network()), loader(x, y))


# ---------------------------------------------------------------------------------------------- 4. predict
def test_predict_returns_logits_or_both_logits() -> None:
    x, y = make_data(20)
    model = make_module(make_network(), input_shape=IN_SHAPE)
    predictions = make_trainer().predict(model, loader(x, y))  # (inputs, labels) batches; last batch of 4
    assert predictions is not None and [tuple(p.shape) for p in predictions] == [(8, 5), (8, 5), (4, 5)]
    bytes_up = model.cut.traffic.bytes_up
    assert bytes_up == 20 * 16 * 8  # the activations (N, 16) in float64 crossed the cut, no labels

    model = make_module(make_network(), input_shape=IN_SHAPE, predict_aux_logits=True)
    (first, *_) = make_trainer().predict(model, loader(x)) or []
    assert isinstance(first, dict) and set(first) == {"logits", "aux_logits"}
    torch.testing.assert_close(first["logits"], model(x[:8]))
    torch.testing.assert_close(first["aux_logits"], model.aux_head(model.client(x[:8])))


def test_digits_data_module_predicts_on_its_test_split() -> None:
    from lightning_dsl.data import DigitsDataModule

    data = DigitsDataModule(batch_size=128)
    model = DecoupledSplitModule("small_cnn", split_index=2, num_classes=10)
    predictions = make_trainer().predict(model, datamodule=data)
    assert predictions is not None and sum(len(p) for p in predictions) == len(data.test_set)  # type: ignore[arg-type]
    assert all(p.shape[1] == 10 for p in predictions)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- 5. lr monitor
@pytest.mark.parametrize(
    ("schedulers", "aux_head_lr", "expected"),
    [
        (False, None, {"lr-SGD/client", "lr-SGD-1/server"}),
        (True, None, {"lr/client", "lr/server"}),
        (True, 0.01, {"lr/client", "lr/aux_head", "lr/server"}),
    ],
)
def test_learning_rate_monitor_names_the_sides(
    tmp_path: Path, schedulers: bool, aux_head_lr: float | None, expected: set[str]
) -> None:
    step_lr = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1)
    kwargs: dict[str, Any] = {"client_lr_scheduler": step_lr, "server_lr_scheduler": step_lr} if schedulers else {}
    model = make_module(make_network(), input_shape=IN_SHAPE, aux_head_lr=aux_head_lr, **kwargs)
    monitor = LearningRateMonitor()
    x, y = make_data()
    make_trainer(logger=CSVLogger(tmp_path), callbacks=[monitor]).fit(model, loader(x, y))
    assert set(monitor.lrs) == expected
