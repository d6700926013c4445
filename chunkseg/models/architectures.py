"""Segmentation networks to train by name: chunkseg's U-Net, DeepLabV3+ and SegFormer.

DeepLabV3+ and SegFormer come from segmentation-models-pytorch (``pip install
"chunkseg[train]"``), always with ``encoder_weights=None``: chunkseg downloads nothing, every
network starts from a random initialisation.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidValueError, MissingDependencyError

__all__ = ["ARCHITECTURES", "build_model", "count_parameters", "size_multiple"]

ARCHITECTURES = ("unet", "deeplabv3plus", "segformer")
"""Names :func:`build_model` knows."""

_SMP = {  # name -> (smp class, default options)
    "deeplabv3plus": ("DeepLabV3Plus", {"encoder_name": "resnet18"}),
    "segformer": ("Segformer", {"encoder_name": "mit_b0"}),
}


def _smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"DeepLabV3+ and SegFormer need segmentation-models-pytorch ({err}); install it with "
            '`pip install "chunkseg[train]"`, or train architecture "unet".') from None
    return smp


def build_model(name: str, *, in_channels: int = 1, classes: int = 2, **options: Any):
    """A randomly initialised segmentation network.

    Parameters
    ----------
    name : {"unet", "deeplabv3plus", "segformer"}
        ``"unet"``: :class:`chunkseg.models.unet.UNet` (options ``base_channels``, ``depth``).
        ``"deeplabv3plus"``: ``segmentation_models_pytorch.DeepLabV3Plus`` (Chen et al., ECCV
        2018), default ``encoder_name="resnet18"``. ``"segformer"``:
        ``segmentation_models_pytorch.Segformer`` (Xie et al., NeurIPS 2021), default
        ``encoder_name="mit_b0"``. Other keyword options go to the class.
    in_channels : int, default 1
    classes : int, default 2
    **options
        Passed to the network's constructor. ``encoder_weights`` must be None (the default
        here): pretrained weights cannot be downloaded.

    Returns
    -------
    torch.nn.Module
        ``(N, in_channels, H, W)`` float32 -> ``(N, classes, H, W)`` logits, in train mode.
        ``H`` and ``W`` must be multiples of :func:`size_multiple`.

    Raises
    ------
    ValueError
        For an unknown ``name`` or ``encoder_weights`` other than None.
    chunkseg.errors.MissingDependencyError
        For an smp architecture without segmentation-models-pytorch.
    """
    if name == "unet":
        from .unet import UNet  # torch

        return UNet(in_channels=in_channels, classes=classes, **options)
    if name not in _SMP:
        raise InvalidValueError(
            f"`model.name` must be one of {ARCHITECTURES}. Got {name!r}.")
    if options.get("encoder_weights") is not None:
        raise InvalidValueError(
            f"`encoder_weights` must be None (nothing can be downloaded; the network starts "
            f"from random weights). Got {options['encoder_weights']!r}; drop it.")
    cls, defaults = _SMP[name]
    kwargs = {**defaults, **options, "encoder_weights": None}
    return getattr(_smp(), cls)(in_channels=in_channels, classes=classes, **kwargs)


def size_multiple(model) -> int:
    """The number tile sides must be a multiple of for ``model`` (its total down-sampling).

    Parameters
    ----------
    model : torch.nn.Module
        From :func:`build_model` (or any module with an ``encoder.output_stride`` or a
        ``multiple`` attribute); 1 when unknown.

    Returns
    -------
    int
    """
    multiple = getattr(model, "multiple", None)
    if multiple is None:
        encoder = getattr(model, "encoder", None)
        multiple = getattr(encoder, "output_stride", None) or 32 if encoder is not None else 1
    return int(multiple)


def count_parameters(model) -> int:
    """Number of trainable parameters of a torch module."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
