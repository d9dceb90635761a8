"""What every possible cut of a network costs, from one measurement of each cut unit (plain torch).

A network with ``U`` cut units can be cut at ``k = 1 .. U - 1``. Nothing here runs a training step
per cut: each unit is measured once and every cut is derived from the units.

* **FLOPs** per unit: its forward and backward on one batch, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (the input of unit ``i > 0`` requires grad, as in
  the whole network, so the units' FLOPs add up to the network's).
* **Saved activations**: one forward of the whole chain (and of the auxiliary head at every cut) under
  ``saved_tensors_hooks``, recording every storage an operation saves and which units saved it,
  counted once per storage as :class:`~lightning_dsl.core.memory.SavedTensorTracker` counts them in a
  real step. A cut's client holds what units ``< k`` and its head saved; in ``dsl`` the server holds
  what units ``>= k`` saved (the client's graph is gone by then: the cut activation is the server's
  own), in ``sl`` the storages the client has not already counted (both graphs are alive at once),
  and the client's backward then saves the gradient that came down (one more activation-sized storage).
* **Compute time** per unit: forward and backward, timed once after a warm-up pass.
* **Bytes** per sample: the cut activation through the configured codec plus the labels, up; the
  gradient through the gradient codec, down (``sl``). A sequence model's cut activation
  (:class:`~lightning_dsl.core.sequence.MaskedSequence`) sends its padding mask as well, one byte per position;
  a cut inside a skip connection (:class:`~lightning_dsl.core.cut_tensors.CutTensors`) sends every tensor the
  server needs, each through the codec (an integer or ``bool`` one exact), and in ``sl`` each floating-point
  one gets its gradient back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_dsl.core.codecs import Codec, IdentityCodec
from lightning_dsl.core.cut_tensors import CutTensors
from lightning_dsl.core.memory import state_tensors, storage_key
from lightning_dsl.core.sequence import Activation, MaskedSequence, grad_tensors, values_of, with_grad_tensors

HeadFactory = Callable[[Activation], nn.Module]
"""Builds the auxiliary head for this cut activation (a batch of it: a tensor or a sequence with its mask)."""


@dataclass(frozen=True)
class LinkSpeed:
    """A network link for the time estimates: bandwidth in Mbit/s, one-way latency in ms."""

    bandwidth_mbps: float
    latency_ms: float = 0.0

    def seconds(self, nbytes: float) -> float:
        """Serialization time of ``nbytes``."""
        return nbytes * 8 / (self.bandwidth_mbps * 1e6)


@dataclass(frozen=True)
class CutCosts:
    """The costs of cutting after ``index`` units (per sample unless the name says per batch)."""

    index: int
    name: str
    client_params: int
    aux_head_params: int
    client_flops: float
    server_flops: float
    bytes_up: float
    bytes_down: float
    saved_client_sl: int
    saved_server_sl: int
    saved_step_sl: int
    saved_client_dsl: int
    saved_server_dsl: int
    saved_step_dsl: int
    client_seconds: float
    server_seconds: float
    sl_seconds: float | None = None
    dsl_seconds: float | None = None

    @property
    def saved_ratio(self) -> float:
        """Peak saved activations of the whole step, dsl / sl."""
        return self.saved_step_dsl / self.saved_step_sl if self.saved_step_sl else float("nan")

    @property
    def time_ratio(self) -> float | None:
        """Estimated time per batch over the link, dsl / sl (``None`` without a link)."""
        if self.sl_seconds is None or self.dsl_seconds is None:
            return None
        return self.dsl_seconds / self.sl_seconds

    def client_memory_bytes(self, param_bytes_per_param: float) -> float:
        """A client's footprint: parameters (client and head) times ``param_bytes_per_param``, plus dsl activations."""
        return (self.client_params + self.aux_head_params) * param_bytes_per_param + self.saved_client_dsl

    def as_dict(self) -> dict[str, Any]:
        """Every field, plus the ratios."""
        return {**asdict(self), "saved_ratio": self.saved_ratio, "time_ratio": self.time_ratio}


@dataclass
class _Storage:
    nbytes: int
    savers: set[Any]


