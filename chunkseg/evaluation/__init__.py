"""Evaluation: segmentation metrics from a confusion matrix, :func:`evaluate` of a written
output against ground truth (out of core), and the seam report of the tiled engine.
"""

from __future__ import annotations

from .semantic import evaluate

__all__ = ["evaluate"]
