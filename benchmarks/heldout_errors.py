"""Where are the held-out errors? Pixel errors of a model on ISBI 2012 sections 20-24 by
their distance to the nearest label edge, and the error of the labels shifted by one pixel.

Runs ``chunkseg.predict`` (tile 256, overlap 64, gaussian window, argmax labels) on each
section, then measures, for every misclassified pixel, its Euclidean distance to the nearest
pixel of the other class in the ground truth (``scipy.ndimage.distance_transform_edt``: 1 for
a pixel on a label edge). If most errors sit on the edges, the model draws the right
membranes a pixel too thick or thin in places, and the pixel error left by a better model is
bounded by how exactly the annotators drew them. The one-pixel shifts check that image and
labels are aligned (a systematic shift would score better than none).

    python benchmarks/heldout_errors.py                       # the shipped U-Net
    python benchmarks/heldout_errors.py --model runs/x/model.ts

Prints the table and saves JSON to ``benchmarks/results/heldout_errors.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._isbi import VAL_SECTIONS, load_sections  # noqa: E402
from benchmarks.heldout import tiled_sections  # noqa: E402
from chunkseg.evaluation.metrics import pixel_error  # noqa: E402

DISTANCES = (1.0, 1.5, 2.0, 3.0, 5.0)


def edge_distance(labels: np.ndarray) -> np.ndarray:
    """``(S, H, W)`` float: each pixel's distance to the nearest pixel of another class."""
    return np.stack([np.where(lab == 1, ndi.distance_transform_edt(lab == 1),
                              ndi.distance_transform_edt(lab != 1)) for lab in labels])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="isbi2012-unet")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/heldout_errors.json"))
    args = parser.parse_args(argv)
    images, truth = load_sections(sections=VAL_SECTIONS)
    pred = tiled_sections(args.model, images)
    wrong = pred != truth
    dist = edge_distance(truth)
    by_distance = {str(d): {"share_of_errors": round(float((wrong & (dist <= d)).sum()
                                                           / wrong.sum()), 4),
                            "pixel_error_beyond": round(float((wrong & (dist > d)).mean()), 4)}
                   for d in DISTANCES}
    # shifted predictions, scored on the interior (np.roll wraps 1 px around the border)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    shifts = {f"{dy:+d},{dx:+d}": round(pixel_error(truth[inner], np.roll(
        pred, (dy, dx), axis=(1, 2))[inner]), 4) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    result = {"model": args.model, "sections": list(VAL_SECTIONS),
              "pixel_error": round(pixel_error(truth, pred), 4),
              "missed_membrane_share": round(float((wrong & (truth == 1)).sum() / wrong.sum()), 4),
              "errors_by_edge_distance_px": by_distance, "pixel_error_shifted_dy_dx": shifts}
    print(f"{args.model}: pixel error {result['pixel_error']:.4f}, "
          f"{result['missed_membrane_share']:.0%} of the errors are missed membrane")
    print("distance to a label edge (px) | share of the errors within | pixel error beyond")
    for d, row in by_distance.items():
        print(f"{d:>5} | {row['share_of_errors']:.3f} | {row['pixel_error_beyond']:.4f}")
    print("prediction shifted by (dy, dx):", shifts)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("saved", args.out)


if __name__ == "__main__":
    main()
