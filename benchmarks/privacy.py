"""The privacy studies of ``benchmarks/paper.py``: the attack after each fit, and their tables and figures.

A run of a study with a step in :data:`~benchmarks.studies.AFTER` is fitted with checkpointing on; then
:func:`after_fit` runs ``lightning-dsl attack`` with the fit's own configs and overrides on the fit's last
checkpoint, writes its ``--json`` object to ``attack.json`` and its ``reconstructions.png`` into the run's
directory, and is skipped when ``attack.json`` exists (an interrupted sweep resumes). The report reads
``attack.json`` back (``attack/*`` in the run's figures) and writes one table per privacy study:

* ``privacy``: task accuracy, ``privacy/dcor`` (the fit's last validation epoch), and the inversion attack's
  MSE, PSNR and SSIM against the zeros-in baseline's; the seed-0 reconstruction grids beside it.
* ``privacy_fsha``: ``privacy/fsha_mse`` per epoch (the malicious server's decoder on the client's private
  training inputs) against ``privacy/fsha_baseline_mse`` (the mean auxiliary image), and a plot of both.
* ``privacy_text``: the token probe's accuracy against the most-frequent-token baseline.
* ``defenses``: each defense's accuracies, leakage (the attack's) and budgets, the frontier and the grids
  (``benchmarks/defenses_report.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.studies import AFTER, PRIVACY_STUDIES, STUDIES, After

REPO = Path(__file__).resolve().parents[1]
GRID = "reconstructions.png"
FSHA_GRID = "fsha_reconstructions.png"  # FeatureSpaceHijackingAttack's grid, in the run's logger folder


def seed_of(run_dir: str) -> int:
    """The seed in a run directory's name (``benchmarks.paper.run_name``: ``<dataset>-<cut>-<variant>-s<seed>``)."""
    return int(run_dir.rsplit("-s", 1)[1])


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest ``.ckpt`` a fit wrote under ``run_dir`` (Lightning's: ``csv/version_N/checkpoints/``)."""
    found = sorted(run_dir.rglob("*.ckpt"), key=lambda p: (p.stat().st_mtime, str(p)))
    return found[-1] if found else None


def fit_arguments(fit_cmd: list[str]) -> list[str]:
    """The configs and overrides of a fit's command line: everything from its first ``--config`` on."""
    if "--config" not in fit_cmd:
        raise ValueError(f"fit_cmd: no --config in {fit_cmd!r}: pass the fit's whole command line")
    return fit_cmd[fit_cmd.index("--config") :]


def attack_command(step: After, fit_cmd: list[str], ckpt: Path | str, run_dir: Path) -> list[str]:
    """``lightning-dsl attack`` with the fit's configs and overrides on ``ckpt``, its grid into ``run_dir``."""
    if step.step != "attack":
        raise ValueError(f"step: unknown step {step.step!r}; the runner knows 'attack'")
    args = fit_arguments(fit_cmd)
    return [sys.executable, "-m", "lightning_dsl", "attack", *args, "--ckpt_path", str(ckpt), "--json"] + [
        "--out",
        str(run_dir),
        *step.options,
    ]


def after_fit(step: After, fit_cmd: list[str], run_dir: Path, dry_run: bool = False) -> bool:
    """Run ``step`` on the finished fit in ``run_dir`` unless its output exists; return whether the output exists.

    The attack's stdout (the JSON object) goes to ``run_dir/<step.output>`` only when the attack succeeds; its
    log to ``run_dir/<step.step>.log``.
    """
    output = run_dir / step.output
    if output.exists():
        print(f"[skip] {run_dir.name}: {step.output} exists", flush=True)
        return True
    ckpt = last_checkpoint(run_dir) if run_dir.is_dir() else None
    if dry_run:
        shown = ckpt or run_dir / "csv" / "version_0" / "checkpoints" / "<the fit's last .ckpt>"
        print(f"[{step.step}] {run_dir.name}: {' '.join(attack_command(step, fit_cmd, shown, run_dir))}", flush=True)
        return False
    if ckpt is None:
        print(f"[fail] {run_dir.name}: no checkpoint under {run_dir} for the {step.step} step", flush=True)
        return False
    cmd = attack_command(step, fit_cmd, ckpt, run_dir)
    print(f"[{step.step}] {run_dir.name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    with open(run_dir / f"{step.step}.log", "w") as log:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, cwd=REPO, text=True)
    if done.returncode != 0:
        print(f"[fail] {run_dir.name}: {step.step} exit {done.returncode}; see {run_dir / step.step}.log", flush=True)
        return False
    figures = json.loads(done.stdout)  # the whole stdout is the JSON object: refuse anything else
    output.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"[done] {run_dir.name}: {step.step} in {time.perf_counter() - start:.0f} s", flush=True)
    return True


# ---------------------------------------------------------------------------------------------- report

Runs = dict[tuple[str, str, str], list[dict[str, Any]]]

INVERSION = {
    "val/acc": "test acc (split network)",
    "val/aux_acc": "test acc (client + aux head)",
    "privacy/dcor": "dCor(x, z) (validation)",
    "attack/mse": "MSE",
    "attack/baseline_mse": "MSE, zeros in",
    "attack/psnr": "PSNR (dB)",
    "attack/baseline_psnr": "PSNR, zeros in",
    "attack/ssim": "SSIM",
    "attack/baseline_ssim": "SSIM, zeros in",
}
TOKENS = {
    "val/acc": "dev acc (split network)",
    "test/acc": "test acc (split network)",
    "privacy/dcor": "dCor(x, z) (dev)",
    "attack/token_accuracy": "token accuracy",
    "attack/baseline_token_accuracy": "most frequent token",
    "attack/dcor": "dCor(ids, h) (private)",
}
DECIMALS = {"mse": 4, "psnr": 2, "ssim": 3, "dcor": 3, "dcor_corrected": 3, "fsha_mse": 4, "fsha_baseline_mse": 4}


def fmt(key: str, figures: list[float]) -> str:
    """Mean ± std over seeds: accuracies in %, the attacks' figures with the decimals they need."""
    from benchmarks.report import fmt as default  # here: benchmarks.report imports this module
    from benchmarks.report import mean_std

    name = key.rsplit("/", 1)[-1].removeprefix("baseline_")
    if not figures or "acc" in key or name not in DECIMALS:
        return default(key, figures)
    mean, std = mean_std(figures)
    digits = DECIMALS[name]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(figures) > 1 else f"{mean:.{digits}f}"


def _table(runs: Runs, study: str, columns: dict[str, str]) -> list[str]:
    from benchmarks.report import values  # here: benchmarks.report imports this module

    cuts, variants = STUDIES[study]
    dataset = PRIVACY_STUDIES[study]
    lines = [
        "| dataset | cut | arm | seeds | " + " | ".join(columns.values()) + " |",
        "|" + "---|" * (4 + len(columns)),
    ]
    for cut in cuts:
        for variant in variants:
            summaries = runs.get((dataset, cut, variant.name))
            if summaries:
                cells = [fmt(k, values(summaries, k)) for k in columns]
                label = variant.label or variant.name
                lines.append(f"| {dataset} | {cut} | {label} | {len(summaries)} | " + " | ".join(cells) + " |")
    return lines


def fsha_rows(summaries: list[dict[str, Any]]) -> dict[str, list[float]]:
    """``privacy/fsha_mse`` per epoch (``epoch N``), its minimum and the baseline, one value per seed."""
    rows: dict[str, list[float]] = {}
    for summary in summaries:
        history = summary.get("privacy/fsha_history") or []
        for row in history:
            rows.setdefault(f"epoch {int(row['epoch']) + 1}", []).append(row["privacy/fsha_mse"])
        if history:
            rows.setdefault("min", []).append(min(r["privacy/fsha_mse"] for r in history))
            rows.setdefault("baseline", []).append(history[-1]["privacy/fsha_baseline_mse"])
    return rows


def shown_epochs(epochs: list[int], most: int = 8) -> list[int]:
    """All of ``epochs`` when they are at most ``most``, else those at 1, 2, 4, 8, ... and the last (a long run)."""
    if len(epochs) <= most:
        return epochs
    return sorted({e for e in epochs if e & (e - 1) == 0} | {epochs[-1]})


def fsha_table(runs: Runs) -> list[str]:
    cuts, variants = STUDIES["privacy_fsha"]
    dataset = PRIVACY_STUDIES["privacy_fsha"]
    arms = [(cut, v, runs[(dataset, cut, v.name)]) for cut in cuts for v in variants if (dataset, cut, v.name) in runs]
    if not arms:
        return []
    per_arm = [fsha_rows(s) for _, _, s in arms]
    epochs = sorted({int(k.split()[1]) for rows in per_arm for k in rows if k.startswith("epoch ")})
    keys = [*(f"epoch {e}" for e in shown_epochs(epochs)), "min", "baseline"]
    headers = [
        f"fsha_mse {k}" if k.startswith("epoch") else {"min": "min fsha_mse", "baseline": "baseline"}[k] for k in keys
    ]
    lines = ["| dataset | cut | arm | seeds | " + " | ".join(headers) + " | test acc (split network) |"]
    lines.append("|" + "---|" * (5 + len(keys)))
    from benchmarks.report import values

    for (cut, variant, summaries), rows in zip(arms, per_arm, strict=True):
        cells = [fmt("privacy/fsha_mse", rows.get(k, [])) for k in keys]
        acc = fmt("val/acc", values(summaries, "val/acc"))
        lines.append(f"| {dataset} | {cut} | {variant.label} | {len(summaries)} | " + " | ".join(cells) + f" | {acc} |")
    return lines


def fsha_plot(runs: Runs, out: Path, plt: Any) -> list[Path]:
    cuts, variants = STUDIES["privacy_fsha"]
    dataset = PRIVACY_STUDIES["privacy_fsha"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = False
    for j, variant in enumerate(variants):
        for i, summary in enumerate(runs.get((dataset, cuts[0], variant.name), [])):
            history = summary.get("privacy/fsha_history") or []
            epochs = [int(r["epoch"]) + 1 for r in history]
            ax.plot(epochs, [r["privacy/fsha_mse"] for r in history], color=f"C{j}", marker="o", ms=3,
                    label=variant.label if i == 0 else None)  # fmt: skip
            ax.plot(epochs, [r["privacy/fsha_baseline_mse"] for r in history], color=f"C{j}", linestyle=":",
                    label=f"{variant.label}: baseline (mean image)" if i == 0 else None)  # fmt: skip
            drawn = drawn or bool(history)
    if not drawn:
        plt.close(fig)
        return []
    ax.set(title=f"FSHA, {dataset}, cut {cuts[0]}: the attacker's MSE on private inputs", xlabel="epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(ylabel="pixel MSE (lower: better reconstruction)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"privacy_fsha_{dataset}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def grids(runs: Runs, out: Path, plt: Any, study: str = "privacy", seed: int = 0) -> list[Path]:
    """The seed-``seed`` runs' reconstructions in one figure: the private images, then one row per cut and arm."""
    cuts, variants = STUDIES[study]
    dataset = PRIVACY_STUDIES[study]
    rows = [
        (f"{cut}, {variant.mode}", out / f"{dataset}-{cut}-{variant.name}-s{seed}" / GRID)
        for cut in cuts
        for variant in variants
    ]
    title = (
        f"Inversion by a curious server, {dataset}: private training images, then their reconstructions (seed {seed})"
    )
    figure = montage(rows, title, out / f"{study}_grids_{dataset}.png", plt)
    return [figure] if figure else []


def fsha_grids(out: Path, plt: Any) -> list[Path]:
    """Every seed's FSHA grids in one figure: each run's last-batch private images above its reconstruction.

    Rows go by seed, then arm. A run's grid is the callback's ``fsha_reconstructions.png``, in the run's directory
    or its logger's.
    """
    cuts, variants = STUDIES["privacy_fsha"]
    dataset = PRIVACY_STUDIES["privacy_fsha"]
    found = {
        (seed, i): (f"{v.label},\nseed {seed}", grid)
        for i, v in enumerate(variants)
        for grid in sorted(out.glob(f"{dataset}-{cuts[0]}-{v.name}-s*/**/{FSHA_GRID}"))
        for seed in [seed_of(grid.relative_to(out).parts[0])]
    }
    seeds = ", ".join(str(s) for s in sorted({s for s, _ in found}))
    title = f"FSHA, {dataset}: private training images and the malicious server's reconstructions (seeds {seeds})"
    rows = [found[key] for key in sorted(found)]
    figure = montage(rows, title, out / f"privacy_fsha_grids_{dataset}.png", plt, own_originals=True)
    return [figure] if figure else []


def leakage_plot(runs: Runs, out: Path, plt: Any, study: str) -> list[Path]:
    """The attack's figure at each cut, sl against dsl (mean ± std over seeds), with its baseline; and the accuracy."""
    from benchmarks.report import mean_std, values

    cuts, variants = STUDIES[study]
    dataset = PRIVACY_STUDIES[study]
    text = study == "privacy_text"
    key, baseline = (
        ("attack/token_accuracy", "attack/baseline_token_accuracy") if text else ("attack/psnr", "attack/baseline_psnr")
    )
    accuracy = "test/acc" if text else "val/acc"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    drawn, floor = False, []
    for j, variant in enumerate(variants):
        present = [
            (i, runs[(dataset, c, variant.name)]) for i, c in enumerate(cuts) if runs.get((dataset, c, variant.name))
        ]
        for ax, figure in ((left, key), (right, accuracy)):
            points = [(i, mean_std(values(s, figure))) for i, s in present if values(s, figure)]
            if points:
                xs, stats = zip(*points, strict=True)
                scale = 100 if "acc" in figure else 1
                ax.errorbar([x + 0.04 * (j - 0.5) for x in xs], [scale * m for m, _ in stats],
                            yerr=[scale * d for _, d in stats], marker="o", capsize=3, color=f"C{j}",
                            label=variant.label or variant.name)  # fmt: skip
                drawn = True
        floor += [v for _, s in present for v in values(s, baseline)]
    if not drawn:
        plt.close(fig)
        return []
    if floor:
        scale = 100 if text else 1
        left.axhline(scale * mean_std(floor)[0], color="grey", ls=":", label="baseline")
    left.set(ylabel="token accuracy (%) of the probe" if text else "inversion PSNR (dB), higher: more leaked")
    right.set(ylabel="test accuracy, split network (%)")
    for ax in (left, right):
        ax.set_xticks(range(len(cuts)), cuts)
        ax.set(xlabel="cut")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    fig.suptitle(f"{dataset}: what a curious server recovers at each cut, and the task's accuracy", fontsize=9)
    fig.tight_layout()
    path = out / f"{study}_leakage_{dataset}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def montage(rows: list[tuple[str, Path]], title: str, path: Path, plt: Any, own_originals: bool = False) -> Path | None:
    """One figure of reconstruction grids: the first grid's originals, then each grid's reconstructions, labelled.

    ``rows`` are ``(label, reconstructions.png)``; missing files are left out; ``None`` if fewer than two remain.
    ``own_originals``: every grid shows other images, so each is shown whole (its originals above its
    reconstructions).
    """
    rows = [(label, grid) for label, grid in rows if grid.exists()]
    if len(rows) < 2:
        return None
    images = [plt.imread(grid) for _, grid in rows]
    half = images[0].shape[0] // 2  # save_grid: originals above, reconstructions below
    if own_originals:
        panels = [(f"{label}:\nprivate, reconstructed", image) for (label, _), image in zip(rows, images, strict=True)]
    else:
        panels = [("private images", images[0][: half + 1])] + [
            (label, image[half:]) for (label, _), image in zip(rows, images, strict=True)
        ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, (2.0 if own_originals else 1.05) * len(panels)))
    for ax, (label, picture) in zip(axes, panels, strict=True):
        ax.imshow(picture)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=0.2 if own_originals else 0.16, right=0.99, top=1 - 0.3 / len(panels), bottom=0.01, hspace=0.08
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


GRIDS_TEXT = (
    "Reconstructions (seed 0): 8 private training images of the CIFAR-10 JPEG copy, evenly spaced over the 256"
    " the attack scores, and what the attacker reconstructs from their cut activations. The attacker is a"
    " curious server that holds the client half's weights from the run's last"
    " checkpoint (what a SplitFed server holds after FedAvg; here, a leaked checkpoint of a one-client run) and a"
    " seeded half of the CIFAR-10 test split (5,000 images nobody trained on); it trains a decoder z → x on those"
    " auxiliary pairs (10 epochs) and never sees the private images. The figure: the 8 private images, then"
    " their reconstructions at each cut in sl and in dsl (linear head)."
)
FSHA_TEXT = (
    "FSHA: the server is malicious. It holds the CIFAR-10 test split (10,000 images nobody trained on), trains a"
    " pilot encoder, a decoder and a WGAN-GP discriminator on every batch, and sends the discriminator's gradient"
    " down instead of the task's (sl every batch, hybrid k = 4 on every 4th, dsl never: nothing goes down)."
    " fsha_mse: the decoder's pixel MSE on the client's private training inputs of each epoch; baseline: the mean"
    " auxiliary image's. The client trains with Adam lr 1e-4 (constant, no weight decay) in every arm. The plot:"
    " fsha_mse per epoch (solid) and the baseline (dotted), one line per arm and seed. The grids: the first 8"
    " private images of each run's last training batch (each run draws its own) above what the attacker's"
    " decoder made of their activations."
)
TEXT_TEXT = (
    "Token probe: a curious server holding the client half's weights (the run's last checkpoint) and a seeded half"
    " of the SST-2 test split trains a per-position linear probe from the hidden states at the cut to the token ids,"
    " and scores it on 256 private training sentences (real tokens only); baseline: always the most frequent token."
)


def section(runs: Runs, out: Path, plt: Any, study: str) -> tuple[str, list[Path]]:
    """A privacy study's table (markdown) and figures."""
    if study == "privacy_fsha":
        lines, images = fsha_table(runs), [*fsha_plot(runs, out, plt), *fsha_grids(out, plt)]
        note = FSHA_TEXT
    elif study == "defenses":
        from benchmarks import defenses_report  # here: it reads this module's fmt and GRID

        lines, images, note = defenses_report.section(runs, out, plt)
    elif study == "privacy_text":
        lines, images, note = _table(runs, study, TOKENS), leakage_plot(runs, out, plt, study), TEXT_TEXT
    else:
        images = [*leakage_plot(runs, out, plt, study), *grids(runs, out, plt, study)]
        lines, note = _table(runs, study, INVERSION), GRIDS_TEXT
    if len(lines) <= 2 and not images:
        return "", []
    return "\n".join([*lines, "", note]) + "\n", images


def read_after(run_dir: Path) -> dict[str, Any]:
    """The figures of the steps after the fit found in ``run_dir``, as ``<step>/<key>`` (numbers only)."""
    figures: dict[str, Any] = {}
    for output in sorted({(a.step, a.output) for a in AFTER.values()}):
        path = run_dir / output[1]
        if path.exists():
            data = json.loads(path.read_text())
            figures.update({f"{output[0]}/{k}": v for k, v in data.items() if isinstance(v, int | float)})
    return figures
