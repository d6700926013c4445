"""Evaluation: segmentation metrics from a confusion matrix, :func:`evaluate` of a written
output against ground truth (out of core), :func:`evaluate_instances` of its objects (ISBI 2012
V_rand / V_info, adapted Rand error, VI, object F1, from a contingency table accumulated out of
core), and the seam report of the tiled engine.
"""

from __future__ import annotations

from .instances import evaluate_instances
from .semantic import evaluate

__all__ = ["evaluate", "evaluate_instances"]