def plan_cuts(
    units: Sequence[nn.Module],
    inputs: Activation,
    labels: Tensor,
    head_factory: HeadFactory,
    *,
    criterion: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    codec: Codec | None = None,
    grad_codec: Codec | None = None,
    names: dict[str, int] | None = None,
    link: LinkSpeed | None = None,
) -> list[CutCosts]:
    """The costs of every cut ``1 .. len(units) - 1`` of the network made of ``units``, on one batch.

    Args:
        units: the network's cut units, in order (``cut_units(network)``), in training mode.
        inputs: one batch of inputs (a tensor, or token ids with their mask).
        labels: its labels.
        head_factory: builds the auxiliary head for a cut activation (given one batch of it).
        criterion: the loss on both sides.
        codec: the activations' codec (``None``: sent as they are).
        grad_codec: the gradient's codec.
        names: named cuts (``{"shallow": 19, ...}``), shown in the table.
        link: estimate the time per batch of sl and (pipelined) dsl over this link.
    """
    codec, grad_codec = codec or IdentityCodec(), grad_codec or IdentityCodec()
    batch = inputs.shape[0]
    activations = _activations(units, inputs)
    heads = [head_factory(z).to(values_of(z).device) for z in activations[1:-1]]
    flops = [_flops(unit, x, i > 0) for i, (unit, x) in enumerate(zip(units, activations, strict=False))]
    seconds = [_seconds(unit, x, i > 0) for i, (unit, x) in enumerate(zip(units, activations, strict=False))]
    head_seconds = [_head_seconds(head, z, labels, criterion) for head, z in zip(heads, activations[1:-1], strict=True)]
    storages, cut_savers = _saved_storages(units, heads, inputs, labels, criterion)
    params = [sum(p.numel() for p in unit.parameters()) for unit in units]
    cut_names = {index: name for name, index in (names or {}).items()}
    label_bytes = labels.element_size()  # per sample

    plans = []
    for k in range(1, len(units)):
        cut_activation = activations[k]
        head = heads[k - 1]
        up = _bytes_up(codec, cut_activation) / batch + label_bytes
        crossing = grad_tensors(cut_activation)
        down = sum(grad_codec.encode(torch.zeros_like(t)).nbytes for t in crossing) / batch
        client_dsl, client_sl, server_dsl, server_sl = _saved_at(storages, k, len(units))
        # What the server decodes, and the gradient that comes down (of each tensor that crosses).
        z_bytes = sum(t.numel() * t.element_size() for t in crossing)
        # A lossy codec's decoded copy is what the server's first unit saves. In sl it is one storage more when the
        # client holds the cut activation too (a ReLU saved its output); when only the server held it (a transformer's
        # residual sum is saved by nobody on the client), the copy takes its place. In dsl the client's graph is gone.
        savers = cut_savers[k]
        if (
            not isinstance(codec, IdentityCodec)
            and k in savers
            and (savers & set(range(k)) or ("head", k, "sl") in savers)
        ):
            server_sl += z_bytes
        c = sum(seconds[:k]) + head_seconds[k - 1]
        s = sum(seconds[k:])
        sl_seconds = dsl_seconds = None
        if link is not None:
            up_s, down_s = link.seconds(up * batch), link.seconds(down * batch)
            sl_seconds = c + s + up_s + down_s + 2 * link.latency_ms / 1000
            dsl_seconds = max(c, s, up_s)  # pipelined: the upload overlaps the next batch's compute
        plans.append(
            CutCosts(
                index=k,
                name=cut_names.get(k, ""),
                client_params=sum(params[:k]),
                aux_head_params=sum(p.numel() for p in head.parameters()),
                client_flops=sum(flops[:k]) / batch,
                server_flops=sum(flops[k:]) / batch,
                bytes_up=up,
                bytes_down=down,
                # sl's client backward multiplies z by the gradient that came down: one z-sized storage more.
                saved_client_sl=client_sl + z_bytes,
                saved_server_sl=server_sl,
                saved_step_sl=max(client_sl + server_sl, client_sl + z_bytes),
                saved_client_dsl=client_dsl,
                saved_server_dsl=server_dsl,
                saved_step_dsl=max(client_dsl, server_dsl),
                client_seconds=c,
                server_seconds=s,
                sl_seconds=sl_seconds,
                dsl_seconds=dsl_seconds,
            )
        )
    return plans


def network_flops(units: Sequence[nn.Module], inputs: Activation) -> float:
    """FLOPs of one forward and backward of the whole network on ``inputs`` (what the units add up to)."""
    network = nn.Sequential(*units)
    with FlopCounterMode(display=False) as counter:
        out = network(inputs)
        if out.requires_grad:
            out.backward(torch.ones_like(out))
    network.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- measuring
@contextlib.contextmanager
def _state_kept(*modules: nn.Module) -> Iterator[None]:
    """Run a measuring pass without leaving a trace: BatchNorm statistics restored, gradients cleared."""
    states = [{k: v.clone() for k, v in module.state_dict().items()} for module in modules]
    try:
        yield
    finally:
        for module, state in zip(modules, states, strict=True):
            module.load_state_dict(state)
            module.zero_grad(set_to_none=True)


@torch.no_grad()
def _activations(units: Sequence[nn.Module], inputs: Activation) -> list[Activation]:
    """The input of every unit and the network's output: ``[x, u0(x), u1(u0(x)), ...]``."""
    out = [inputs]
    with _state_kept(*units):
        for unit in units:
            out.append(unit(out[-1]))
    return out


def _bytes_up(codec: Codec, activation: Activation) -> int:
    """Bytes of the cut activation as :meth:`~lightning_dsl.core.cut.Cut.send_up` sends it (labels apart)."""
    if isinstance(activation, CutTensors):
        return sum(
            codec.encode(t.detach()).nbytes if t.is_floating_point() else t.numel() * t.element_size()
            for t in activation
        )
    mask_bytes = activation.mask.numel() if isinstance(activation, MaskedSequence) else 0
    return codec.encode(values_of(activation).detach()).nbytes + mask_bytes


