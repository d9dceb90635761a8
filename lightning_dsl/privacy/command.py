"""``lightning-dsl attack --config <yaml> --ckpt_path <ckpt>``: what a curious server reconstructs from the cut.

The same config (and overrides) a ``fit`` used builds the model and the data; the checkpoint's client half is
loaded into it (the attacker holds those weights: the SplitFed server after every FedAvg round, or anyone with a
leaked checkpoint of a one-client run). The attacker's auxiliary data are a stated part of a split nobody trained
on (by default a seeded half of the test split); the private inputs are a seeded sample of the training split
the clients trained on. Then :func:`~lightning_dsl.privacy.invert_images` (images: MSE, PSNR, SSIM, the zeros-in
baseline, ``reconstructions.png``) or :func:`~lightning_dsl.privacy.probe_tokens` (text: token accuracy against
the most frequent token) runs, and a short table (or ``--json``) is printed.

    lightning-dsl attack --config configs/quickstart.yaml --ckpt_path runs/csv/version_0/checkpoints/last.ckpt
    lightning-dsl attack --config configs/quickstart.yaml --ckpt_path CKPT --json --out runs/attack
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_dsl.cli import build
from lightning_dsl.core.sequence import MaskedSequence
from lightning_dsl.privacy.defenses import CutMechanism
from lightning_dsl.privacy.inversion import invert_images, pixel_map, save_grid
from lightning_dsl.privacy.tokens import probe_tokens

USAGE = "lightning-dsl attack --config CONFIG --ckpt_path CKPT [--model.init_args.X=...] [options]"
ATTACKS = ("inversion",)
GRID_FILE = "reconstructions.png"
_NOISE_SEED = 104_729  # the attacker's noise generator: --seed plus this, apart from any run's seed


def parser() -> argparse.ArgumentParser:
    """The attack's own options; everything else goes to the training CLI (``--config``, overrides)."""
    p = argparse.ArgumentParser(
        prog="lightning-dsl attack",
        usage=USAGE,
        description="What a curious server holding the client half reconstructs from the cut activations.",
    )
    p.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", type=Path, help="the trained run's checkpoint")
    p.add_argument("--attack", choices=ATTACKS, default="inversion", help="the attack (default: inversion)")
    p.add_argument(
        "--metrics",
        choices=("auto", "image", "tokens"),
        default="auto",
        help="image: mse, psnr, ssim; tokens: token_accuracy; auto (default): by the inputs",
    )
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.add_argument("--out", type=Path, default=Path("runs") / "attack", help=f"folder for {GRID_FILE}")
    p.add_argument(
        "--aux-split",
        choices=("test", "val", "train"),
        default="test",
        help="the split the attacker's auxiliary data come from (default: test; never train)",
    )
    p.add_argument(
        "--aux-fraction", type=float, default=0.5, help="the part of that split taken, a seeded sample (default 0.5)"
    )
    p.add_argument("--private-samples", type=int, default=256, help="training samples attacked (default 256)")
    p.add_argument("--epochs", type=int, default=10, help="the decoder's passes over the auxiliary set (default 10)")
    p.add_argument("--batch-size", type=int, default=64, help="the attack's batch size (default 64)")
    p.add_argument("--width", type=int, default=32, help="the decoder's width (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seeds the private sample and the attacker (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the attack on ``argv`` (``sys.argv[2:]`` from the console script); print and return 0."""
    cli_parser = parser()
    args, rest = cli_parser.parse_known_args(sys.argv[2:] if argv is None else argv)
    if not any(arg.startswith(("--config", "--model")) for arg in rest):
        cli_parser.error("pass --config CONFIG: the config the `lightning-dsl fit` of the checkpoint used")
    _check(cli_parser, args)
    cli = build(rest)
    model, data = cli.model, cli.datamodule
    checkpoint = _load_client(model, args.ckpt_path)
    data.prepare_data()
    data.setup("fit")
    if args.aux_split == "test" and getattr(data, "test_set", None) is None:
        data.setup("test")  # a data module that loads the test split for its own stage only (text)
    auxiliary, aux_note = _auxiliary(data, args)
    private, private_note = _private(data, args)
    device = cli.trainer.strategy.root_device
    client = model.client.to(device)
    is_text = isinstance(auxiliary[0], MaskedSequence)
    if args.metrics == "image" and is_text:
        raise SystemExit(
            "lightning-dsl attack: --metrics image (mse, psnr, ssim) needs image inputs, but this run's inputs are"
            " token sequences: use --metrics tokens (token_accuracy) or leave --metrics auto."
        )
    if args.metrics == "tokens" and not is_text:
        raise SystemExit(
            "lightning-dsl attack: --metrics tokens (token_accuracy) needs token sequences, but this run's inputs are"
            " images: use --metrics image (mse, psnr, ssim) or leave --metrics auto."
        )
    figures: dict[str, Any]
    if is_text:
        report = probe_tokens(client, auxiliary, private, int(data.vocab_size), epochs=args.epochs, seed=args.seed)
        figures = report.figures()
        grid = None
    else:
        result = invert_images(
            client,
            torch.cat(auxiliary),
            torch.cat(private),
            pixel_map(data),
            epochs=args.epochs,
            batch_size=args.batch_size,
            width=args.width,
            seed=args.seed,
            received=_received(model, args.seed),
        )
        figures = result.figures()
        grid = save_grid(result.originals, result.reconstructions, args.out / GRID_FILE)
    network = model.hparams.get("network")
    context = {
        "attack": args.attack,
        "network": network if isinstance(network, str) else type(model.client[0]).__name__ + "…",
        "split_index": model.split_index,
        "mode": model.mode,
        "checkpoint": str(args.ckpt_path),
        "checkpoint_epoch": checkpoint.get("epoch"),
        "auxiliary": aux_note,
        "private": private_note,
        "device": str(device),
        "received": _defense_note(model),
        "reconstructions": None if grid is None else str(grid),
    }
    if args.json:
        print(json.dumps({**figures, **context}, indent=2))
    else:
        print(_table(figures, context))
    if grid is not None and not args.json:
        print(f"reconstructions (originals above, reconstructions below) written to {grid}", file=sys.stderr)
    return 0


def _check(cli_parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.ckpt_path is None:
        cli_parser.error(
            "pass --ckpt_path CKPT: the attack needs the trained client half (the `.ckpt` a `lightning-dsl fit`"
            " wrote, e.g. runs/csv/version_0/checkpoints/*.ckpt)"
        )
    if not args.ckpt_path.is_file():
        cli_parser.error(f"argument --ckpt_path: no checkpoint file at {str(args.ckpt_path)!r}")
    if not 0 < args.aux_fraction <= 1:
        cli_parser.error(f"argument --aux-fraction must be in (0, 1], got {args.aux_fraction}")
    for name in ("private_samples", "epochs", "batch_size", "width"):
        if getattr(args, name) < 1:
            cli_parser.error(f"argument --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.aux_split == "train":
        cli_parser.error(
            "argument --aux-split: the auxiliary set must be disjoint from the clients' training data, and the"
            " training split is what they trained on. Pick --aux-split test (a seeded --aux-fraction of the test"
            " split, the default) or --aux-split val (a validation split held out of training, e.g."
            " --data.init_args.val_size=5000 for CIFAR)."
        )


def _load_client(model: Any, path: Path) -> dict[str, Any]:
    """Load the checkpoint's client half into ``model.client``; refuse a checkpoint of another network."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SystemExit(
            f"lightning-dsl attack: cannot read the checkpoint {path} ({type(err).__name__}: {err})."
        ) from err
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise SystemExit(f"lightning-dsl attack: {path} is not a Lightning checkpoint (no `state_dict`).")
    saved = {k.removeprefix("client."): v for k, v in state.items() if k.startswith("client.")}
    expected = model.client.state_dict()
    problems = [f"{k} is missing" for k in expected if k not in saved]
    problems += [f"{k} is not in the configured client" for k in saved if k not in expected]
    problems += [
        f"{k} has shape {tuple(saved[k].shape)}, the configured client's {tuple(v.shape)}"
        for k, v in expected.items()
        if k in saved and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if problems:
        hparams = checkpoint.get("hyper_parameters", {})
        configured = _describe(model.hparams.get("network"), model.split_index)
        trained = _describe(hparams.get("network"), hparams.get("split_index"))
        raise SystemExit(
            f"lightning-dsl attack: the checkpoint {path} holds another network than the config builds: the checkpoint"
            f" was trained with {trained}, the config builds {configured}. The client halves differ:"
            f" {'; '.join(problems[:3])}{'; ...' if len(problems) > 3 else ''}. Pass the config (and overrides) of"
            " the fit that wrote the checkpoint."
        )
    model.client.load_state_dict(saved)
    return checkpoint


def _received(model: Any, seed: int) -> Callable[[Tensor], Tensor] | None:
    """What the server receives of the client's activations: the run's clip and noise (``None``: no transform).

    The attacker knows the defense and its parameters (they are in the config); its noise comes from its own
    generator, seeded by ``--seed``, not from the client's.
    """
    transform = model.cut.client_transform
    if transform is None:
        return None
    if isinstance(transform, CutMechanism):
        transform = CutMechanism(replace(transform.privacy, seed=_NOISE_SEED + seed), transform.num_classes)
    no_labels = torch.empty(0, dtype=torch.long)
    return lambda z: transform.release(transform.bound(z), no_labels)[0]


def _defense_note(model: Any) -> str:
    privacy = getattr(model, "privacy", None)
    if privacy is None or privacy.clip_norm is None:  # noise needs a clip
        return "the client's activations as computed (no clip, no noise)"
    parts = [f"clipped to L2 norm <= {privacy.clip_norm:g} per sample"]
    if privacy.noise_multiplier > 0:
        parts.append(f"plus N(0, ({privacy.noise_multiplier:g} x {privacy.clip_norm:g})^2) per value")
    return "the client's activations " + ", ".join(parts) + " (auxiliary and private alike)"


def _describe(network: Any, split_index: Any) -> str:
    name = network if isinstance(network, str) else "a network given as a module"
    return f"network={name!r} cut at split_index={split_index!r}"


def _auxiliary(data: Any, args: argparse.Namespace) -> tuple[list[Any], str]:
    split = getattr(data, f"{args.aux_split}_set", None)
    if split is None:
        raise SystemExit(
            f"lightning-dsl attack: the data module has no {args.aux_split} split held out of training (its"
            f" `{args.aux_split}_set` is None): pick --aux-split test, or hold out a validation split (for CIFAR"
            " --data.init_args.val_size=5000)."
        )
    count = max(2, int(len(split) * args.aux_fraction))
    # A seeded sample, not the first rows: a split stored by class (an ImageFolder copy) would give few classes.
    generator = torch.Generator().manual_seed(args.seed + 1)
    indices = torch.randperm(len(split), generator=generator)[:count].sort().values.tolist()
    training = _fingerprints(data.train_set, range(len(data.train_set)))
    if training is not None:
        mine = _fingerprints(split, indices)
        assert mine is not None
        overlap = [i for i, f in zip(indices, mine, strict=True) if f in set(training)]
        if len(overlap) == len(indices):
            raise SystemExit(
                f"lightning-dsl attack: every auxiliary sample ({count} of the {args.aux_split} split) is"
                " also in the training split: the auxiliary set must be disjoint from the clients' training data."
                " Pick a split nobody trained on (--aux-split test or val)."
            )
        indices = [i for i in indices if i not in set(overlap)]
        dropped = f", less {len(overlap)} that are exact copies of training samples" if overlap else ""
    else:
        dropped = ""
    note = (
        f"{count} of the {len(split)} samples of the {args.aux_split} split ({100 * args.aux_fraction:.0f} %, seeded"
        f" by --seed={args.seed}){dropped}: {len(indices)} samples nobody trained on"
    )
    return _inputs(data, split, indices, args.batch_size), note


def _private(data: Any, args: argparse.Namespace) -> tuple[list[Any], str]:
    train = data.train_set
    count = min(args.private_samples, len(train))
    generator = torch.Generator().manual_seed(args.seed)
    indices = torch.randperm(len(train), generator=generator)[:count].sort().values.tolist()
    note = f"{count} samples of the {len(train)}-sample training split (seeded by --seed={args.seed}), no augmentation"
    return _inputs(data, train, indices, args.batch_size), note


def _inputs(data: Any, dataset: Dataset, indices: list[int], batch_size: int) -> list[Any]:
    """The inputs of ``dataset[indices]`` in batches, as the data module collates them, without augmentation."""
    augment = getattr(dataset, "augment", None)
    if augment:
        dataset.augment = False  # type: ignore[attr-defined]
    try:
        collate = getattr(data.test_dataloader(), "collate_fn", None)
        loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, collate_fn=collate)
        return [batch[0] for batch in loader]
    finally:
        if augment:
            dataset.augment = augment  # type: ignore[attr-defined]


def _fingerprints(dataset: Any, indices: Any) -> list[bytes] | None:
    """A digest of each sample's raw values (images or token ids), to find exact copies; ``None`` if unknown."""
    raw = getattr(dataset, "images", None)
    if raw is None and hasattr(dataset, "tensors"):
        raw = dataset.tensors[0]
    if isinstance(raw, Tensor):
        return [hashlib.sha1(raw[i].contiguous().numpy().tobytes()).digest() for i in indices]
    ids = getattr(dataset, "ids", None)
    if isinstance(ids, list):
        return [hashlib.sha1(str(ids[i]).encode()).digest() for i in indices]
    return None


def _table(figures: dict[str, Any], context: dict[str, Any]) -> str:
    lines = [
        f"Inversion by a curious server: {context['network']} cut at {context['split_index']} ({context['mode']}),"
        f" checkpoint of epoch {context['checkpoint_epoch']}.",
        f"Auxiliary: {context['auxiliary']}.",
        f"Private: {context['private']}.",
        f"Received: {context['received']}.",
        "",
    ]
    if "token_accuracy" in figures:
        lines += [
            "| figure | attack | baseline (most frequent token) |",
            "|---|---|---|",
            f"| token accuracy | {figures['token_accuracy']:.4f} | {figures['baseline_token_accuracy']:.4f} |",
        ]
    else:
        lines += [
            "| figure (pixels in [0, 1]) | attack | baseline (decoder on zeros) |",
            "|---|---|---|",
            f"| MSE | {figures['mse']:.5f} | {figures['baseline_mse']:.5f} |",
            f"| PSNR (dB) | {figures['psnr']:.2f} | {figures['baseline_psnr']:.2f} |",
            f"| SSIM | {figures['ssim']:.4f} | {figures['baseline_ssim']:.4f} |",
        ]
    lines.append(f"| dCor(x, z) | {figures['dcor']:.4f} | |")
    if "token_accuracy" not in figures:
        lines.append(f"| dCor²(x, z), bias-corrected | {figures['dcor_corrected']:.4f} | |")
    lines += ["", f"time: {figures['time_s']:.1f} s"]
    return "\n".join(lines)
