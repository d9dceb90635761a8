"""Lightning data modules: CIFAR-10/100 (torchvision or ImageFolder copies) and the offline digits quickstart."""

from lightning_dsl.data.cifar import CIFARDataModule
from lightning_dsl.data.digits import DigitsDataModule

__all__ = ["CIFARDataModule", "DigitsDataModule"]
