"""Lightning strategies of the package: ``"split"`` runs the server and the clients as separate processes.

Importing :mod:`lightning_dsl` registers them in Lightning's strategy registry, so
``Trainer(strategy="split")`` and ``--trainer.strategy=split`` work like ``"ddp"``.
"""

from lightning_dsl.strategies.split import SERVER_ORDERS, SplitStrategy

__all__ = ["SERVER_ORDERS", "SplitStrategy"]
