"""Networks written elsewhere, cut by module name: exact halves, exact training steps, exact bytes, clear refusals."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Iterator

import pytest
import torch
import torchvision
from torch import Tensor, nn

from lightning_dsl.core.cut import Cut, Parcel
from lightning_dsl.core.cut_tensors import CutTensors
from lightning_dsl.core.heads import build_aux_head, check_aux_head
from lightning_dsl.core.sequence import head_input
from lightning_dsl.core.split import check_split_matches, graph_points, split_network
from lightning_dsl.core.step import split_step
from lightning_dsl.distributed.cut import _message, _parcel
from lightning_dsl.distributed.wire import decode, encode


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class TinyUNet(nn.Module):
    """A user's network with a skip connection: the encoder's first output is concatenated in the decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.down2 = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2)
        self.dec = nn.Conv2d(8 + 4, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: Tensor) -> Tensor:
        skip = self.down1(x)
        y = self.down2(self.pool(skip))
        return self.head(torch.relu(self.dec(torch.cat([self.up(y), skip], dim=1))))


def resnet18() -> nn.Module:
    return torchvision.models.resnet18(num_classes=3)


def mobilenet() -> nn.Module:
    return torchvision.models.mobilenet_v3_small(num_classes=3)


def vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )


def unet() -> nn.Module:
    return TinyUNet()


# (network, point, names of the tensors that cross: the point's output first)
CUTS: list[tuple[Callable[[], nn.Module], str, tuple[str, ...], int]] = [
    (resnet18, "layer2", ("layer2",), 32),
    (resnet18, "layer1.0.conv1", ("layer1.0.conv1", "maxpool"), 32),
    (resnet18, "layer3.0.downsample.1", ("layer3.0.downsample.1", "layer3.0.bn2"), 32),
    (mobilenet, "features.4", ("features.4",), 32),
    (mobilenet, "features.4.block.2.fc1", ("features.4.block.2.fc1", "features.4.block.1"), 32),
    (vit, "encoder.layers.encoder_layer_0", ("encoder.layers.encoder_layer_0",), 32),
    (
        vit,
        "encoder.layers.encoder_layer_1.ln_1",
        ("encoder.layers.encoder_layer_1.ln_1", "encoder.layers.encoder_layer_1.add"),
        32,
    ),
    (unet, "down2", ("down2", "down1"), 8),  # the skip crosses with the encoder's output
    (unet, "dec", ("dec",), 8),
]
IDS = [f"{make.__name__}-{point}" for make, point, _, _ in CUTS]


