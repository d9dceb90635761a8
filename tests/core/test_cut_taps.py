"""A tap on the cut sees what arrives at the server and replaces what the server sends down, nothing else."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_dsl.core import Cut, CutTap, split_step

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny networks: threads only wait for each other


class Recorder(CutTap):
    """Records arrivals; sends down ``scale`` times the gradient."""

    def __init__(self, scale: float = 1.0) -> None:
        self.arrivals: list[tuple[Tensor, Tensor, int, bool]] = []
        self.scale = scale

    def arrived(self, activations: Tensor, labels: Tensor, client: int = 0, reply: bool = False) -> None:
        self.arrivals.append((activations, labels, client, reply))

    def sending_down(self, gradient: Tensor, client: int = 0) -> Tensor:
        return gradient * self.scale


def test_a_tap_sees_each_training_batch_as_the_server_receives_it_and_no_evaluation_batch() -> None:
    tap = Recorder()
    cut = Cut(codec="fp16", taps=[tap])
    client, server, head = nn.Linear(1, 1, bias=False), nn.Linear(1, 2), nn.Linear(1, 2)
    nn.init.constant_(client.weight, 1.0001)
    optimizer = torch.optim.SGD([*client.parameters(), *server.parameters(), *head.parameters()], lr=0.0)
    x, y = torch.ones(1, 1), torch.tensor([1])
    for feedback in (1.0, None):
        split_step(
            client, server, head, x, y, cut=cut, client_optimizer=optimizer, server_optimizer=optimizer,
            feedback_weight=feedback, client_index=2,
        )  # fmt: skip
    (z_sl, labels, client_index, reply), (_, _, _, reply_dsl) = tap.arrivals
    assert z_sl.dtype == torch.float32 and z_sl.item() == 1.0  # decoded: what the server computes on
    assert (labels.tolist(), client_index, reply, reply_dsl) == ([1], 2, True, False)
    cut.send_up(torch.ones(1, 1), y)  # an evaluation batch crosses the cut without the step: not tapped
    assert len(tap.arrivals) == 2


def test_taps_replace_the_gradient_in_order_and_what_they_return_is_sent_and_counted() -> None:
    cut = Cut(grad_codec="fp16", taps=[Recorder(2.0), Recorder(3.0)])
    arrived = cut.send_down(torch.ones(2, 3))
    assert torch.equal(arrived, torch.full((2, 3), 6.0))
    assert cut.traffic.bytes_down == 2 * 3 * 2


def test_a_tap_that_changes_the_gradients_shape_is_refused() -> None:
    class Bad(CutTap):
        def sending_down(self, gradient: Tensor, client: int = 0) -> Tensor:
            return gradient[:1]

    with pytest.raises(ValueError, match=r"Bad.sending_down .* shape it was given, \(2, 3\), but got \(1, 3\)"):
        Cut(taps=[Bad()]).send_down(torch.ones(2, 3))


@pytest.mark.parametrize(("feedback_weight", "expected_scale"), [(1.0, 5.0), (None, None)])
def test_the_client_receives_what_the_tap_sends_down(
    feedback_weight: float | None, expected_scale: float | None
) -> None:
    torch.manual_seed(0)
    client, server, head = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(4, 2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    reference = nn.Linear(3, 4)
    reference.load_state_dict(client.state_dict())
    server_copy = nn.Linear(4, 2)
    server_copy.load_state_dict(server.state_dict())
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)  # noqa: E731 (only the gradients are compared)
    cut = Cut(taps=[Recorder(5.0)])
    split_step(
        client,
        server,
        head,
        x,
        y,
        cut=cut,
        client_optimizer=sgd(client),
        server_optimizer=sgd(server),
        feedback_weight=feedback_weight,
    )
    if expected_scale is None:  # decoupled: nothing is sent down, the client learns from its head alone
        loss = nn.functional.cross_entropy(head(reference(x)), y)
    else:
        loss = expected_scale * nn.functional.cross_entropy(server_copy(reference(x)), y)
    expected = torch.autograd.grad(loss, list(reference.parameters()))
    for got, want in zip((client.weight.grad, client.bias.grad), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_a_wire_cut_keeps_the_taps_of_the_cut_it_replaces() -> None:
    from lightning_dsl.distributed.cut import WireCut

    tap = Recorder()
    cut = Cut(codec="fp16", taps=[tap])
    wire = WireCut.replacing(cut, is_server=True, evaluator=False)
    assert wire.taps == [tap] and wire.codec is cut.codec and wire.traffic is cut.traffic
    assert (wire.is_server, wire.evaluator, wire.sides) == (True, False, frozenset({"server"}))
