"""The studies of ``benchmarks/paper.py`` as data: each is the cuts it runs at and a table of arms.

An arm (:class:`Variant`) is a name, a mode and the CLI overrides that make it; a new study is a new
entry of :data:`STUDIES`, not new code.
"""

from __future__ import annotations

from dataclasses import dataclass

CUTS = ("shallow", "middle", "deep")
MODES = ("sl", "dsl")


@dataclass(frozen=True)
class Dataset:
    """What a study runs on: the config, the CPU protocol's overlay and default data root, and its test split.

    ``test``: the data have a labelled test split apart from validation, so each run is tested after fit
    (``test/*`` in its summary); CIFAR validates on its test split and needs no second pass.
    """

    config: str
    cpu_overlay: str | None = None
    cpu_root: str | None = None
    test: bool = False


DATASETS = {
    "cifar10": Dataset("configs/cifar10_resnet110.yaml", "configs/paper/cpu.yaml", "data/cifar10-jpg"),
    "cifar100": Dataset("configs/cifar100_resnet110.yaml", "configs/paper/cpu.yaml", "data/cifar10-jpg"),
    "sst2": Dataset("configs/sst2_transformer.yaml", test=True),
}


@dataclass(frozen=True)
class Variant:
    """One arm of a study: a name (no '-'), the mode and the CLI overrides that make it."""

    name: str
    mode: str
    overrides: tuple[str, ...] = ()
    label: str = ""
    pair: str = ""  # the sl arm this dsl arm is compared with (the study table adds the accuracy gap)


SL = Variant("sl", "sl", label="sl")
# The paper's head (one linear layer, here on globally pooled z), named so the arm does not move with the default.
DSL = Variant("dsl", "dsl", ("--model.init_args.aux_head=linear",), label="dsl, linear head (pool 1)")


def _head(name: str, head: str, label: str, **kwargs: int) -> Variant:
    overrides = [f"--model.init_args.aux_head={head}"]
    overrides += [f"--model.init_args.aux_head_kwargs.{k}={v}" for k, v in kwargs.items()]
    return Variant(name, "dsl", tuple(overrides), label)


def _hybrid(every: int, weight: float) -> Variant:
    name = f"hybrid_k{every}_w{str(weight).replace('.', 'p')}"
    overrides = (f"--model.init_args.feedback_every={every}", f"--model.init_args.feedback_weight={weight}")
    return Variant(name, "hybrid", overrides, f"hybrid k={every} λ={weight}")


def _codec(mode: str, codec: str) -> Variant:
    return Variant(f"{mode}_{codec}", mode, (f"--model.init_args.codec={codec}",), f"{mode} + {codec}")


def _clients(mode: str, clients: int, partition: str, schedule: str = "parallel") -> Variant:
    """An arm of the clients study: ``partition`` is ``iid`` or ``dir<alpha>`` (Dirichlet, e.g. ``dir0.1``)."""
    scheme, alpha = ("iid", None) if partition == "iid" else ("dirichlet", partition[3:])
    overrides = [*(DSL.overrides if mode == "dsl" else ()), f"--data.init_args.num_clients={clients}"]
    overrides += [f"--data.init_args.partition={scheme}"] + ([f"--data.init_args.alpha={alpha}"] if alpha else [])
    overrides += [f"--model.init_args.client_schedule={schedule}"] if schedule != "parallel" else []
    tag = f"{'seq' if schedule == 'sequential' else 'n'}{clients}_{partition.replace('.', 'p')}"
    label = f"{mode}, {clients} clients {schedule}, {'IID' if alpha is None else f'Dir({alpha})'}"
    return Variant(f"{mode}_{tag}", mode, tuple(overrides), label, pair=f"sl_{tag}" if mode == "dsl" else "")


DSL_POOL2 = _head("dsl_pool2", "linear", "dsl, linear head (pool 2)", pool=2)
DSL_MLP = _head("dsl_mlp", "mlp", "dsl, mlp head")
_NO_SCHEDULE = ("--model.init_args.client_lr_scheduler=null", "--model.init_args.server_lr_scheduler=null")

# What each study sweeps, and at which cuts. Every study shares the sl and dsl arms of the paper study,
# so a sweep never trains the same run twice.
STUDIES: dict[str, tuple[tuple[str, ...], tuple[Variant, ...]]] = {
    "paper": (CUTS, (SL, DSL)),
    "heads": (
        ("shallow",),
        (
            SL,
            DSL,
            DSL_POOL2,
            _head("dsl_pool4", "linear", "dsl, linear head (pool 4)", pool=4),
            DSL_MLP,
            _head("dsl_conv", "conv", "dsl, conv head"),
            Variant(
                "dsl_pool4_headlr",
                "dsl",
                (*_head("", "linear", "", pool=4).overrides, "--model.init_args.aux_head_lr=0.01"),
                "dsl, linear head (pool 4), head lr 0.01",
            ),
        ),
    ),
    # Whether the pool-2 linear head's result at the shallow cut holds at the other cuts.
    "grid": (CUTS, (SL, DSL, DSL_POOL2)),
    # k at λ = 0.5 moves the bytes between dsl's and sl's; λ at k = 1 (the same bytes) moves only the gradient's weight.
    "hybrid": (("shallow",), (SL, DSL, _hybrid(4, 0.5), _hybrid(2, 0.5), _hybrid(1, 0.5), _hybrid(1, 0.25))),
    "codecs": (("shallow",), (SL, DSL, _codec("dsl", "fp16"), _codec("dsl", "int8"), _codec("sl", "int8"))),
    # Many clients (one process): N in {1, 5, 10}, IID and Dirichlet non-IID, parallel with FedAvg every epoch,
    # and the paper's own setting, 10 clients in turn. N = 1 is the paper study's sl and dsl.
    "clients": (
        ("shallow",),
        (
            SL,
            Variant(DSL.name, DSL.mode, DSL.overrides, DSL.label, pair="sl"),
            *[
                _clients(mode, n, partition)
                for n in (5, 10)
                for partition in ("iid", "dir1.0", "dir0.1")
                for mode in ("sl", "dsl")
            ],
            *[_clients(mode, 10, "iid", "sequential") for mode in ("sl", "dsl")],
        ),
    ),
    # A transformer on text (SST-2): sl and dsl at the three cuts, and the mlp head (the image studies' best heads
    # pool a spatial grid, which a sequence does not have; the mlp is the other built-in head that applies).
    "text": (CUTS, (SL, Variant(DSL.name, DSL.mode, DSL.overrides, "dsl, linear head (masked mean)"), DSL_MLP)),
    # The same recipe without the learning-rate schedule (constant lr 0.1), as the first measurement.
    "recipe": (
        ("shallow",),
        (
            SL,
            DSL,
            Variant("sl_constlr", "sl", _NO_SCHEDULE, "sl, constant lr"),
            Variant("dsl_constlr", "dsl", (*DSL.overrides, *_NO_SCHEDULE), "dsl, linear head, constant lr"),
        ),
    ),
}


# Studies whose dsl arms differ only in the head, so all send the same bytes: their plots compare the split
# network with the head alone instead of plotting accuracy against traffic.
HEAD_STUDIES = ("heads", "grid")

# Figures only some studies have (model transfers appear with many clients).
EXTRA_FIGURES = {"clients": {"comm/sync_bytes_per_epoch": "model sync bytes / epoch"}}