def inputs(size: int, batch: int = 2) -> Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def network(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return make()


@pytest.mark.parametrize(("make", "point", "crossing", "size"), CUTS, ids=IDS)
def test_halves_compose_to_the_network_and_send_what_the_server_needs(
    make: Callable[[], nn.Module], point: str, crossing: tuple[str, ...], size: int
) -> None:
    net = network(make).eval()
    halves = split_network(net, point)
    x = inputs(size)
    z = halves.client(x)
    names = z.names if isinstance(z, CutTensors) else (point,)
    assert names == crossing
    assert torch.equal(halves.server(z), net(x))
    check_split_matches(net, halves, x)
    # The halves own the network's parameters, each once.
    client, server = {id(p) for p in halves.client.parameters()}, {id(p) for p in halves.server.parameters()}
    assert not client & server and client | server == {id(p) for p in net.parameters()}
    assert halves.point == point and 1 <= halves.split_index < halves.num_units == len(graph_points(net)) + 1


def test_points_are_named_as_get_graph_node_names_names_them() -> None:
    from torchvision.models.feature_extraction import get_graph_node_names

    net = resnet18()
    train_nodes, _ = get_graph_node_names(net)
    points = graph_points(net)
    # Every position is listed once, under the outermost module that ends there, else its node name.
    assert points[:5] == ["conv1", "bn1", "relu", "maxpool", "layer1.0.conv1"]
    assert {"layer1", "layer2", "layer3", "layer4", "layer1.0", "avgpool", "flatten"} <= set(points)
    assert "fc" not in points  # the server would have nothing to do
    assert set(points) <= set(train_nodes) | {name for name, _ in net.named_modules()}  # a node or a submodule
    # A node name and the module that ends at the same node cut at the same place.
    a, b = split_network(net, "layer1.1.relu_1"), split_network(net, "layer1")
    assert a.split_index == b.split_index


def test_halves_deepcopy_and_pickle() -> None:
    net = network(resnet18).eval()
    halves = split_network(net, "layer1.0.conv1")
    x = inputs(32)
    buffer = io.BytesIO()
    torch.save(halves.client, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    for client in (copy.deepcopy(halves.client), loaded):
        z, expected = client(x), halves.client(x)
        assert isinstance(z, CutTensors) and all(torch.equal(a, b) for a, b in zip(z, expected, strict=True))


# ---------------------------------------------------------------------------------------------- training steps
def sgd(params: Iterator[nn.Parameter] | list[nn.Parameter]) -> torch.optim.SGD:
    return torch.optim.SGD(list(params), lr=0.1)


def step_of(net: nn.Module, point: str, x: Tensor, y: Tensor, mode: str, codec: str = "none") -> tuple[nn.Module, Cut]:
    """One split step of ``mode`` on a copy of ``net``; returns the network after it and the cut."""
    net = copy.deepcopy(net)
    halves = split_network(net, point)
    with torch.no_grad():
        z = halves.client.eval()(x)
    halves.client.train()
    torch.manual_seed(5)
    head = build_aux_head("linear", head_input(z).shape[1:], 3)
    cut = Cut(codec)
    weight = {"dsl": None, "sl": 1.0, "hybrid": 0.5}[mode]
    torch.manual_seed(7)  # dropout draws as in the reference
    split_step(
        halves.client,
        halves.server,
        head,
        x,
        y,
        cut=cut,
        client_optimizer=sgd([*halves.client.parameters(), *head.parameters()]),
        server_optimizer=sgd(halves.server.parameters()),
        feedback_weight=weight,
    )
    return net, cut


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), rtol=0, atol=1e-6), name


@pytest.mark.parametrize(("make", "point", "crossing", "size"), CUTS, ids=IDS)
def test_sl_step_equals_end_to_end_backprop(
    make: Callable[[], nn.Module], point: str, crossing: tuple[str, ...], size: int
) -> None:
    net = network(make).train()
    x, y = inputs(size, batch=4), torch.tensor([0, 1, 2, 1])
    after, cut = step_of(net, point, x, y, "sl")
    reference = copy.deepcopy(net)
    optimizer = sgd(reference.parameters())
    torch.manual_seed(7)
    nn.functional.cross_entropy(reference(x), y).backward()
    optimizer.step()
    assert_same_parameters(after, reference)
    assert cut.traffic.messages_down == 1


def test_dsl_step_equals_the_hand_written_reference_with_a_skip_across_the_cut() -> None:
    """Client on its auxiliary loss (the skip gets no gradient), server on the detached tensors that crossed."""
    net = network(unet).train()
    x, y = inputs(8, batch=4), torch.tensor([0, 1, 2, 1])
    after, cut = step_of(net, "down2", x, y, "dsl")

    reference = copy.deepcopy(net)
    torch.manual_seed(5)
    head = build_aux_head("linear", (8, 4, 4), 3)
    client = [*reference.down1.parameters(), *reference.down2.parameters()]
    server = [*reference.dec.parameters(), *reference.head.parameters()]
    client_opt, server_opt = sgd([*client, *head.parameters()]), sgd(server)
    skip = reference.down1(x)
    z = reference.down2(reference.pool(skip))
    nn.functional.cross_entropy(head(z), y).backward()
    client_opt.step()
    z, skip = z.detach(), skip.detach()
    logits = reference.head(torch.relu(reference.dec(torch.cat([reference.up(z), skip], dim=1))))
    nn.functional.cross_entropy(logits, y).backward()
    server_opt.step()
    assert_same_parameters(after, reference)
    assert cut.traffic.messages_down == 0