def _leaf(x: Activation, requires_grad: bool) -> Activation:
    """``x`` detached; its tensors (a sequence's values) requiring grad when asked and floating-point."""
    leaves = [t.detach().requires_grad_(requires_grad and t.is_floating_point()) for t in grad_tensors(x)]
    return with_grad_tensors(x, leaves)


def _forward_backward(unit: nn.Module, x: Activation, input_grad: bool) -> None:
    outs = [t for t in grad_tensors(unit(_leaf(x, input_grad))) if t.requires_grad]
    if outs:  # a parameter-free first unit (a Flatten) has no backward
        torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])


def _flops(unit: nn.Module, x: Activation, input_grad: bool) -> float:
    with _state_kept(unit), FlopCounterMode(display=False) as counter:
        _forward_backward(unit, x, input_grad)
    return float(counter.get_total_flops())


def _seconds(unit: nn.Module, x: Activation, input_grad: bool) -> float:
    with _state_kept(unit):
        return _timed(lambda: _forward_backward(unit, x, input_grad), values_of(x))


def _head_seconds(
    head: nn.Module, z: Activation, labels: Tensor, criterion: Callable[[Tensor, Tensor], Tensor]
) -> float:
    z = _leaf(z, True)
    with _state_kept(head):
        return _timed(lambda: criterion(head(z), labels).backward(), values_of(z))


def _timed(run: Callable[[], None], on: Tensor) -> float:
    """Seconds of one ``run()`` after a warm-up one (synchronized on ``on``'s device)."""
    run()
    _synchronize(on)
    start = time.perf_counter()
    run()
    _synchronize(on)
    return time.perf_counter() - start


def _synchronize(tensor: Tensor) -> None:
    if tensor.device.type == "cuda":
        torch.cuda.synchronize(tensor.device)


def _saved_storages(
    units: Sequence[nn.Module],
    heads: Sequence[nn.Module],
    inputs: Activation,
    labels: Tensor,
    criterion: Callable[[Tensor, Tensor], Tensor],
) -> tuple[list[_Storage], dict[int, set[Any]]]:
    """Every storage saved for backward in one forward of the chain, its heads (dsl and sl) and the loss.

    Returns the storages with the set of savers of each (a unit's index; ``len(units)`` for the loss;
    ``("head", k, mode)`` for the head at cut ``k``), and, per cut ``k``, the savers of the cut activation.
    """
    excluded = {key for key in map(storage_key, state_tensors(*units, *heads)) if key is not None}
    storages: dict[Any, _Storage] = {}
    current: list[Any] = [None]

    def pack(tensor: Tensor) -> Any:
        key = storage_key(tensor)
        if key is not None and key not in excluded:
            entry = storages.setdefault(key, _Storage(tensor.untyped_storage().nbytes(), set()))
            entry.savers.add(current[0])
        return tensor

    alive: list[Any] = []  # every output stays alive until the end: no storage is freed and reused
    with _state_kept(*units), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        x: Any = inputs
        for i, unit in enumerate(units):
            current[0] = i
            x = unit(x)
            alive.append(x)
        current[0] = len(units)
        alive.append(criterion(x, labels))
        for k, head in enumerate(heads, start=1):
            z = alive[k - 1]
            for mode, head_input in (("dsl", z), ("sl", z.detach())):
                current[0] = ("head", k, mode)
                alive.append(criterion(head(head_input), labels))
    # Who saved the cut activation itself, per cut (where a lossy codec's decoded copy goes, see plan_cuts).
    cut_savers = {
        k: storages[key].savers if (key := storage_key(values_of(alive[k - 1]))) in storages else set()
        for k in range(1, len(units))
    }
    del alive
    return list(storages.values()), cut_savers


def _saved_at(storages: Sequence[_Storage], k: int, num_units: int) -> tuple[int, int, int, int]:
    """Saved bytes at cut ``k``: the client's in dsl and sl, the server's in dsl and sl (each storage once)."""
    client_units, server_units = set(range(k)), set(range(k, num_units + 1))  # num_units: the loss
    client_dsl = client_sl = server_dsl = server_sl = 0
    for storage in storages:
        on_client = bool(storage.savers & client_units)
        on_server = bool(storage.savers & server_units)
        client_dsl += storage.nbytes * (on_client or ("head", k, "dsl") in storage.savers)
        in_sl_client = on_client or ("head", k, "sl") in storage.savers
        client_sl += storage.nbytes * in_sl_client
        server_dsl += storage.nbytes * on_server  # dsl: the client's graph is gone before the server runs
        server_sl += storage.nbytes * (on_server and not in_sl_client)  # sl: counted once, by the client first
    return client_dsl, client_sl, server_dsl, server_sl
