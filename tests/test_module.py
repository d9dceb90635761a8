"""Behaviour of ``DecoupledSplitModule`` against hand-written, plain-torch references.

Every reference below is written from the definitions in the issues (dsl, sl, hybrid, codecs),
not from ``lightning_dsl.core.step``: a wrong step in the package makes the fitted parameters or
the BatchNorm buffers drift from the reference. Networks are float64, so "equal" means equal to
float64 rounding after several batches of SGD with momentum and weight decay.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DataLoader, TensorDataset

from lightning_dsl import DecoupledSplitModule

IN_SHAPE = (3, 8, 8)
NUM_CLASSES = 5
BATCH = 4
BATCHES = 5
SPLIT = 4  # client: conv, bn, relu, pool -> z of shape (N, 6, 4, 4)
Z_SHAPE = (6, 4, 4)
Z_NUMEL = BATCH * 6 * 4 * 4
CLIENT_SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
SERVER_SGD = {"lr": 0.1, "momentum": 0.5, "weight_decay": 5e-4}

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*cannot be pickled:UserWarning",
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*no `val_dataloader`:UserWarning",
    "ignore:.*LeafSpec.*",
)


# ---------------------------------------------------------------------------------------------- fixtures
def make_network(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, NUM_CLASSES),
    ).double()


def make_head(seed: int = 1) -> nn.Module:
    """A user's auxiliary head with its own BatchNorm (so its buffers are compared too)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, NUM_CLASSES)
    ).double()


def make_data(batches: int = BATCHES, seed: int = 2) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * BATCH, *IN_SHAPE, generator=generator, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (batches * BATCH,), generator=generator)
    return x, y


def batches_of(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
    return list(zip(x.split(BATCH), y.split(BATCH), strict=True))


def make_module(network: nn.Module, head: nn.Module | str, mode: str = "dsl", **kwargs: Any) -> DecoupledSplitModule:
    kwargs.setdefault("client_optimizer", lambda p: torch.optim.SGD(p, **CLIENT_SGD))
    kwargs.setdefault("server_optimizer", lambda p: torch.optim.SGD(p, **SERVER_SGD))
    kwargs.setdefault("input_shape", IN_SHAPE)
    return DecoupledSplitModule(
        network,
        split_index=kwargs.pop("split_index", SPLIT),
        mode=mode,
        num_classes=NUM_CLASSES,
        aux_head=head,
        **kwargs,
    )


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
        "limit_val_batches": 0,
    }
    options.update(kwargs)
    return Trainer(**options)


