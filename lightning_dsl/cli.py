"""``lightning-dsl fit|validate|test|predict`` / ``python -m lightning_dsl``: LightningCLI for split learning.

Example::

    lightning-dsl fit --config configs/quickstart.yaml
    lightning-dsl fit --config configs/quickstart.yaml --model.init_args.mode=sl --trainer.max_epochs=5
    lightning-dsl fit --config configs/quickstart.yaml --print_config

In Python (and in tests), ``main(args=[...])`` runs the same CLI and returns it; ``main(args=[...], run=False)``
only parses the arguments and builds the model, data module and trainer (pass no subcommand then).
"""

from __future__ import annotations

import sys
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from lightning_dsl.callbacks import (
    CommunicationMonitor,
    LeakageMonitor,
    PartitionMonitor,
    PeakMemoryMonitor,
    RunSummary,
    SplitThroughputMonitor,
)
from lightning_dsl.cli_parser import DSLArgumentParser, raised_in_data_setup
from lightning_dsl.module import DecoupledSplitModule
from lightning_dsl.strategies.split import SplitStrategy, process_name, run_group

RUNS_DIR = "runs"
NETWORK_LINKS = ("vocab_size", "max_length")
"""The data module's arguments copied to the same-named arguments of a network given by class path (when both exist)."""


class DSLCLI(LightningCLI):
    """LightningCLI with the links and the measurement callbacks this package needs.

    * ``data.num_classes`` reaches the model (``link_arguments``), so it is never set twice by hand; the
      auxiliary head is built at ``setup`` from the data module's ``input_shape`` (or its first batch).
    * A network given by class path gets the data module's ``vocab_size`` and ``max_length`` for its arguments of
      those names (the text transformer's vocabulary and positions), where both have them: set them on the data.
    * The data module's ``num_clients`` (1 for a data module without one) is the model's: the data decide
      how many clients there are (``--data.init_args.num_clients=10``); the model's ``client_schedule``
      tells the package's data modules how to serve them.
    * The communication, memory, throughput, partition, leakage and summary callbacks are always on; each has its
      own config section (``communication:``, ``memory:``, ``throughput:``, ``partition:``, ``leakage:``,
      ``summary:``; ``--leakage.max_batches=0`` turns the dCor measurement off). The
      bytes sent up and the peak saved activations show in the progress bar (``prog_bar: false``
      in the section turns that off).
    * Bad input ends in a short usage error (exit status 2), never a traceback: a misspelled key names the closest
      valid one (:class:`DSLArgumentParser`), a constructor's ``ValueError`` is shown as is
      (:meth:`instantiate_classes`), and so is a data module's ``ValueError`` or ``FileNotFoundError`` from its
      ``prepare_data`` or ``setup``, where checks that need the data run (:meth:`_run_subcommand`).
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """The parser of :class:`DSLArgumentParser` (unless a subclass of it is given as ``parser_class``)."""
        if not issubclass(self.parser_class, DSLArgumentParser):
            self.parser_class = DSLArgumentParser
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.num_clients", compute_fn=_num_clients, apply_on="instantiate")
        parser.add_lightning_class_args(PartitionMonitor, "partition")
        parser.add_lightning_class_args(CommunicationMonitor, "communication")
        parser.add_lightning_class_args(PeakMemoryMonitor, "memory")
        parser.add_lightning_class_args(SplitThroughputMonitor, "throughput")
        parser.add_lightning_class_args(LeakageMonitor, "leakage")  # before the summary: it reads privacy/dcor
        parser.add_lightning_class_args(RunSummary, "summary")
        # Where users look first: bytes sent up so far and the peak saved activations in the progress bar.
        parser.set_defaults({"communication.prog_bar": True, "memory.prog_bar": True})

    def before_instantiate_classes(self) -> None:
        """With ``--trainer.strategy=split`` each process is its own run: its role goes into the loggers' names.

        ``runs/csv/<role>/version_N`` (``server``, ``client0``, ...) and one W&B run per process named by
        its role, all of one launch in one W&B ``group``. ``{role}`` in ``--ckpt_path`` becomes the role, so
        one command resumes every process from its own checkpoint.
        """
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        _link_network_to_data(config)
        trainer = getattr(config, "trainer", None)
        if trainer is None or not _is_split(getattr(trainer, "strategy", None)):
            return
        role, group = process_name(getattr(trainer, "devices", None)), run_group()
        ckpt_path = getattr(config, "ckpt_path", None)
        if isinstance(ckpt_path, str) and "{role}" in ckpt_path:  # each process resumes from its own checkpoint
            config.ckpt_path = ckpt_path.replace("{role}", role)
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for logger in loggers:
            init_args = getattr(logger, "init_args", None)
            class_path = str(getattr(logger, "class_path", ""))
            if init_args is None:
                continue
            if class_path.endswith("WandbLogger"):
                init_args.name = f"{init_args.name}-{role}" if getattr(init_args, "name", None) else role
                init_args.group = group
                init_args.job_type = "server" if role == "server" else "client"
            elif getattr(init_args, "name", None) is not None:
                init_args.name = f"{init_args.name}/{role}"

    def instantiate_classes(self) -> None:
        """Build the classes; a constructor's ``ValueError`` (a bad argument) exits like a parse error.

        jsonargparse wraps such an error in a long "Does not validate against any of the Union subtypes"
        message; the user needs the constructor's own one, which names the argument, the value and what
        is allowed. It is printed after the usage line and the CLI exits with status 2 before anything is
        trained or written. Set ``JSONARGPARSE_DEBUG=true`` to get the traceback instead.
        """
        try:
            super().instantiate_classes()
        except ValueError as err:
            self.parser.error(_root_message(err), ex=err)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a bad data argument that only the data reveal (found in ``setup``) exits like a parse error.

        jsonargparse builds the data module while parsing, so the checks in its ``__init__`` are parse errors; those
        that need the data (more clients than training samples, a Dirichlet ``alpha`` that leaves a client empty)
        run in ``setup``, inside ``trainer.fit``. A ``ValueError`` or ``FileNotFoundError`` raised there is shown as
        ``error: data (DigitsDataModule): <its message>`` with exit status 2, after Lightning's teardown;
        ``JSONARGPARSE_DEBUG=true`` gives the traceback. Errors anywhere else keep their traceback.
        """
        try:
            super()._run_subcommand(subcommand)
        except (ValueError, FileNotFoundError) as err:
            datamodule = getattr(self, "datamodule", None)
            if datamodule is None or not raised_in_data_setup(err, datamodule):
                raise
            parser = getattr(self, "_subcommand_parsers", {}).get(subcommand, self.parser)
            parser.error(f"data ({type(datamodule).__name__}): {err}", ex=err)