def test_hybrid_step_sends_each_gradient_down_and_weighs_it() -> None:
    """λ = 0.5: the client's gradient is 0.5 ∇ aux + 0.5 ∇ server, the server's through both crossing tensors."""
    net = network(unet).train()
    x, y = inputs(8, batch=4), torch.tensor([0, 1, 2, 1])
    after, cut = step_of(net, "down2", x, y, "hybrid")

    reference = copy.deepcopy(net)
    torch.manual_seed(5)
    head = build_aux_head("linear", (8, 4, 4), 3)
    client = [*reference.down1.parameters(), *reference.down2.parameters()]
    server = [*reference.dec.parameters(), *reference.head.parameters()]
    skip = reference.down1(x)
    z = reference.down2(reference.pool(skip))
    aux = torch.autograd.grad(nn.functional.cross_entropy(head(z), y), client, retain_graph=True)
    loss = nn.functional.cross_entropy(
        reference.head(torch.relu(reference.dec(torch.cat([reference.up(z), skip], 1)))), y
    )
    through = torch.autograd.grad(loss, client + server)
    with torch.no_grad():
        for p, a, s in zip(client, aux, through[: len(client)], strict=True):
            p -= 0.1 * (0.5 * a + 0.5 * s)
        for p, s in zip(server, through[len(client) :], strict=True):
            p -= 0.1 * s
    assert_same_parameters(after, reference)
    # Up: both tensors and the labels; down: a gradient for each tensor, float32.
    assert cut.traffic.bytes_up == (4 * 8 * 4 * 4 + 4 * 4 * 8 * 8) * 4 + 4 * 8
    assert cut.traffic.bytes_down == (4 * 8 * 4 * 4 + 4 * 4 * 8 * 8) * 4


# ---------------------------------------------------------------------------------------------- bytes and the wire
@pytest.mark.parametrize(
    ("codec", "per_tensor"), [("none", (4, 0)), ("fp16", (2, 0)), ("bf16", (2, 0)), ("int8", (1, 8))]
)
def test_every_tensor_is_encoded_and_counted(codec: str, per_tensor: tuple[int, int]) -> None:
    size, extra = per_tensor
    z = CutTensors(
        (torch.randn(3, 8, 4, 4), torch.randn(3, 4, 8, 8), torch.ones(3, 5, dtype=torch.bool)), ("a", "b", "m")
    )
    cut = Cut(codec)
    arrived, labels = cut.send_up(z, torch.tensor([0, 1, 2]))
    floats = 3 * 8 * 4 * 4 + 3 * 4 * 8 * 8
    assert cut.traffic.bytes_up == floats * size + 2 * extra + 15 + 3 * 8  # the bool tensor exact, then the labels
    assert isinstance(arrived, CutTensors) and arrived.names == ("a", "b", "m")
    assert arrived[2].dtype == torch.bool and torch.equal(arrived[2], z[2])
    tolerance = 0.0 if codec == "none" else 0.05
    assert all(torch.allclose(a, b, atol=tolerance * 4) for a, b in zip(arrived[:2], z[:2], strict=True))
    down = cut.send_down((torch.ones(3, 8, 4, 4), torch.ones(3, 4, 8, 8)))
    assert isinstance(down, tuple) and len(down) == 2 and cut.traffic.bytes_down == floats * 4


def test_several_tensors_cross_the_wire_with_their_names() -> None:
    z = CutTensors((torch.randn(2, 3), torch.randn(2, 5)), ("main", "skip"))
    sent: list[Parcel] = []

    class Recording(Cut):
        def transmit(self, parcel: Parcel, client: int = 0) -> Parcel:
            sent.append(parcel)
            return parcel

    Recording().send_up(z, torch.tensor([1, 0]))
    frame = encode(_message(sent[0]))
    received = _parcel("batch", decode(frame.header, frame.meta, frame.body))
    server = Cut()
    arrived, labels = server._arrived_up(received, 0)
    assert isinstance(arrived, CutTensors) and arrived.names == ("main", "skip")
    assert all(torch.equal(a, b) for a, b in zip(arrived, z, strict=True)) and labels.tolist() == [1, 0]
    assert server.traffic.bytes_up == (6 + 10) * 4 + 16


def test_built_in_heads_take_the_named_modules_output() -> None:
    z = CutTensors((torch.randn(2, 8, 4, 4), torch.randn(2, 4, 8, 8)))
    for spec in ("linear", "mlp", "conv"):
        head = build_aux_head(spec, z.main.shape[1:], 3)
        check_aux_head(head, z, 3)
        assert torch.equal(head(z), head(z.main))


