"""A registry of small model factories, in the spirit of timm's ``@register_model``.

A factory is a plain function that only assembles arguments and returns an ``nn.Module``.
Decorating it with :func:`register_model` makes it available by name to :func:`create_model`
(and so to configuration files and the command line).

Example::

    >>> from lightning_dsl.models import create_model, list_models
    >>> "resnet20" in list_models()
    True
    >>> net = create_model("resnet20", num_classes=100)
    >>> net.linear.out_features
    100
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

ModelFactory = TypeVar("ModelFactory", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: ModelFactory) -> ModelFactory:
    """Register ``fn`` under its ``__name__`` and return it unchanged (use as a decorator).

    Raises:
        ValueError: if a different function is already registered under the same name.
    """
    name = fn.__name__
    existing = _MODELS.get(name)
    # Re-registering the same function (a module reload) is fine; shadowing another one is a bug.
    if existing is not None and (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(
            f"Cannot register `{fn.__module__}.{fn.__qualname__}` as model {name!r}: that name is already taken by"
            f" `{existing.__module__}.{existing.__qualname__}`. Give the factory function another name."
        )
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Return the names of all registered models, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``, passing ``kwargs`` to its factory.

    Args:
        name: a name from :func:`list_models`, e.g. ``"resnet110"`` or ``"small_cnn"``.
        **kwargs: arguments of that factory, e.g. ``num_classes=100`` or ``weights="resnet20.th"``.

    Raises:
        ValueError: if no model is registered under ``name``.
    """
    factory = _MODELS.get(name)
    if factory is None:
        close = difflib.get_close_matches(str(name), _MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Expected argument `name` to be one of {list_models()}, but got {name!r}.{hint}")
    return factory(**kwargs)


def resolve_network(network: nn.Module | str, num_classes: int) -> nn.Module:
    """The network itself, or the registered model of that name built for ``num_classes``.

    Raises:
        ValueError: naming argument `network` when the name is not registered.
    """
    if isinstance(network, nn.Module):
        return network
    if network not in list_models():
        raise ValueError(
            f"Expected argument `network` to be an nn.Module or a registered model name, one of"
            f" {list_models()}, but got {network!r}."
        )
    return create_model(network, num_classes=num_classes)
