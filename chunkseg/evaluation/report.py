""":func:`chunkseg.evaluate`'s result as a table (:func:`format_report`) and as plain JSON
types (:func:`to_json`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["format_report", "to_json"]


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`evaluate`'s result in plain JSON types: arrays as lists, NaN as None (null)."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value.tolist()]
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, float | np.floating):
            return None if math.isnan(value) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        return value

    return {key: plain(value) for key, value in result.items()}


def _score(value: float) -> str:
    return "     n/a" if math.isnan(value) else f"{value:8.4f}"


_MAX_ROWS = 20


def format_report(result: Mapping[str, Any]) -> str:
    """:func:`evaluate`'s result as a readable table: one row per class (IoU, Dice, pixels in
    the ground truth and in the prediction; with more than 20 classes, only the classes
    present), then mean IoU and Dice, accuracy, pixel error."""
    names = [str(n) for n in result["classes"]]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [
        f"pred   {result['pred']}",
        f"truth  {result['truth']}",
        f"pixels {result['pixels']} counted, {result['excluded']} excluded (ignore, mask) of "
        f"{result['shape'][0]} x {result['shape'][1]}",
        "",
        f"{'class':<{width}}{'IoU':>8}  {'Dice':>8}  {'GT pixels':>14}  {'pred pixels':>14}",
    ]
    absent = [n for i, n in enumerate(names) if math.isnan(result["iou"][i])]
    many = len(names) > _MAX_ROWS  # then the rows of absent classes are left out
    for i, name in enumerate(names):
        if many and name in absent:
            continue
        lines.append(f"{name:<{width}}{_score(result['iou'][i])}  {_score(result['dice'][i])}  "
                     f"{int(result['pixels_true'][i]):>14}  {int(result['pixels_pred'][i]):>14}")
    note = ""
    if absent:
        listed = ", ".join(absent) if len(absent) <= 10 else f"{len(absent)} classes"
        note = f"  (n/a: absent from both, not in the means: {listed})"
    lines += [
        "",
        f"{'mean IoU':<{width}}{_score(result['mean_iou'])}{note}",
        f"{'mean Dice':<{width}}{_score(result['mean_dice'])}",
        f"{'accuracy':<{width}}{_score(result['accuracy'])}",
        f"{'pixel error':<{width}}{_score(result['pixel_error'])}",
    ]
    return "\n".join(lines)