def trainer_defaults() -> dict[str, Any]:
    """Loggers by default: a CSV log and an offline W&B run, both under ``runs/``."""
    return {
        "default_root_dir": RUNS_DIR,
        "logger": [
            {"class_path": _path(CSVLogger), "init_args": {"save_dir": RUNS_DIR, "name": "csv"}},
            {
                "class_path": _path(WandbLogger),
                "init_args": {"save_dir": RUNS_DIR, "project": "lightning-dsl", "offline": True},
            },
        ],
    }


def _link_network_to_data(config: Any) -> None:
    """Copy ``NETWORK_LINKS`` from the data's arguments to a network given by class path that takes them.

    A link in the parser cannot do this: the network is also given by name (``network: resnet20``), and
    jsonargparse refuses a link whose target does not exist in every config.
    """
    network = getattr(getattr(getattr(config, "model", None), "init_args", None), "network", None)
    data_args = getattr(getattr(config, "data", None), "init_args", None)
    network_args = getattr(network, "init_args", None)
    if network_args is None or data_args is None:
        return
    for name in NETWORK_LINKS:
        if name in network_args and getattr(data_args, name, None) is not None:
            network_args[name] = data_args[name]


def _num_clients(data: LightningDataModule) -> int:
    """The data module's number of clients; 1 for a data module that has no such attribute."""
    return int(getattr(data, "num_clients", 1))


def _is_split(strategy: Any) -> bool:
    """Whether the Trainer's ``strategy`` (a name, a class path config or an instance) is the split strategy."""
    if isinstance(strategy, str):
        return strategy == SplitStrategy.strategy_name
    if isinstance(strategy, SplitStrategy):
        return True
    return str(getattr(strategy, "class_path", "")).endswith("SplitStrategy")


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _root_message(err: BaseException) -> str:
    """The constructor's own message: the innermost error in ``err``'s chain of causes.

    For an argument typed as a union (the Trainer's ``strategy`` is a name or a ``Strategy``), jsonargparse lists
    each alternative's error; the one that names an argument (``Expected argument `x` ...``) is the constructor's.
    """
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)  # type: ignore[arg-type]
    for error in chain:
        for line in str(error).splitlines():
            line = line.strip().removeprefix("- ")
            if line.startswith(("Expected argument `", "Argument `")):
                return line
    return str(chain[-1])


def main(args: list[str] | None = None, run: bool = True) -> DSLCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``) and return it, with its ``model``, ``datamodule`` and ``trainer``.

    Raises:
        SystemExit: with status 2 on a bad argument (see :meth:`DSLCLI.instantiate_classes`), with
            status 0 after ``--help`` or ``--print_config``.
    """
    return DSLCLI(
        DecoupledSplitModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        # The config goes to the run's own directory; overwrite is a guard for loggers that share one
        # directory across runs (SaveConfigCallback + WandbLogger crash on the second run otherwise).
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        args=args,
        run=run,
    )


def build(args: list[str]) -> LightningCLI:
    """The model, data and trainer a ``fit`` with these arguments (``--config``, overrides) builds, not run.

    What the commands that act on a run's network (``lightning-dsl cuts``, ``lightning-dsl attack``) start
    from: the same classes, the same links and the same argument errors as the training CLI.
    """
    argv0, sys.argv = sys.argv, sys.argv[:1]  # the training CLI reads `args` only (it warns when both are given)
    try:
        return main(args=args, run=False)
    finally:
        sys.argv = argv0


def entrypoint() -> None:
    """The training CLI, :func:`main`, on ``sys.argv``; returns ``None`` (a console script's exit status 0).

    The ``lightning-dsl`` script is :func:`lightning_dsl.commands.entrypoint`, which also runs the other
    commands (``lightning-dsl cuts``, ``lightning-dsl attack``); this one runs only the training CLI, since the
    commands build their networks through :func:`main` and this module imports none of them.
    """
    main()
