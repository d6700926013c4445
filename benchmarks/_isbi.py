"""ISBI 2012 sections for the held-out benchmarks (the project's copy in ``data/isbi2012``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "isbi2012" / "train"
VAL_SECTIONS = (20, 21, 22, 23, 24)
"""Sections held out of training (and used for the choice of the best epoch)."""


def load_sections(root=DATA, sections=VAL_SECTIONS) -> tuple[np.ndarray, np.ndarray]:
    """``(S, 512, 512)`` uint8 images and class indices (1 = membrane: stored 0; 0 = cell)."""
    root = Path(root)
    images = np.stack([np.asarray(Image.open(root / "image" / f"{s:02d}.png")) for s in sections])
    stored = np.stack([np.asarray(Image.open(root / "label" / f"{s:02d}.png")) for s in sections])
    return images, (stored == 0).astype(np.uint8)
