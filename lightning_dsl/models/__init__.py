"""Models that can be cut: the CIFAR ResNets, a small CNN, a text transformer and a registry of factories."""

from lightning_dsl.models.cifar_resnet import CIFARResNet, cifar_resnet
from lightning_dsl.models.registry import create_model, list_models, register_model, resolve_network
from lightning_dsl.models.small_cnn import small_cnn
from lightning_dsl.models.transformer import TextTransformer, text_transformer

__all__ = [
    "CIFARResNet",
    "cifar_resnet",
    "create_model",
    "list_models",
    "register_model",
    "resolve_network",
    "small_cnn",
    "TextTransformer",
    "text_transformer",
]