class TensorData(LightningDataModule):
    """A data module without an ``input_shape`` attribute: the module reads the shape from its first batch."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        super().__init__()
        self.x, self.y = x, y

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=BATCH, shuffle=False)


def fit(
    model: DecoupledSplitModule,
    x: Tensor,
    y: Tensor,
    ckpt_path: str | None = None,
    datamodule: bool = False,
    **trainer_kwargs: Any,
) -> Trainer:
    if "callbacks" in trainer_kwargs:
        trainer_kwargs.setdefault("enable_checkpointing", True)
    trainer = make_trainer(**trainer_kwargs)
    if datamodule:
        trainer.fit(model, datamodule=TensorData(x, y), ckpt_path=ckpt_path)
    else:
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False), ckpt_path=ckpt_path)
    return trainer


def assert_same_state(actual: nn.Module, expected: nn.Module, exact: bool = False) -> None:
    """Parameters and buffers (BatchNorm running stats and counters) of two modules agree."""
    got, want = actual.state_dict(), expected.state_dict()
    assert list(got) == list(want)
    for name in want:
        if exact:
            assert torch.equal(got[name], want[name]), name
        else:
            torch.testing.assert_close(got[name], want[name], rtol=1e-7, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


def assert_differs(actual: nn.Module, before: dict[str, Tensor]) -> None:
    """Every parameter of ``actual`` moved away from ``before``."""
    for name, parameter in actual.named_parameters():
        assert not torch.equal(parameter.detach(), before[name]), f"{name} did not change"


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- the reference
class Reference:
    """Split learning written by hand from the definitions: one optimizer over client + aux head, one over server."""

    def __init__(self, network: nn.Sequential, head: nn.Module, split: int = SPLIT) -> None:
        self.network, self.head = network, head
        self.client, self.server = network[:split], network[split:]
        self.client_opt = torch.optim.SGD([*self.client.parameters(), *self.head.parameters()], **CLIENT_SGD)
        self.server_opt = torch.optim.SGD(self.server.parameters(), **SERVER_SGD)

    def dsl(self, x: Tensor, y: Tensor, up: Callable[[Tensor], Tensor] = lambda z: z) -> None:
        """Client on its auxiliary loss alone, then the server on what arrives (``up(z)``)."""
        self.client_opt.zero_grad()
        z = self.client(x)
        cross_entropy(self.head(z), y).backward()
        self.client_opt.step()
        self.server_opt.zero_grad()
        cross_entropy(self.server(up(z.detach())), y).backward()
        self.server_opt.step()

    def sl(self, x: Tensor, y: Tensor) -> None:
        """End-to-end backprop through the unsplit network; the head is a probe on the detached activation."""
        self.client_opt.zero_grad()
        self.server_opt.zero_grad()
        z = self.client(x)
        cross_entropy(self.server(z), y).backward()
        cross_entropy(self.head(z.detach()), y).backward()
        self.client_opt.step()
        self.server_opt.step()

    def hybrid_feedback(self, x: Tensor, y: Tensor, lam: float, down: Callable[[Tensor], Tensor] = lambda g: g) -> None:
        """Client gradient (1 - λ) ∇aux + λ ∇(server loss through z); the head gets the full ∇aux."""
        client_params, head_params = list(self.client.parameters()), list(self.head.parameters())
        self.client_opt.zero_grad()
        self.server_opt.zero_grad()
        z = self.client(x)
        aux_loss = cross_entropy(self.head(z), y)
        aux_client = torch.autograd.grad(aux_loss, client_params, retain_graph=True)
        aux_head = torch.autograd.grad(aux_loss, head_params, retain_graph=True)
        z_server = z.detach().requires_grad_()
        cross_entropy(self.server(z_server), y).backward()
        self.server_opt.step()
        server_client = torch.autograd.grad(z, client_params, grad_outputs=down(z_server.grad))
        for p, g_aux, g_server in zip(client_params, aux_client, server_client, strict=True):
            p.grad = (1 - lam) * g_aux + lam * g_server
        for p, g_aux in zip(head_params, aux_head, strict=True):
            p.grad = g_aux
        self.client_opt.step()


def run_reference(network: nn.Sequential, head: nn.Module, x: Tensor, y: Tensor, step: str, **kwargs: Any) -> Reference:
    reference = Reference(network, head)
    network.train()
    head.train()
    for xb, yb in batches_of(x, y):
        getattr(reference, step)(xb, yb, **kwargs)
    return reference


def fitted_pair(
    mode: str, step: str, module_kwargs: dict[str, Any] | None = None, **step_kwargs: Any
) -> tuple[DecoupledSplitModule, nn.Module, nn.Module, Reference]:
    """Fit the module and the reference from identical copies; return (module, its network, its head, reference)."""
    network, head = make_network(), make_head()
    ref_network, ref_head = copy.deepcopy(network), copy.deepcopy(head)
    x, y = make_data()
    model = make_module(network, head, mode=mode, **(module_kwargs or {}))
    fit(model, x, y)
    reference = run_reference(ref_network, ref_head, x, y, step, **step_kwargs)
    return model, network, head, reference


# ---------------------------------------------------------------------------------------------- dsl and sl
def test_dsl_matches_reference() -> None:
    initial = snapshot(make_network())
    model, network, head, reference = fitted_pair("dsl", "dsl")
    assert_same_state(network, reference.network)  # client, server and their BatchNorm buffers
    assert_same_state(head, reference.head)
    assert model.aux_head is head
    assert_differs(network, initial)
    assert int(network[1].num_batches_tracked) == BATCHES  # the client's BN moved once per batch
    assert int(network[5].num_batches_tracked) == BATCHES  # and the server's


def test_sl_matches_end_to_end_backprop() -> None:
    model, network, head, reference = fitted_pair("sl", "sl")
    assert_same_state(network, reference.network)
    assert_same_state(head, reference.head)  # the probe on z.detach() trained too
    assert int(head[1].num_batches_tracked) == BATCHES


def test_sl_probe_never_changes_the_client() -> None:
    x, y = make_data()
    fitted = []
    other_heads = [
        make_head(seed=1),
        make_head(seed=7),
        nn.Sequential(nn.Flatten(), nn.Linear(96, NUM_CLASSES)).double(),
    ]
    for head in other_heads:
        network = make_network()
        fit(make_module(network, head, mode="sl"), x, y)
        fitted.append(network)
    for network in fitted[1:]:
        assert_same_state(network, fitted[0], exact=True)


def test_dsl_client_is_untouched_by_the_server_loss() -> None:
    """A different server (init and learning rate) changes the server, never the client or the aux head."""
    x, y = make_data()
    runs = []
    for server_seed, server_lr in ((0, 0.1), (5, 0.5)):
        network, head = make_network(), make_head()
        if server_seed:  # re-initialise the server only
            torch.manual_seed(server_seed)
            for module in network[SPLIT:]:
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        model = make_module(network, head, server_optimizer=lambda p, lr=server_lr: torch.optim.SGD(p, lr=lr))
        fit(model, x, y)
        runs.append((model, head))
    (first, first_head), (second, second_head) = runs
    assert_same_state(first.client, second.client, exact=True)
    assert_same_state(first_head, second_head, exact=True)
    assert not torch.equal(first.server[0].weight, second.server[0].weight)


def test_dsl_no_gradient_reaches_the_cut_from_the_server() -> None:
    """The tensor the server receives is not connected to the client's graph."""
    network, head = make_network(), make_head()
    model = make_module(network, head)
    seen: list[bool] = []
    model.server.register_forward_pre_hook(lambda _m, args: seen.append(args[0].grad_fn is None))
    x, y = make_data()
    fit(model, x, y)
    assert seen == [True] * BATCHES


