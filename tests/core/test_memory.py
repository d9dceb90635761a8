"""SavedTensorTracker against byte counts worked out by hand."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from torch import nn

from lightning_dsl.core.memory import SavedTensorTracker, state_tensors

F32 = 4  # bytes per float32


def mlp(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


# What autograd saves in mlp(x) for a batch of 8 when x does not require grad:
#   Linear(6, 16)  -> addmm saves its input x (8 x 6); not W1^T, since x needs no gradient
#   ReLU           -> its output r1 (8 x 16)
#   Linear(16, 16) -> r1 again (same storage) and W2^T (a view of the parameter: left out)
#   ReLU           -> its output r2 (8 x 16)
#   Linear(16, 4)  -> r2 again and W3^T (left out)
#   .sum()         -> nothing (only the shape)
MLP_SAVED = 8 * 6 + 8 * 16 + 8 * 16  # elements
# cross_entropy = log_softmax (saves its output, 8 x 4) + nll_loss (that output again, the int64
# targets and the float32 scalar total_weight).
CE_SAVED_BYTES = 8 * 4 * F32 + 8 * 8 + F32


def test_linear_relu_chain_by_hand() -> None:
    net = mlp()
    tracker = SavedTensorTracker(exclude=state_tensors(net))
    x = torch.randn(8, 6)
    with tracker.side("client"):
        loss = net(x).sum()
    assert tracker.live_bytes == MLP_SAVED * F32 == 1216
    assert tracker.num_storages == 3  # x, r1, r2: each counted once although r1 and r2 are saved twice
    loss.backward()
    assert tracker.live_bytes == 0
    assert tracker.num_storages == 0
    assert tracker.peak_bytes == 1216
    assert tracker.peak_bytes_by_side == {"client": 1216}
    assert tracker.live_bytes_by_side == {"client": 0}


def test_cross_entropy_by_hand() -> None:
    net = mlp()
    tracker = SavedTensorTracker(exclude=state_tensors(net))
    with tracker:
        loss = nn.functional.cross_entropy(net(torch.randn(8, 6)), torch.randint(0, 4, (8,)))
    assert tracker.live_bytes == MLP_SAVED * F32 + CE_SAVED_BYTES == 1412
    assert tracker.peak_bytes_by_side == {"default": 1412}
    loss.backward()
    assert tracker.live_bytes == 0


def test_parameters_count_unless_excluded() -> None:
    net = mlp()
    tracker = SavedTensorTracker()  # nothing excluded: W2^T and W3^T share the parameters' storages
    with tracker:
        net(torch.randn(8, 6)).sum().backward()
    assert tracker.peak_bytes == (MLP_SAVED + 16 * 16 + 16 * 4) * F32


def test_input_requiring_grad_saves_the_first_weight() -> None:
    net = mlp()
    tracker = SavedTensorTracker(exclude=state_tensors(net))
    with tracker:
        loss = net(torch.randn(8, 6, requires_grad=True)).sum()
    assert tracker.live_bytes == MLP_SAVED * F32  # W1^T is saved now, but it is a parameter
    del loss
    assert tracker.live_bytes == 0  # the graph died without a backward: counted down all the same


@pytest.mark.parametrize(("dtype", "size"), [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)])
def test_real_dtype(dtype: torch.dtype, size: int) -> None:
    net = mlp(dtype)
    tracker = SavedTensorTracker(exclude=state_tensors(net))
    with tracker:
        loss = net(torch.randn(8, 6, dtype=dtype)).sum()
    assert tracker.live_bytes == MLP_SAVED * size
    loss.backward()


def test_sides_and_peaks() -> None:
    client, server = mlp(), mlp()
    tracker = SavedTensorTracker(exclude=state_tensors(client, server))
    x = torch.randn(8, 6)
    with tracker.side("client"):
        client_loss = client(x).sum()
    with tracker.side("server"):
        server_loss = server(torch.randn(8, 6)).sum()
    assert tracker.live_bytes_by_side == {"client": 1216, "server": 1216}
    assert tracker.peak_bytes == 2432  # both graphs alive at once, as in conventional split learning
    client_loss.backward()
    server_loss.backward()
    tracker.reset_peaks()
    assert tracker.peak_bytes == 0 and tracker.peak_bytes_by_side == {"client": 0, "server": 0}
    # Decoupled order: the client's graph is gone before the server's forward.
    with tracker.side("client"):
        client(x).sum().backward()
    with tracker.side("server"):
        server(torch.randn(8, 6)).sum().backward()
    assert tracker.peak_bytes == 1216
    assert tracker.peak_bytes_by_side == {"client": 1216, "server": 1216}
    assert tracker.current_side == "default"


def test_storage_charged_to_the_side_that_saves_it_first() -> None:
    lin = nn.Linear(4, 4)
    tracker = SavedTensorTracker(exclude=state_tensors(lin))
    z = torch.relu(torch.randn(2, 4, requires_grad=True))
    with tracker.side("client"):
        kept = (z * 2).sum()  # mul by a constant saves nothing; relu ran outside: nothing counted yet
        client = lin(z).sum()  # saves z
    with tracker.side("server"):
        server = (z * z).sum()  # saves z twice: alive already, stays charged to the client
    assert tracker.live_bytes_by_side == {"client": 2 * 4 * F32}
    assert tracker.live_bytes_by_side.get("server", 0) == 0
    del kept, client, server


def test_views_count_their_whole_storage() -> None:
    base = torch.randn(10, 10)
    w = torch.randn(2, 3, requires_grad=True)
    tracker = SavedTensorTracker()
    with tracker:
        loss = (base[:2, :3] * w).sum()  # saves the 2 x 3 view: it keeps all of base alive
    assert tracker.live_bytes == 100 * F32
    del loss


def test_does_not_keep_storages_alive() -> None:
    net = mlp()
    tracker = SavedTensorTracker(exclude=state_tensors(net))
    seen: list[weakref.ref] = []
    net[1].register_forward_hook(lambda module, args, out: seen.append(weakref.ref(out.untyped_storage())))
    with tracker:
        loss = net(torch.randn(8, 6)).sum()
    assert seen[0]() is not None
    loss.backward()
    del loss
    assert seen[0]() is None  # freed by reference counting alone: no cycle through the hooks
    with tracker:
        loss = net(torch.randn(8, 6)).sum()
    del loss  # dropped without a backward
    assert seen[1]() is None
    gc.collect()
    assert tracker.live_bytes == 0


def test_backward_in_another_thread_counts_down() -> None:
    net = mlp()
    tracker = SavedTensorTracker(exclude=state_tensors(net))
    with tracker:
        loss = net(torch.randn(8, 6)).sum()
    worker = threading.Thread(target=loss.backward)
    worker.start()
    worker.join()
    assert tracker.live_bytes == 0 and tracker.peak_bytes == 1216


def test_excluded_set_is_replaced() -> None:
    net = mlp()
    tracker = SavedTensorTracker()
    tracker.set_excluded(state_tensors(net))
    with tracker:
        net(torch.randn(8, 6)).sum().backward()
    assert tracker.peak_bytes == 1216


def test_default_side_must_be_a_name() -> None:
    with pytest.raises(ValueError, match="`default_side`"):
        SavedTensorTracker(default_side="")
