"""Is the held-out pixel error a calibration gap? Sweep the decision offset on ISBI 2012.

For each model and test-time augmentation, run ``chunkseg.predict`` (tile 256, overlap 64,
gaussian window) on sections 20-24, then label a pixel membrane where
``logit_membrane - logit_cell > offset`` for offsets -1 .. 1 (0 is the argmax). If the best
offset scored much better than 0, a threshold chosen on validation would be worth shipping.

    python benchmarks/decision_offset.py
    python benchmarks/decision_offset.py --model isbi2012-unet --model runs/x/model.ts

Prints pixel error at offset 0 and at the best offset; saves JSON to
``benchmarks/results/decision_offset.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._isbi import load_sections  # noqa: E402
from benchmarks.heldout import tiled_sections  # noqa: E402
from chunkseg.evaluation.metrics import pixel_error  # noqa: E402

OFFSETS = tuple(float(o) for o in np.round(np.arange(-1.0, 1.001, 0.125), 3))


def margins(model: str, images: np.ndarray, tta: str | None) -> np.ndarray:
    """``(S, H, W)`` float32 membrane-minus-cell logits through the engine."""
    logits = tiled_sections(model, images, tta=tta, output="logits")
    return logits[:, 1] - logits[:, 0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="model (repeat); default the shipped U-Net")
    parser.add_argument("--tta", default="none,d4", help="comma-separated: none, flips, d4")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/decision_offset.json"))
    args = parser.parse_args(argv)
    images, truth = load_sections()
    rows = []
    for model in args.model or ["isbi2012-unet"]:
        for tta in args.tta.split(","):
            m = margins(model, images, None if tta == "none" else tta)
            errors = {o: round(pixel_error(truth, (m > o).astype(np.uint8)), 4) for o in OFFSETS}
            best = min(errors, key=errors.get)
            rows.append({"model": model, "tta": tta, "pixel_error_argmax": errors[0.0],
                         "best_offset": best, "pixel_error_best": errors[best],
                         "pixel_error_by_offset": errors})
            print(f"{model} tta={tta}: argmax {errors[0.0]:.4f}; best offset {best:+.3f}: "
                  f"{errors[best]:.4f}", flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("saved", args.out)


if __name__ == "__main__":
    main()
