"""Figures of a written output and of the tiling: the arrays they draw and the drawings."""

from __future__ import annotations

from .core import figures

__all__ = ["figures"]
