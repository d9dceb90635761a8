"""Lightning data modules: CIFAR-10/100, the offline digits quickstart and text classification (SST-2, TSV/CSV).

The image modules can partition their training set over simulated clients (:mod:`lightning_dsl.data.partition`)
and serve one loader per client (:mod:`lightning_dsl.data.clients`).
"""

from lightning_dsl.data.cifar import CIFARDataModule
from lightning_dsl.data.clients import SequentialClients, client_loaders
from lightning_dsl.data.digits import DigitsDataModule
from lightning_dsl.data.partition import PARTITION_SCHEMES, Partition, partition_indices
from lightning_dsl.data.text import TextDataModule

__all__ = [
    "PARTITION_SCHEMES",
    "CIFARDataModule",
    "DigitsDataModule",
    "Partition",
    "SequentialClients",
    "TextDataModule",
    "client_loaders",
    "partition_indices",
]
