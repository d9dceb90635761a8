"""The studies of ``benchmarks/paper.py`` as data: each is the cuts it runs at and a table of arms.

An arm (:class:`Variant`) is a name, a mode and the CLI overrides that make it; a new study is a new
entry of :data:`STUDIES`, not new code. What a study's report shows (its table's columns, the accuracy that
counts, a published baseline) is its entry of :data:`REPORTS` (:class:`StudyReport`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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


# The defenses study's clipping norm at ResNet-20's shallow cut: the median per-sample L2 norm of the initial
# client half's activations on the CPU protocol (seed 0, 10 batches of 128, training mode), measured with
#   python benchmarks/clip_norm.py --config configs/cifar10_resnet110.yaml --config configs/paper/cpu.yaml \
#       --model.init_args.split_index=shallow --data.init_args.root=data/cifar10-jpg
# (quartiles 169 and 251; 204.6 rounded to 3 digits).
DEFENSE_CLIP_NORM = 205.0


def _defense(mode: str, tag: str, label: str, **privacy: float) -> Variant:
    """An arm of the defenses study: ``privacy`` are CutPrivacy fields; the dsl arm names the sl arm of its defense."""
    overrides = [
        *(DSL.overrides if mode == "dsl" else ()),
        *(f"--model.init_args.privacy.{k}={v}" for k, v in privacy.items()),
    ]
    return Variant(
        f"{mode}_{tag}", mode, tuple(overrides), f"{mode}, {label}", pair=f"sl_{tag}" if mode == "dsl" else ""
    )


def _defenses(mode: str) -> list[Variant]:
    tag = lambda value: str(value).replace(".", "p")  # noqa: E731
    return [
        *[_defense(mode, f"nopeek{tag(a)}", f"NoPeek α={a}", nopeek_weight=a) for a in (0.1, 0.5, 1.0, 2.0)],
        *[
            _defense(
                mode,
                f"noise{tag(s)}",
                f"noise σ={s}, C={DEFENSE_CLIP_NORM:g}",
                clip_norm=DEFENSE_CLIP_NORM,
                noise_multiplier=s,
            )
            for s in (0.5, 1.0, 2.0)
        ],
        *[_defense(mode, f"labels{tag(e)}", f"labels ε={e}", label_epsilon=e) for e in (1.0, 2.0, 4.0)],
    ]


DSL_POOL2 = _head("dsl_pool2", "linear", "dsl, linear head (pool 2)", pool=2)
DSL_MLP = _head("dsl_mlp", "mlp", "dsl, mlp head")
DSL_TEXT = Variant(DSL.name, DSL.mode, DSL.overrides, "dsl, linear head (masked mean)", pair="sl")
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
    # Cut 1 puts the embeddings alone on the client: in dsl they learn from a bag-of-words head.
    "text": (("1", *CUTS), (SL, DSL_TEXT, replace(DSL_MLP, pair="sl"))),
    # Compressed hidden states at the balanced cut: a transformer's residual stream has outlier features, which a
    # per-tensor int8 scale may not carry; the mask always crosses exact.
    "text_codecs": (
        ("middle",),
        (SL, DSL_TEXT, replace(_codec("dsl", "fp16"), pair="sl"), replace(_codec("dsl", "int8"), pair="sl")),
    ),
    # Defenses at the shallow cut, sl and dsl: undefended; NoPeek; the Gaussian mechanism (C measured above);
    # randomized labels. Each fit is attacked (AFTER): accuracy against leakage and the budgets
    # (benchmarks/defenses_report.py).
    "defenses": (
        ("shallow",),
        (SL, Variant(DSL.name, DSL.mode, DSL.overrides, DSL.label, pair="sl"), *_defenses("sl"), *_defenses("dsl")),
    ),
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


@dataclass(frozen=True)
class Baseline:
    """A published result on the same split, printed under a study's table and drawn on its accuracy plot.

    Example::

        >>> Baseline("Kim (2014)", "Kim (2014), CNN-rand", 0.827, "this SST-2 test split").line()
        'Baseline: Kim (2014), CNN-rand: 82.7 % on this SST-2 test split.'
    """

    short: str  # the plot's legend
    source: str
    accuracy: float  # a fraction, as the summaries' accuracies
    split: str

    def line(self) -> str:
        return f"Baseline: {self.source}: {100 * self.accuracy:.1f} % on {self.split}."


# The study table's columns by default (summary key -> header); CIFAR validates on its test split.
STUDY_FIGURES = {
    "val/acc": "test acc (split network)",
    "val/aux_acc": "test acc (client + aux head)",
    "comm/bytes_per_epoch": "bytes up+down / epoch",
    "memory/saved_peak_bytes": "peak saved activations",
    "seconds_per_epoch": "s / epoch",
    "params/aux_head": "aux head params",
}


@dataclass(frozen=True)
class StudyReport:
    """What a study's table and plots show, by summary key.

    Args:
        figures: the table's columns, summary key -> header.
        ratios: columns of an arm's figure over the sl arm's at the same cut, summary key -> header.
        accuracy: the split network's accuracy that the plots draw and the dsl − sl gap compares.
        aux_accuracy: the client + aux head's accuracy that the plots draw beside it.
        gap: the header of the dsl − sl column (for studies whose dsl arms name their sl arm).
        validation: what the plots call the validation split, whose accuracy per epoch they draw.
        heads: the dsl arms differ only in the head (all send the same bytes), so the plots compare the split
            network with the head alone instead of plotting accuracy against traffic.
        baseline: a published result on the same split, printed under the table.
    """

    figures: Mapping[str, str] = field(default_factory=lambda: STUDY_FIGURES)
    ratios: Mapping[str, str] = field(default_factory=lambda: {"comm/bytes_per_epoch": "bytes / sl's"})
    accuracy: str = "val/acc"
    aux_accuracy: str = "val/aux_acc"
    gap: str = "dsl − sl acc (points)"
    validation: str = "test"  # CIFAR validates on its test split
    heads: bool = False
    baseline: Baseline | None = None


# Studies not named here get StudyReport().
REPORTS: dict[str, StudyReport] = {
    "heads": StudyReport(heads=True),
    "grid": StudyReport(heads=True),
    # Model transfers appear with many clients.
    "clients": StudyReport(figures={**STUDY_FIGURES, "comm/sync_bytes_per_epoch": "model sync bytes / epoch"}),
    # SST-2 has a dev split (validation, 872 sentences) and a labelled test split (1,821): fit_then_test.py
    # tests the final weights, so the accuracies that count are test/*.
    "text": StudyReport(
        figures={
            "val/acc": "dev acc (split network)",
            "test/acc": "test acc (split network)",
            "test/aux_acc": "test acc (client + aux head)",
            "comm/bytes_per_epoch": "bytes up+down / epoch",
            "memory/saved_peak_bytes": "peak saved activations",
            "comm/bytes_per_token_up": "bytes up per token",
            "seconds_per_epoch": "s / epoch",
        },
        ratios={"comm/bytes_per_epoch": "bytes / sl's", "memory/saved_peak_bytes": "memory / sl's"},
        accuracy="test/acc",
        aux_accuracy="test/aux_acc",
        gap="dsl − sl test acc (points)",
        validation="dev",
        baseline=Baseline(
            "Kim (2014), CNN-rand",
            "Kim (2014), CNN with random embeddings (CNN-rand), trained from scratch",
            0.827,
            "this SST-2 test split",
        ),
    ),
}
REPORTS["text_codecs"] = REPORTS["text"]


def report_of(study: str) -> StudyReport:
    """What ``study``'s report shows (the defaults for a study not in :data:`REPORTS`)."""
    return REPORTS.get(study, StudyReport())