@pytest.mark.parametrize("mode", ["dsl", "sl", "hybrid"])
def test_aux_head_parameters_change(mode: str) -> None:
    network, head = make_network(), make_head()
    before = snapshot(head)
    x, y = make_data()
    kwargs = {"feedback_weight": 0.5, "feedback_every": 2} if mode == "hybrid" else {}
    fit(make_module(network, head, mode=mode, **kwargs), x, y)
    assert_differs(head, before)


@pytest.mark.parametrize(("head", "head_kwargs"), [("linear", {}), ("linear", {"pool": 0}), ("mlp", {}), ("conv", {})])
@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_every_builtin_head_trains(head: str, head_kwargs: dict[str, Any], mode: str) -> None:
    network = make_network().float()  # the built-in heads are created in the default dtype
    x, y = make_data()
    model = make_module(network, head, mode=mode, aux_head_kwargs=head_kwargs)
    before = snapshot(model.aux_head)
    fit(model, x.float(), y)
    assert_differs(model.aux_head, before)
    assert all(p.grad is not None for p in model.aux_head.parameters())


# ---------------------------------------------------------------------------------------------- counting
class CountingSGD(torch.optim.SGD):
    """SGD that logs each ``zero_grad`` and ``step`` as ``(side, call)``."""

    def __init__(self, params: Any, side: str, log: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.side, self.log = side, log

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.log.append((self.side, "zero_grad"))
        super().zero_grad(set_to_none)

    def step(self, closure: Any = None) -> Any:
        self.log.append((self.side, "step"))
        return super().step(closure)


@pytest.mark.parametrize("mode", ["dsl", "sl", "hybrid"])
def test_one_forward_backward_zero_grad_and_step_per_batch(mode: str) -> None:
    log: list[tuple[str, str]] = []
    network, head = make_network(), make_head()
    kwargs = {"feedback_weight": 0.3, "feedback_every": 2} if mode == "hybrid" else {}
    model = make_module(
        network,
        head,
        mode=mode,
        client_optimizer=lambda p: CountingSGD(p, "client", log, **CLIENT_SGD),
        server_optimizer=lambda p: CountingSGD(p, "server", log, **SERVER_SGD),
        **kwargs,
    )
    forwards = {"client": 0, "server": 0, "aux": 0}
    for side, module in (("client", model.client), ("server", model.server), ("aux", model.aux_head)):
        module.register_forward_hook(lambda *_, s=side: forwards.__setitem__(s, forwards[s] + 1))
    backwards = {"client": 0, "server": 0, "aux": 0}
    for side, parameter in (("client", network[0].weight), ("server", network[4].weight), ("aux", head[0].weight)):
        parameter.register_post_accumulate_grad_hook(lambda _p, s=side: backwards.__setitem__(s, backwards[s] + 1))
    client_steps_at_server_forward: list[int] = []
    model.server.register_forward_pre_hook(
        lambda *_: client_steps_at_server_forward.append(log.count(("client", "step")))
    )
    x, y = make_data()
    trainer = fit(model, x, y)

    assert forwards == {"client": BATCHES, "server": BATCHES, "aux": BATCHES}
    assert backwards == {"client": BATCHES, "server": BATCHES, "aux": BATCHES}
    assert int(network[1].num_batches_tracked) == BATCHES
    for side in ("client", "server"):
        assert [call for s, call in log if s == side] == ["zero_grad", "step"] * BATCHES
    assert trainer.global_step == 2 * BATCHES  # Lightning counts optimizer steps: two per batch
    assert model.batches_trained == BATCHES
    # dsl: the client has stepped (and freed its graph) before the server runs; feedback: after.
    if mode == "dsl":
        expected = [b + 1 for b in range(BATCHES)]
    elif mode == "sl":
        expected = list(range(BATCHES))
    else:  # feedback on batches 1 and 3 (0-based)
        expected = [1, 1, 3, 3, 5]
    assert client_steps_at_server_forward == expected


def test_max_steps_counts_optimizer_steps_so_trains_half_as_many_batches() -> None:
    """Documented meaning of ``max_steps``: two optimizer steps per batch, so ``max_steps=10`` is 5 batches."""
    network, head = make_network(), make_head()
    model = make_module(network, head)
    x, y = make_data(batches=20)
    trainer = fit(model, x, y, max_epochs=-1, max_steps=10)
    assert model.batches_trained == 5
    assert int(network[1].num_batches_tracked) == 5
    assert trainer.global_step == 10


# ---------------------------------------------------------------------------------------------- hybrid
def test_hybrid_zero_weight_is_exactly_dsl_and_sends_nothing_down() -> None:
    x, y = make_data()
    dsl_net, dsl_head = make_network(), make_head()
    hybrid_net, hybrid_head = copy.deepcopy(dsl_net), copy.deepcopy(dsl_head)
    dsl = make_module(dsl_net, dsl_head, mode="dsl")
    hybrid = make_module(hybrid_net, hybrid_head, mode="hybrid", feedback_weight=0.0, feedback_every=1)
    fit(dsl, x, y)
    fit(hybrid, x, y)
    assert_same_state(hybrid_net, dsl_net, exact=True)
    assert_same_state(hybrid_head, dsl_head, exact=True)
    assert hybrid.cut.traffic.bytes_down == 0
    assert hybrid.cut.traffic.messages_down == 0
    assert hybrid.cut.traffic.bytes_up == dsl.cut.traffic.bytes_up


def test_hybrid_full_weight_every_batch_is_exactly_sl() -> None:
    x, y = make_data()
    sl_net, sl_head = make_network(), make_head()
    hybrid_net, hybrid_head = copy.deepcopy(sl_net), copy.deepcopy(sl_head)
    sl = make_module(sl_net, sl_head, mode="sl")
    hybrid = make_module(hybrid_net, hybrid_head, mode="hybrid", feedback_weight=1.0, feedback_every=1)
    fit(sl, x, y)
    fit(hybrid, x, y)
    assert_same_state(hybrid_net, sl_net, exact=True)
    assert_same_state(hybrid_head, sl_head, exact=True)
    assert hybrid.cut.traffic.bytes_down == sl.cut.traffic.bytes_down == BATCHES * Z_NUMEL * 8


@pytest.mark.parametrize(("lam", "every"), [(0.3, 2), (0.7, 1), (0.5, 3)])
def test_hybrid_matches_reference(lam: float, every: int) -> None:
    x, y = make_data()
    network, head = make_network(), make_head()
    ref_network, ref_head = copy.deepcopy(network), copy.deepcopy(head)
    model = make_module(network, head, mode="hybrid", feedback_weight=lam, feedback_every=every)
    fit(model, x, y)

    reference = Reference(ref_network, ref_head)
    feedback_batches = 0
    for b, (xb, yb) in enumerate(batches_of(x, y)):
        if (b + 1) % every == 0:
            reference.hybrid_feedback(xb, yb, lam)
            feedback_batches += 1
        else:
            reference.dsl(xb, yb)
    assert_same_state(network, ref_network)
    assert_same_state(head, ref_head)
    # float64 gradient of the (4, 6, 4, 4) activation, only on feedback batches
    assert model.cut.traffic.bytes_down == feedback_batches * Z_NUMEL * 8
    assert model.cut.traffic.messages_down == feedback_batches


# ---------------------------------------------------------------------------------------------- traffic and codecs
@pytest.mark.parametrize(("mode", "down_messages"), [("dsl", 0), ("sl", BATCHES)])
def test_traffic_counts_real_bytes(mode: str, down_messages: int) -> None:
    x, y = make_data()
    model = make_module(make_network(), make_head(), mode=mode)
    fit(model, x, y)
    traffic = model.cut.traffic
    assert traffic.bytes_up == BATCHES * (Z_NUMEL * 8 + BATCH * 8)  # float64 activations + int64 labels
    assert traffic.messages_up == BATCHES
    assert traffic.bytes_down == down_messages * Z_NUMEL * 8
    assert traffic.messages_down == down_messages


def _int8(z: Tensor, per_channel: bool) -> Tensor:
    """Affine uint8 quantization written out: scale = (max - min) / 255 per tensor or per channel."""
    x = z.float()
    if per_channel:
        low, high = x.amin(dim=(0, 2, 3), keepdim=True), x.amax(dim=(0, 2, 3), keepdim=True)
    else:
        low, high = x.min(), x.max()
    scale = (high - low) / 255
    codes = torch.round((x - low) / scale).clamp(0, 255)
    return (codes * scale + low).to(z.dtype)


@pytest.mark.parametrize(
    ("codec", "decode", "bytes_per_batch"),
    [
        ("none", lambda z: z, Z_NUMEL * 8),
        ("fp16", lambda z: z.half().to(z.dtype), Z_NUMEL * 2),
        ("bf16", lambda z: z.bfloat16().to(z.dtype), Z_NUMEL * 2),
        ("int8", lambda z: _int8(z, per_channel=False), Z_NUMEL + 8),
        ("int8-channel", lambda z: _int8(z, per_channel=True), Z_NUMEL + 8 * Z_SHAPE[0]),
    ],
)
def test_server_trains_on_decoded_activations(
    codec: str, decode: Callable[[Tensor], Tensor], bytes_per_batch: int
) -> None:
    model, network, head, reference = fitted_pair("dsl", "dsl", {"codec": codec}, up=decode)
    assert_same_state(network, reference.network)
    assert_same_state(head, reference.head)
    assert model.cut.traffic.bytes_up == BATCHES * (bytes_per_batch + BATCH * 8)  # + int64 labels


def test_codecs_change_what_the_server_learns() -> None:
    """Sanity of the codec tests above: a lossy codec really reaches the server."""
    x, y = make_data()
    servers = []
    for codec in ("none", "int8"):
        network = make_network()
        fit(make_module(network, make_head(), codec=codec), x, y)
        servers.append(network[SPLIT:])
    assert not torch.equal(servers[0][0].weight, servers[1][0].weight)


def test_grad_codec_compresses_the_gradient_sent_down() -> None:
    x, y = make_data()
    network, head = make_network(), make_head()
    ref_network, ref_head = copy.deepcopy(network), copy.deepcopy(head)
    model = make_module(network, head, mode="hybrid", feedback_weight=0.5, feedback_every=1, grad_codec="fp16")
    fit(model, x, y)
    run_reference(ref_network, ref_head, x, y, "hybrid_feedback", lam=0.5, down=lambda g: g.half().to(g.dtype))
    assert_same_state(network, ref_network)
    assert_same_state(head, ref_head)
    assert model.cut.traffic.bytes_down == BATCHES * Z_NUMEL * 2


# ---------------------------------------------------------------------------------------------- networks
class TinyNet(DecoupledSplitModule):
    """A user's project: the network comes from build_network(), the aux head is its own module."""

    def __init__(self, **kwargs: Any) -> None:
        torch.manual_seed(3)
        super().__init__(network=None, aux_head=nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 3)), **kwargs)

    def build_network(self) -> nn.Module:
        return nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)),
        )