# ---------------------------------------------------------------------------------------------- refusals
class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.mid = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.mid(self.proj(x)))


def test_a_parameter_owned_by_both_halves_is_refused() -> None:
    with pytest.raises(ValueError, match=r"both own `proj.weight` \(on the server: `proj.weight`\)"):
        split_network(Tied(), "mid")
    linear = nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"both own `0.weight` \(on the server: `2.weight`\), a tensor of \(4, 4\)"):
        split_network(nn.Sequential(linear, nn.ReLU(), linear), 2)


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.gate = Gate()
        self.out = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.gate(self.stem(x)))


class Gate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # control flow on a tensor's value: fx cannot trace it
            return x
        return -x


def test_an_untraceable_network_names_the_call_and_the_other_ways_in() -> None:
    with pytest.raises(ValueError) as info:
        split_network(Branching(), "stem")
    message = str(info.value)
    assert "torch.fx cannot trace it. The first call it cannot trace is in module `gate` (Gate)" in message
    assert "test_graph_cut.py" in message and "if x.sum() > 0:" in message
    assert "`nn.Sequential`" in message and "`cut_units()`" in message


class ModeDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x) * 2 if self.training else self.a(x))


def test_a_graph_that_depends_on_the_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="differs between training and evaluation"):
        split_network(ModeDependent(), "a")


def test_unknown_point_lists_the_points() -> None:
    with pytest.raises(ValueError, match=r"one of \['conv1', 'bn1', .*\] \(68 points; .* but got 'layer9'\.$"):
        split_network(resnet18(), "layer9")


def test_a_point_whose_output_is_no_tensor_is_refused_when_it_runs() -> None:
    halves = split_network(vit(), "encoder.layers.encoder_layer_0.self_attention")
    with pytest.raises(ValueError, match=r"needs its output, which is a tuple, not a tensor"):
        halves.client(inputs(32))


class Listed(nn.Module):
    """A network whose `cut_units()` do not run as its forward does (the forward adds a skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.c(self.b(h) + h)

    def cut_units(self) -> list[nn.Module]:
        return [self.a, self.b, self.c]


def test_units_that_differ_from_the_forward_are_refused_naming_the_first() -> None:
    net = Listed()
    halves = split_network(net, 2)
    with pytest.raises(ValueError, match=r"unit 2 \(Linear\) is the first whose output differs"):
        check_split_matches(net, halves, torch.randn(2, 4))
    # By name, the skip crosses the cut and the halves are the network.
    halves = split_network(net, "b")
    check_split_matches(net, halves, torch.randn(2, 4))
    assert halves.client(torch.randn(2, 4)).names == ("b", "a")


def test_a_chain_keeps_its_own_meaning_for_names_and_integers() -> None:
    chain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert (split_network(chain, "1").split_index, split_network(chain, 1).point) == (1, None)
    by_name = split_network(chain, "1")  # an integer string is an index, not the module named "1"
    assert len(by_name.client) == 1
    with pytest.raises(ValueError, match=r"to be an integer \(this network names no cuts\) in \[1, 2\], but got 'x'"):
        split_network(chain, "x")


class Scaled(nn.Module):
    """Its forward reads a Python number, which the trace freezes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)
        self.scale = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x) * self.scale)


def test_halves_that_part_from_the_forward_are_refused_naming_the_point() -> None:
    net = Scaled()
    halves = split_network(net, "a")
    check_split_matches(net, halves, torch.randn(2, 4))
    net.scale = 2.0  # the traced halves still multiply by 1.0
    with pytest.raises(ValueError, match=r"Cannot cut `Scaled` at 'a' .*\(largest difference"):
        check_split_matches(net, halves, torch.randn(2, 4))
    assert net.training and halves.client.training  # the modes are restored


def test_tracing_leaves_each_modules_mode_as_it_was() -> None:
    net = unet().train()
    net.down1[1].eval()  # a frozen BatchNorm
    split_network(net, "down2")
    assert net.training and not net.down1[1].training and net.down2.training
