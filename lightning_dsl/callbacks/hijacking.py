"""Feature-space hijacking by a malicious server (FSHA), run on a training run and measured every epoch.

The callback puts a :class:`~lightning_dsl.privacy.FeatureSpaceHijacking` on the server's side of the
module's cut (:attr:`~lightning_dsl.core.cut.Cut.taps`): in ``sl`` and ``hybrid`` the gradient that goes
down is the attacker's, in ``dsl`` nothing goes down and the attacker works on what arrives anyway. It
scores the attacker on the client's *private* training inputs: ``decoder(z)`` of each batch that arrived
against the inputs the client fed, as MSE in the data's pixel space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_dsl.core.clients import client_batches
from lightning_dsl.privacy.fsha import FeatureSpaceHijacking, check_options
from lightning_dsl.privacy.inversion import PixelMap, pixel_map, save_grid
from lightning_dsl.strategies import SplitStrategy

AUXILIARY_SPLITS = ("test", "val")
_SHOWN = 8  # private inputs in the grid


class FeatureSpaceHijackingAttack(Callback):
    """A malicious server hijacks the client's features (Pasquini et al., CCS 2021) and reconstructs its inputs.

    The attacker holds the inputs of one split of the data module that no client trains on (``auxiliary``),
    builds a pilot encoder with the client half's architecture and fresh weights, a decoder and a WGAN-GP
    discriminator (:func:`~lightning_dsl.privacy.default_networks`), trains them on every training batch
    that arrives and sends down the discriminator's gradient in place of the task's. Logged every epoch to
    every logger and kept in ``summary.json``:

    * ``privacy/fsha_mse``: mean over the epoch's batches of the MSE between ``decoder(z)`` and the client's
      private inputs behind ``z``, in pixel space (the inputs un-normalized with the data module's ``std``;
      the normalized space when it has none);
    * ``privacy/fsha_baseline_mse``: the same for a guess that knows nothing: the mean auxiliary image;
    * ``privacy/fsha_sent_down``: hijacking gradients that reached a client in the epoch (0 in ``dsl``).

    At the end of fit it writes ``grid``: the first 8 private inputs of the last training batch (top row, pixels
    in ``[0, 1]``) above what the attacker reconstructs from their activations; its path is ``privacy/fsha_grid``
    in the summary.

    Args:
        auxiliary: the data module's split whose inputs the attacker holds: ``"test"`` or ``"val"`` (its
            ``<split>_dataloader``); never the training split.
        auxiliary_size: use the first this many inputs of that split; ``None``: all of it.
        lr: Adam learning rate of the pilot and the decoder.
        discriminator_lr: Adam learning rate of the discriminator.
        gradient_penalty_weight: weight of the WGAN-GP penalty.
        seed: seeds the attacker's networks, its auxiliary batches and its penalty (the run's RNG is untouched).
        grid: file name of the PNG of reconstructions, in the trainer's ``log_dir`` (the first logger's version
            folder; ``default_root_dir`` without a logger); ``None``: none written.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[FeatureSpaceHijackingAttack(auxiliary="test")])  # doctest: +SKIP
    """

    def __init__(
        self,
        auxiliary: str = "test",
        auxiliary_size: int | None = None,
        lr: float = 1e-4,
        discriminator_lr: float = 1e-4,
        gradient_penalty_weight: float = 100.0,
        seed: int = 0,
        grid: str | None = "fsha_reconstructions.png",
    ) -> None:
        if auxiliary not in AUXILIARY_SPLITS:
            hint = (
                " (the clients train on it: the attacker's data must be disjoint from theirs)"
                if auxiliary == "train"
                else ""
            )
            raise ValueError(
                f"Expected argument `auxiliary` to be one of {list(AUXILIARY_SPLITS)}, a split no client trains on,"
                f" but got {auxiliary!r}{hint}."
            )
        if auxiliary_size is not None and (
            isinstance(auxiliary_size, bool) or not isinstance(auxiliary_size, int) or auxiliary_size < 1
        ):
            raise ValueError(
                f"Expected argument `auxiliary_size` to be an int >= 1 or None, but got {auxiliary_size!r}."
            )
        check_options(lr, discriminator_lr, gradient_penalty_weight)
        if grid is not None and (not isinstance(grid, str) or not grid.endswith(".png") or Path(grid).name != grid):
            raise ValueError(f"Expected argument `grid` to be a file name ending in '.png' or None, but got {grid!r}.")
        self.auxiliary, self.auxiliary_size, self.seed, self.grid = auxiliary, auxiliary_size, seed, grid
        self.options = {
            "lr": lr,
            "discriminator_lr": discriminator_lr,
            "gradient_penalty_weight": gradient_penalty_weight,
        }
        self.attack: FeatureSpaceHijacking | None = None
        self.history: list[dict[str, float]] = []
        self._pending_state: dict[str, Any] | None = None
        self._std: Tensor | float = 1.0
        self._to_pixels: PixelMap | None = None  # the data module's, from setup
        self._shown: tuple[Tensor, Tensor] | None = None  # the last batch's first private inputs, reconstructed
        self.grid_path: Path | None = None
        self._mean_image: Tensor | None = None
        self._sums = {"mse": 0.0, "baseline": 0.0, "samples": 0.0}
        self._sent_at_epoch_start = 0
        self._auxiliary_images = 0

    # ------------------------------------------------------------------ setup: the attacker and its data
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:  # noqa: D102
        if stage != "fit":
            return
        cut, mode = getattr(pl_module, "cut", None), getattr(pl_module, "mode", None)
        if cut is None or mode is None:
            raise ValueError(
                f"FeatureSpaceHijackingAttack attacks a DecoupledSplitModule (a module with a `cut`), got"
                f" {type(pl_module).__name__}."
            )
        if isinstance(trainer.strategy, SplitStrategy):
            raise ValueError(
                "FeatureSpaceHijackingAttack runs with client and server in one process only, not with"
                " strategy='split': its score needs the clients' private inputs beside the server's decoder."
                " Drop the strategy (the attack's algorithm and traffic are the same in one process)."
            )
        public = self._auxiliary_inputs(trainer)
        if self.attack is None:
            client = pl_module.client
            assert isinstance(client, torch.nn.Module)
            self.attack = FeatureSpaceHijacking.for_client(client, public, seed=self.seed, **self.options)
        if self._pending_state is not None:
            self.attack.load_state_dict(self._pending_state)
            self._pending_state = None
        if self.attack not in cut.taps:
            cut.taps.append(self.attack)
        std = getattr(getattr(trainer, "datamodule", None), "std", None)
        self._std = 1.0 if std is None else torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if isinstance(self._std, Tensor) and self._std.numel() == 1:
            self._std = float(self._std)
        self._to_pixels = pixel_map(getattr(trainer, "datamodule", None))
        self._mean_image = public.mean(dim=0, keepdim=True)
        self._auxiliary_images = len(public)
        rank_zero_info(
            f"FSHA: the server holds the first {len(public)} inputs of the {self.auxiliary!r} split (no client"
            " trains on them) and sends the discriminator's gradient down in place of the task's."
        )
        if mode == "dsl":
            rank_zero_warn(
                "FSHA in mode 'dsl': nothing comes back down, so the hijacking gradient has no channel to the"
                " client. The server still trains its pilot, decoder and discriminator on what arrives, and"
                " privacy/fsha_mse measures what it reconstructs anyway."
            )

    def _auxiliary_inputs(self, trainer: Trainer) -> Tensor:
        datamodule = getattr(trainer, "datamodule", None)
        loader_of = getattr(datamodule, f"{self.auxiliary}_dataloader", None)
        if datamodule is None or not callable(loader_of):
            raise ValueError(
                f"FeatureSpaceHijackingAttack takes its auxiliary data from the data module's {self.auxiliary}"
                f" split (argument `auxiliary`={self.auxiliary!r}), but the trainer has "
                + ("no data module." if datamodule is None else f"a {type(datamodule).__name__} without one.")
            )
        chunks, total = [], 0
        for batch in loader_of():
            inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
            if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() != 4:
                found = (
                    f"dtype {inputs.dtype}, shape {tuple(inputs.shape)}"
                    if isinstance(inputs, Tensor)
                    else type(inputs).__name__
                )
                raise ValueError(
                    "FeatureSpaceHijackingAttack reconstructs images (float inputs of shape (N, C, H, W)), but the"
                    f" {self.auxiliary} split's inputs are {found}: it does not apply to this data."
                )
            chunks.append(inputs.detach().cpu())
            total += len(inputs)
            if self.auxiliary_size is not None and total >= self.auxiliary_size:
                break
        if not chunks:
            raise ValueError(f"The data module's {self.auxiliary} split is empty: the attacker has no auxiliary data.")
        public = torch.cat(chunks)
        return public if self.auxiliary_size is None else public[: self.auxiliary_size]

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:  # noqa: D102
        cut = getattr(pl_module, "cut", None)
        if cut is not None and self.attack in cut.taps:
            cut.taps.remove(self.attack)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if self.attack is not None:
            self.attack.to(pl_module.device)

    # ------------------------------------------------------------------ each batch: score on the private inputs
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        self._sums = {"mse": 0.0, "baseline": 0.0, "samples": 0.0}
        self._sent_at_epoch_start = self.attack.sent_down if self.attack is not None else 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:  # noqa: D102
        if self.attack is not None:  # what the scoring below pairs with this batch's inputs
            self.attack.reconstructions.clear()
            self.attack.hijacking_gradients.clear()

    def on_train_batch_end(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        attack = self.attack
        if attack is None:
            return
        num_clients = int(getattr(pl_module, "num_clients", 1))
        schedule = str(getattr(pl_module, "client_schedule", "parallel"))
        assert self._mean_image is not None
        with torch.no_grad():
            for index, inputs, _ in client_batches(batch, num_clients, schedule):
                reconstruction = attack.reconstructions.get(index)
                if reconstruction is None or not isinstance(inputs, Tensor):
                    continue
                x = inputs.detach().float()
                mean_image = self._mean_image.to(x.device)
                self._sums["mse"] += float(self._pixel_mse(reconstruction.to(x.device), x)) * len(x)
                self._sums["baseline"] += float(self._pixel_mse(mean_image.expand_as(x), x)) * len(x)
                self._sums["samples"] += len(x)
                if self.grid is not None:
                    self._shown = (x[:_SHOWN], reconstruction[:_SHOWN].detach())  # to the host once, at the end

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if self.grid is None or self._shown is None or self._to_pixels is None or not trainer.is_global_zero:
            return
        to_pixels = self._to_pixels
        originals, reconstructions = (to_pixels(images.float()).cpu() for images in self._shown)
        self.grid_path = save_grid(
            originals, reconstructions, Path(trainer.log_dir or trainer.default_root_dir) / self.grid
        )

    def _pixel_mse(self, guess: Tensor, target: Tensor) -> Tensor:
        std = self._std.to(target.device) if isinstance(self._std, Tensor) else self._std
        return (((guess - target) * std) ** 2).mean()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if self.attack is None or not self._sums["samples"]:
            return
        samples = self._sums["samples"]
        row = {
            "epoch": float(trainer.current_epoch),
            "privacy/fsha_mse": self._sums["mse"] / samples,
            "privacy/fsha_baseline_mse": self._sums["baseline"] / samples,
            "privacy/fsha_sent_down": float(self.attack.sent_down - self._sent_at_epoch_start),
        }
        self.history.append(row)
        for key, value in row.items():
            if key != "epoch":
                pl_module.log(key, value, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ summary and checkpoints
    def summary(self) -> dict[str, Any]:
        """The last epoch's figures, what the attacker held, and the per-epoch curve (for ``summary.json``)."""
        if not self.history:
            return {}
        last = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        return {
            **last,
            "privacy/fsha_auxiliary": f"{self.auxiliary} split, {self._auxiliary_images} inputs",
            "privacy/fsha_history": [dict(row) for row in self.history],
            **({"privacy/fsha_grid": str(self.grid_path)} if self.grid_path is not None else {}),
        }

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"attack": self.attack.state_dict() if self.attack is not None else None, "history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.history = [dict(row) for row in state_dict.get("history", [])]
        state = state_dict.get("attack")
        if state is None:
            return
        if self.attack is None:  # restored before setup built the attacker: applied there
            self._pending_state = state
        else:
            self.attack.load_state_dict(state)
