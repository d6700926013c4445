"""How stored label values become class indices for training: :class:`LabelSpec`.

:class:`chunkseg.training.patches.PatchDataset` reads labels through one of these: a stored
value is mapped to its class by ``label_map`` (values not in the map become ``ignore_index``),
or, without a map, the stored value is the class index itself and is checked against
``classes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._check import classes_arg, is_int, label_map_arg
from ..errors import InvalidTypeError, InvalidValueError

__all__ = ["LabelSpec"]

_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True, slots=True)
class LabelSpec:
    """Stored label values -> int64 class indices with ``ignore_index``.

    Parameters
    ----------
    label_map : mapping, optional
        Stored label value (a number) -> class index (an int ``>= 0``, not ``ignore_index``);
        stored values not in the map become ``ignore_index``. Without it the stored labels are
        the class indices.
    ignore_index : int, default -100
        Label of pixels not to train on; must fit in int32.
    classes : int or sequence of str, optional
        Number of classes ``K`` (or their names). Class indices must then be below ``K``.

    Raises
    ------
    TypeError
        For a wrong type of any field.
    ValueError
        For an empty ``label_map``, map values that are negative, ``ignore_index`` or not
        below ``K``, ``classes < 1``, an ``ignore_index`` outside int32 or inside ``[0, K)``.

    Examples
    --------
    >>> spec = LabelSpec(label_map={255: 0, 0: 1}, ignore_index=-1)
    >>> spec.to_classes(np.array([[255, 0, 7]]), 0).tolist()
    [[0, 1, -1]]
    """

    label_map: Mapping[float, int] | None = None
    ignore_index: int = -100
    classes: int | tuple[str, ...] | None = None
    _lut: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not is_int(self.ignore_index):
            raise InvalidTypeError(f"`ignore_index` must be an int. Got {self.ignore_index!r}.")
        if not _INT32.min <= self.ignore_index <= _INT32.max:
            raise InvalidValueError(
                f"`ignore_index` must fit in int32. Got {self.ignore_index}; use e.g. -100."
            )
        object.__setattr__(self, "ignore_index", int(self.ignore_index))
        self._check_label_map()
        self._check_classes()

    def _check_label_map(self) -> None:
        label_map = label_map_arg(self.label_map, real_keys=True)
        if label_map is None:
            return
        for key, value in label_map.items():
            if value == self.ignore_index:
                raise InvalidValueError(
                    f"`label_map` values must be class indices >= 0 other than ignore_index "
                    f"({self.ignore_index}). Got {key!r}: {value!r}; leave values to ignore "
                    "out of the map."
                )
        keys = np.array(sorted(label_map), dtype=np.float64)
        values = np.array([label_map[k] for k in sorted(label_map)], dtype=np.int64)
        object.__setattr__(self, "_lut", (keys, values))
        object.__setattr__(self, "label_map", label_map)

    def _check_classes(self) -> None:
        value = classes_arg(self.classes)
        if value is None:
            return
        k = value if isinstance(value, int) else len(value)
        if self.label_map is not None and max(self.label_map.values()) >= k:
            raise InvalidValueError(
                f"`label_map` values must be class indices below classes={k}. Got "
                f"{max(self.label_map.values())}."
            )
        if 0 <= self.ignore_index < k:
            raise InvalidValueError(
                f"`ignore_index` must not be a class index in [0, {k}). Got {self.ignore_index}."
            )
        object.__setattr__(self, "classes", value)

    @property
    def count(self) -> int | None:
        """``K`` given by ``classes`` (its length for names), or None."""
        if self.classes is None:
            return None
        return self.classes if isinstance(self.classes, int) else len(self.classes)

    @property
    def names(self) -> tuple[str, ...] | None:
        """The class names given by ``classes``, or None."""
        return self.classes if isinstance(self.classes, tuple) else None

    @property
    def num_classes(self) -> int | None:
        """``K`` from ``classes``, else ``max(label_map values) + 1``, else None (unknown)."""
        if self.classes is not None:
            return self.count
        if self.label_map is not None:
            return max(self.label_map.values()) + 1
        return None

    def to_classes(self, raw: np.ndarray, p: int) -> np.ndarray:
        """Stored labels -> int64 class indices with ``ignore_index``.

        Parameters
        ----------
        raw : ndarray
            Stored label values, any shape and numeric dtype.
        p : int
            Index of the pair they come from (named in the error message).

        Returns
        -------
        ndarray of int64
            Same shape as ``raw``.

        Raises
        ------
        ValueError
            Without ``label_map``: for a value other than ``ignore_index`` that is negative or,
            with ``classes``, not below ``K``.
        """
        if self._lut is not None:
            keys, values = self._lut
            flat = raw.astype(np.float64, copy=False)
            idx = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
            out = np.where(keys[idx] == flat, values[idx], np.int64(self.ignore_index))
            return out.astype(np.int64, copy=False)
        k = self.count
        out = raw.astype(np.int64)
        bad = (out != self.ignore_index) & ((out < 0) if k is None else ((out < 0) | (out >= k)))
        if bad.any():
            value = int(out[bad].flat[0])
            rule = ">= 0" if k is None else f"in [0, {k})"
            raise InvalidValueError(
                f"`pairs[{p}]` labels must be class indices {rule} or ignore_index "
                f"({self.ignore_index}). Got {value}. Pass `label_map=` to map stored values "
                "to classes, or `classes=`/`ignore_index=` to match the labels."
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``LabelSpec.from_dict(s.to_dict()) == s``."""
        return {"label_map": None if self.label_map is None else dict(self.label_map),
                "ignore_index": self.ignore_index,
                "classes": list(self.classes) if isinstance(self.classes, tuple) else self.classes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelSpec:
        """Build from :meth:`to_dict`'s form (``classes`` as an int or a list of names).

        Raises
        ------
        TypeError, ValueError
            For a non-mapping, unknown keys, or bad values (as the constructor).
        """
        if not isinstance(data, Mapping):
            raise InvalidTypeError(
                f"`data` must be a mapping of LabelSpec fields. Got {type(data).__name__}.")
        known = {"label_map", "ignore_index", "classes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidValueError(
                f"`data` has unknown keys {unknown}. Known keys: {sorted(known)}.")
        d = dict(data)
        if isinstance(d.get("classes"), list):
            d["classes"] = tuple(d["classes"])
        return cls(**d)
