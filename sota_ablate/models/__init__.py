"""The model registry: fastai's XResNet family (Bag of Tricks, He et al. 2019), built by name.

``create_model("xresnet50", n_out=10)`` is the chapter's ``xresnet50(n_out=dls.c)`` (fastbook chapter 7).
Every module of this package is imported (and its ``@MODELS.register`` decorators run) the first time the
registry is asked for a model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sota_ablate.registry import Registry

MODELS: Registry[Any] = Registry("model", discover=__name__)


def model_names() -> list[str]:
    """The sorted names of all registered models."""
    return MODELS.names()


def create_model(name: str, n_out: int = 10, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered model name, e.g. ``"xresnet50"``.
        n_out: number of output logits (the chapter's executed notebook used 1000; ``dls.c`` is 10).
        **kwargs: extra keyword arguments for the model factory (e.g. ``p``, ``c_in``); those that are
            ``None`` are dropped so the factory's defaults apply.

    Returns:
        The freshly initialised model.

    Raises:
        UnknownNameError: ``name`` is not registered; the message lists the known models.
    """
    factory = MODELS.get(name)
    return factory(n_out=n_out, **{k: v for k, v in kwargs.items() if v is not None})


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters (elements of tensors with ``requires_grad``).

    Args:
        model: any module.

    Returns:
        The total number of trainable scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