@pytest.mark.parametrize("mode", ["dsl", "sl"])
def test_subclass_with_build_network(mode: str) -> None:
    model = TinyNet(split_index=1, mode=mode, num_classes=3, input_shape=(1, 8, 8))
    assert isinstance(model.client, nn.Module) and isinstance(model.server, nn.Module)
    assert isinstance(model.aux_head, nn.Sequential) and isinstance(model.aux_head[1], nn.Linear)
    assert len(model.client) == 1 and len(model.server) == 2
    assert isinstance(model.client[0][0], nn.Conv2d) and isinstance(model.server[1][2], nn.Linear)
    before = {"client": snapshot(model.client), "server": snapshot(model.server), "aux": snapshot(model.aux_head)}
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 1, 8, 8, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    fit(model, x, y)
    assert_differs(model.client, before["client"])
    assert_differs(model.server, before["server"])
    assert_differs(model.aux_head, before["aux"])


class Stages(nn.Module):
    """A network that is not an nn.Sequential but says where it can be cut."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stage(self.stem(x))).flatten(1))

    def cut_units(self) -> list[nn.Module]:
        return [self.stem, self.stage, nn.Sequential(self.pool, nn.Flatten(), self.fc)]

    def named_cuts(self) -> dict[str, int]:
        return {"early": 1, "late": 2}


@pytest.mark.parametrize(
    ("split_index", "client_units", "z_shape"), [("early", 1, (6, 8, 8)), ("late", 2, (6, 4, 4)), (2, 2, (6, 4, 4))]
)
def test_cuttable_network_and_named_cuts(split_index: str | int, client_units: int, z_shape: tuple[int, ...]) -> None:
    network = Stages()
    model = DecoupledSplitModule(
        network, split_index=split_index, num_classes=NUM_CLASSES, input_shape=IN_SHAPE, aux_head="linear"
    )
    assert model.split_index == client_units and model.num_units == 3
    assert model.client[0] is network.stem
    assert model.aux_head[1].in_features == z_shape[0]
    x = torch.randn(2, *IN_SHAPE)
    network.eval()
    model.eval()
    assert model.client(x).shape[1:] == z_shape
    torch.testing.assert_close(model(x), network(x))
    model.train()
    x, y = make_data()
    before = snapshot(network)
    fit(model, x.float(), y)
    assert_differs(network, before)  # training the module trains the user's network in place


def test_builtin_head_follows_the_network_dtype() -> None:
    model = make_module(make_network(), "linear")  # a float64 network
    assert model.aux_head[1].weight.dtype == torch.float64


# ---------------------------------------------------------------------------------------------- checkpoints
def _optimizer_states(trainer: Trainer) -> list[dict[str, Any]]:
    return [opt.state_dict() for opt in trainer.optimizers]


def _assert_same_optimizer_state(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["param_groups"] == want["param_groups"]
    assert sorted(got["state"]) == sorted(want["state"])
    for key, state in want["state"].items():
        assert torch.equal(got["state"][key]["momentum_buffer"], state["momentum_buffer"])


@pytest.mark.parametrize(
    ("mode", "extra", "scheduled", "save_by"),
    [
        ("dsl", {}, False, "trainer"),
        ("sl", {}, True, "callback"),
        ("hybrid", {"feedback_weight": 0.3, "feedback_every": 2}, True, "trainer"),
        ("dsl", {"scheduler_interval": "step"}, True, "callback"),
    ],
)
def test_resume_equals_uninterrupted_run(
    tmp_path: Path, mode: str, extra: dict[str, Any], scheduled: bool, save_by: str
) -> None:
    if scheduled:
        # lambdas, as in the rest of this file (see test_resume_with_default_optimizers for named functions)
        step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # noqa: E731
        extra = {**extra, "client_lr_scheduler": step_lr, "server_lr_scheduler": step_lr}
    x, y = make_data()  # 5 batches per epoch: with k = 2 the feedback schedule straddles the epochs
    network, head = make_network(), make_head()
    first_network, first_head = copy.deepcopy(network), copy.deepcopy(head)

    whole = make_module(network, head, mode=mode, **extra)
    whole_trainer = fit(whole, x, y, max_epochs=2)

    first = make_module(first_network, first_head, mode=mode, **extra)
    if save_by == "callback":
        first_trainer = fit(first, x, y, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
        ckpt = tmp_path / "last.ckpt"
    else:
        first_trainer = fit(first, x, y)
        ckpt = tmp_path / "epoch1.ckpt"
        first_trainer.save_checkpoint(ckpt)
    assert ckpt.is_file()

    resumed_network, resumed_head = make_network(seed=10), make_head(seed=11)  # other weights: all must be loaded
    resumed = make_module(resumed_network, resumed_head, mode=mode, **extra)
    resumed_trainer = fit(resumed, x, y, max_epochs=2, ckpt_path=str(ckpt))

    assert resumed.batches_trained == whole.batches_trained == 2 * BATCHES
    assert resumed_trainer.global_step == whole_trainer.global_step == 4 * BATCHES
    assert_same_state(resumed_network, network, exact=True)
    assert_same_state(resumed_head, head, exact=True)
    for got, want in zip(_optimizer_states(resumed_trainer), _optimizer_states(whole_trainer), strict=True):
        _assert_same_optimizer_state(got, want)
    if scheduled:
        assert len(resumed_trainer.lr_scheduler_configs) == 2
        for got, want in zip(resumed_trainer.lr_scheduler_configs, whole_trainer.lr_scheduler_configs, strict=True):
            assert got.scheduler.state_dict() == want.scheduler.state_dict()
        steps = 2 * BATCHES if extra.get("scheduler_interval") == "step" else 2
        lrs = [opt.param_groups[0]["lr"] for opt in resumed_trainer.optimizers]
        assert lrs == pytest.approx([CLIENT_SGD["lr"] * 0.5**steps, SERVER_SGD["lr"] * 0.5**steps])
    if mode != "dsl":
        assert resumed.cut.traffic.messages_down == whole.cut.traffic.messages_down - first.cut.traffic.messages_down


def test_load_from_checkpoint_restores_user_aux_head(tmp_path: Path) -> None:
    x, y = make_data()
    network, head = make_network(), make_head()
    trainer = fit(make_module(network, head), x, y)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = DecoupledSplitModule.load_from_checkpoint(
        tmp_path / "model.ckpt", network=make_network(seed=10), aux_head=make_head(seed=11)
    )
    assert_same_state(loaded.aux_head, head, exact=True)
    assert_same_state(nn.Sequential(*loaded.client, *loaded.server), network, exact=True)
    assert loaded.batches_trained == BATCHES and loaded.mode == "dsl" and loaded.split_index == SPLIT


@pytest.mark.parametrize("input_shape", [IN_SHAPE, None])
def test_load_from_checkpoint_restores_builtin_aux_head(tmp_path: Path, input_shape: tuple[int, ...] | None) -> None:
    """With ``input_shape=None`` the head is built from the data at fit; the checkpoint must still rebuild it."""
    x, y = make_data()
    network = make_network().float()
    model = make_module(network, "mlp", aux_head_kwargs={"hidden": 7}, input_shape=input_shape)
    trainer = fit(model, x.float(), y, datamodule=input_shape is None)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    loaded = DecoupledSplitModule.load_from_checkpoint(tmp_path / "model.ckpt", network=make_network(seed=10).float())
    assert_same_state(loaded.aux_head, model.aux_head, exact=True)
    assert_same_state(loaded.client, model.client, exact=True)
    assert loaded.aux_head[1].out_features == 7


def test_resume_of_a_module_built_without_input_shape(tmp_path: Path) -> None:
    x, y = make_data()
    network = make_network().float()
    first = make_module(copy.deepcopy(network), "linear", input_shape=None)
    torch.manual_seed(0)  # the head is built, with a random init, at setup
    fit(first, x.float(), y, datamodule=True).save_checkpoint(tmp_path / "epoch1.ckpt")
    whole = make_module(copy.deepcopy(network), "linear", input_shape=None)
    torch.manual_seed(0)
    fit(whole, x.float(), y, max_epochs=2, datamodule=True)
    resumed = make_module(make_network(seed=10).float(), "linear", input_shape=None)
    fit(resumed, x.float(), y, max_epochs=2, ckpt_path=str(tmp_path / "epoch1.ckpt"), datamodule=True)
    assert_same_state(resumed, whole, exact=True)


def test_resume_with_default_optimizers(tmp_path: Path) -> None:
    x, y = make_data()
    first = DecoupledSplitModule(
        make_network(), split_index=SPLIT, num_classes=NUM_CLASSES, aux_head=make_head(), input_shape=IN_SHAPE
    )
    fit(first, x, y).save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = DecoupledSplitModule(
        make_network(seed=10), split_index=SPLIT, num_classes=NUM_CLASSES, aux_head=make_head(), input_shape=IN_SHAPE
    )
    fit(resumed, x, y, max_epochs=2, ckpt_path=str(tmp_path / "epoch1.ckpt"))
    assert resumed.batches_trained == 2 * BATCHES


def test_aux_head_lr_gets_its_own_parameter_group() -> None:
    x, y = make_data()
    same = make_module(make_network(), make_head(), aux_head_lr=CLIENT_SGD["lr"])  # the client optimizer's own lr
    plain = make_module(make_network(), make_head())
    fit(same, x, y)
    fit(plain, x, y)
    for got, want in zip(same.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(got, want)  # the same updates, in two groups
    slow = make_module(make_network(), make_head(), aux_head_lr=1e-3)
    trainer = fit(slow, x, y)
    groups = trainer.optimizers[0].param_groups
    assert [g["lr"] for g in groups] == [CLIENT_SGD["lr"], 1e-3]
    assert [len(g["params"]) for g in groups] == [
        len(list(slow.client.parameters())),
        len(list(slow.aux_head.parameters())),
    ]


@pytest.mark.parametrize("bad", [0.0, -0.1, True])
def test_aux_head_lr_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match=r"`aux_head_lr` to be a float > 0 or None, got " + re.escape(repr(bad))):
        make_module(make_network(), make_head(), aux_head_lr=bad)
