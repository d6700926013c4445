"""Training losses by name: cross-entropy, Dice, Focal and weighted sums of them.

Cross-entropy is :class:`torch.nn.CrossEntropyLoss`; Dice and Focal are
segmentation-models-pytorch's ``DiceLoss`` and ``FocalLoss`` in ``"multiclass"`` mode (Milletari
et al. 2016, V-Net; Lin et al. 2017, *Focal loss for dense object detection*). Nothing is
re-implemented here but the weighted sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError

__all__ = ["LOSSES", "WeightedLoss", "build_loss"]

LOSSES = ("ce", "dice", "focal")
"""Names :func:`build_loss` knows."""


def _term(name: str, ignore_index: int, options: Mapping[str, Any]):
    import torch

    if name == "ce":
        return torch.nn.CrossEntropyLoss(ignore_index=ignore_index, **options)
    try:
        from segmentation_models_pytorch import losses
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"the {name!r} loss is segmentation-models-pytorch's ({err}); install it with "
            '`pip install "chunkseg[train]"`, or use the "ce" loss.') from None
    if name == "dice":
        return losses.DiceLoss("multiclass", ignore_index=ignore_index, **options)
    return losses.FocalLoss("multiclass", ignore_index=ignore_index, **options)


class WeightedLoss:
    """``sum_i weight_i * loss_i(logits, target)``.

    Parameters
    ----------
    terms : sequence of (str, float, callable)
        Name, weight and loss of each term.

    Notes
    -----
    ``last`` holds the value of each term at the last call (floats), for the metrics log.
    """

    def __init__(self, terms: Sequence[tuple[str, float, Any]]):
        self.terms = list(terms)
        self.last: dict[str, float] = {}

    def __call__(self, logits, target):
        total = 0.0
        for name, weight, loss in self.terms:
            value = loss(logits, target)
            self.last[name] = float(value.detach())
            total = total + weight * value
        return total

    def to(self, device) -> WeightedLoss:
        """Move the terms that hold tensors (torch modules) to ``device``; returns self."""
        for _, _, loss in self.terms:
            if hasattr(loss, "to"):
                loss.to(device)
        return self

    def __repr__(self) -> str:
        return " + ".join(f"{w:g} * {n}" for n, w, _ in self.terms)


def build_loss(terms: Sequence[Mapping[str, Any]] | str, *, ignore_index: int = -100
               ) -> WeightedLoss:
    """A loss, or a weighted sum of losses, by name.

    Parameters
    ----------
    terms : str or sequence of mapping
        ``"ce"``, ``"dice"``, ``"focal"``, ``"ce+dice"``, or a list such as
        ``[{"name": "ce", "weight": 1.0}, {"name": "focal", "weight": 0.5, "gamma": 2.0}]``
        (keys other than ``name`` and ``weight`` are options of that loss's class).
    ignore_index : int, default -100
        Target value that no term counts (torch's default for cross-entropy).

    Returns
    -------
    WeightedLoss
        Called as ``loss(logits (N, K, H, W) float, target (N, H, W) int64)`` -> scalar tensor.

    Raises
    ------
    TypeError
        If ``terms`` is not a str or a sequence of mappings.
    ValueError
        For an unknown loss name, an empty list or a negative weight.
    chunkseg.errors.MissingDependencyError
        For Dice or Focal without segmentation-models-pytorch.
    """
    if isinstance(terms, str):
        terms = [{"name": n.strip()} for n in terms.split("+")]
    if not isinstance(terms, Sequence) or not all(isinstance(t, Mapping) for t in terms):
        raise InvalidTypeError(
            f"`loss` must be a name such as 'ce+dice' or a list of {{name, weight, ...}} "
            f"tables. Got {terms!r}.")
    if not terms:
        raise InvalidValueError("`loss` must have at least one term. Got []; use e.g. 'ce'.")
    built = []
    for term in terms:
        options = dict(term)
        name = options.pop("name", None)
        weight = options.pop("weight", 1.0)
        if name not in LOSSES:
            raise InvalidValueError(f"`loss` names must be in {LOSSES}. Got {name!r}.")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise InvalidValueError(
                f"`loss` weights must be numbers >= 0. Got weight {weight!r} for {name!r}.")
        built.append((name, float(weight), _term(name, ignore_index, options)))
    return WeightedLoss(built)
