"""Models that can be cut: the CIFAR ResNets, a small CNN and a registry of factories."""

from lightning_dsl.models.cifar_resnet import CIFARResNet, cifar_resnet
from lightning_dsl.models.registry import create_model, list_models, register_model
from lightning_dsl.models.small_cnn import small_cnn

__all__ = ["CIFARResNet", "cifar_resnet", "create_model", "list_models", "register_model", "small_cnn"]
