"""Lightning data modules: CIFAR-10/100 (torchvision or ImageFolder copies) and the offline digits quickstart.

Both can partition their training set over simulated clients (:mod:`lightning_dsl.data.partition`) and serve one
loader per client (:mod:`lightning_dsl.data.clients`).
"""

from lightning_dsl.data.cifar import CIFARDataModule
from lightning_dsl.data.clients import SequentialClients, client_loaders
from lightning_dsl.data.digits import DigitsDataModule
from lightning_dsl.data.partition import PARTITION_SCHEMES, Partition, partition_indices

__all__ = [
    "PARTITION_SCHEMES",
    "CIFARDataModule",
    "DigitsDataModule",
    "Partition",
    "SequentialClients",
    "client_loaders",
    "partition_indices",
]