# ------------------------------------------------------------------------------------------------ privacy
# Issue 20's study, in its own block: what a curious or a malicious server learns at the cut, in sl and dsl.
# The studies above are untouched; the runner adds the post-fit step of AFTER, the report the tables of
# PRIVACY_STUDIES (benchmarks/privacy.py).


@dataclass(frozen=True)
class After:
    """A step the runner runs on a finished fit, in the run's directory, skipped when ``output`` exists there.

    ``attack``: ``lightning-dsl attack`` with the fit's own configs and overrides on the fit's last checkpoint
    (the runner turns checkpointing on for these runs), ``--json`` into ``output``, ``reconstructions.png`` beside
    it (images), and ``options`` (the attack's own, e.g. ``--metrics tokens``).
    """

    step: str = "attack"
    options: tuple[str, ...] = ()
    output: str = "attack.json"


# FSHA on the CPU protocol: the server turns malicious (configs/privacy/fsha.yaml: the attacker holds the test
# split's images, trains its pilot, decoder and WGAN-GP discriminator with Adam lr 1e-4, and in sl and on hybrid's
# feedback batches sends the discriminator's gradient down in place of the task's). The client runs on Adam lr 1e-4
# without weight decay (as benchmarks/fsha_digits.py) at a constant rate in all three arms: against a client on
# Adam FSHA hijacks quickly (on the digits; with SGD it did not converge in 60 epochs, PRIVACY_NOTES.md), so the
# arms give the attacker its best case, with the same client recipe in each: the modes differ only in what comes
# back. The server keeps the protocol's SGD and cosine schedule; 8 epochs as every CPU-protocol run.
_FSHA = (
    "--config=configs/privacy/fsha.yaml",
    "--model.init_args.client_optimizer=torch.optim.Adam",
    "--model.init_args.client_optimizer.lr=1e-4",
    "--model.init_args.client_optimizer.weight_decay=0",
    "--model.init_args.client_lr_scheduler=null",
)
FSHA_SL = Variant("fsha_sl", "sl", _FSHA, "sl under FSHA")
FSHA_HYBRID = Variant(
    "fsha_hybrid_k4", "hybrid", (*_FSHA, "--model.init_args.feedback_every=4"), "hybrid k=4 under FSHA"
)
FSHA_DSL = Variant("fsha_dsl", "dsl", (*_FSHA, *DSL.overrides), "dsl under FSHA")

STUDIES.update(
    {
        # ResNet-20 on the CIFAR-10 JPEG copy (the CPU protocol) at the three cuts: each fit is followed by the
        # inversion attack of a curious server on its last checkpoint (AFTER).
        "privacy": (CUTS, (SL, DSL)),
        # FSHA against sl, hybrid (k = 4) and dsl at the shallow cut, privacy/fsha_mse per epoch.
        "privacy_fsha": (("shallow",), (FSHA_SL, FSHA_HYBRID, FSHA_DSL)),
        # The text analogue (SST-2, --datasets sst2): the token probe at the text study's cuts.
        "privacy_text": (("1", *CUTS), (SL, DSL_TEXT)),
    }
)
# The defenses study (above) is attacked too: its leakage figures are the attack's, on what the server receives.
AFTER: dict[str, After] = {
    "privacy": After(),
    "privacy_text": After(options=("--metrics", "tokens")),
    "defenses": After(),
}
# The privacy studies' reports (benchmarks/privacy.py) and the data set each is about.
PRIVACY_STUDIES: dict[str, str] = {
    "privacy": "cifar10",
    "privacy_fsha": "cifar10",
    "privacy_text": "sst2",
    "defenses": "cifar10",
}
