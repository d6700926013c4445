"""Make docs/blending.png: the windows and their overlap-add sums (the README's figure)."""

from pathlib import Path

from chunkseg.viz import plot_windows

out = Path(__file__).resolve().parent.parent / "docs" / "blending.png"
print(plot_windows(out, tile=256, overlap=64))
