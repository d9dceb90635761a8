"""FedAvg (McMahan et al., 2017) over the clients' states: a weighted average of parameters and buffers.

The clients' halves and auxiliary heads travel as state dicts (parameters and persistent
buffers, BatchNorm statistics included) and are averaged with weights proportional to their shard
sizes. Sums are taken in float64, so averaging identical states returns them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

State = dict[str, Tensor]


def client_state(client: nn.Module, aux_head: nn.Module) -> State:
    """The state a client hands over: its half's and its auxiliary head's ``state_dict``, under prefixes.

    The tensors are the modules' own (detached, not copied).
    """
    state = {f"client.{k}": v for k, v in client.state_dict().items()}
    state.update({f"aux_head.{k}": v for k, v in aux_head.state_dict().items()})
    return state


def load_client_state(client: nn.Module, aux_head: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load a state made by :func:`client_state` into a client half and an auxiliary head (strictly)."""
    for prefix, module in (("client.", client), ("aux_head.", aux_head)):
        module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def state_nbytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of a state at its tensors' real dtypes and sizes (what one transfer of it costs)."""
    return sum(t.numel() * t.element_size() for t in state.values())


@torch.no_grad()
def fedavg(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> State:
    """Return the weighted average of ``states`` (FedAvg), each entry in its own dtype.

    Args:
        states: the clients' states, all with the same keys, shapes and dtypes.
        weights: one non-negative weight per state (shard sizes); they need not sum to one.

    Floating-point entries are averaged in float64 and cast back; integer entries (BatchNorm's
    ``num_batches_tracked``) are averaged and rounded.

    Example::

        >>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
        >>> fedavg([a, b], [3, 1])["w"]
        tensor([1.5000, 3.0000])
    """
    if not states:
        raise ValueError("Expected at least one state to average, but got none.")
    if len(weights) != len(states):
        raise ValueError(f"Expected one weight per state ({len(states)}), but got {len(weights)} weights.")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Expected non-negative weights with a positive sum, but got {list(weights)}.")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"State {i} has other keys than state 0: {sorted(set(state) ^ set(keys))}.")
    total = float(sum(weights))
    shares = [float(w) / total for w in weights]
    averaged: State = {}
    for key in keys:
        first = states[0][key]
        acc = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
        for share, state in zip(shares, states, strict=True):
            if share:
                acc.add_(state[key].to(torch.float64), alpha=share)
        averaged[key] = acc.to(first.dtype) if first.is_floating_point() else acc.round_().to(first.dtype)
    return averaged
