"""Held-out quality through the engine: a model on ISBI 2012 sections 20-24, run by
``chunkseg.predict`` (tiles, overlap, blending, optional test-time augmentation) and on each
whole section at once, with its CPU speed.

    python benchmarks/heldout.py                        # the shipped U-Net, every window
    python benchmarks/heldout.py --model runs/x/model.ts --tta none,flips,d4

Prints pixel error, membrane IoU and Dice per setting, the seconds each setting took for the 5
sections and the bare model's tiles/s (256^2 tiles, batch 8, torch's threads), and saves JSON
to ``benchmarks/results/heldout.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chunkseg  # noqa: E402
from benchmarks._isbi import DATA, VAL_SECTIONS, load_sections  # noqa: E402
from chunkseg.evaluation.metrics import dice, iou, pixel_error  # noqa: E402
from chunkseg.kernels.windows import WINDOWS  # noqa: E402


def scores(labels: np.ndarray, pred: np.ndarray) -> dict:
    return {"pixel_error": round(pixel_error(labels, pred), 4),
            "membrane_iou": round(float(iou(labels, pred, 2)[1]), 4),
            "membrane_dice": round(float(dice(labels, pred, 2)[1]), 4)}


def rate(adapter, x: np.ndarray, seconds: float) -> float:
    """Tiles per second of ``adapter`` called on the batch ``x`` for about ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        adapter(x)
        n += x.shape[0]
    return n / (time.perf_counter() - start)


def tiles_per_second(model, tile: int = 256, batch: int = 8, seconds: float = 10.0) -> float:
    """The bare model's throughput on float32 tiles (the adapter's normalisation included)."""
    adapter = chunkseg.as_model(model)
    x = np.random.default_rng(0).uniform(0, 255, (batch, 1, tile, tile)).astype(np.float32)
    adapter(x)  # warm-up
    return rate(adapter, x, seconds)


def whole_sections(model, images: np.ndarray) -> np.ndarray:
    """One pass per whole section (512 x 512: a single tile, no blending)."""
    return np.stack([chunkseg.predict(img, model, tile=img.shape[0], overlap=0,
                                      window="uniform", outputs="labels").labels.values
                     for img in images])


def tiled_sections(model, images: np.ndarray, *, tile: int = 256, overlap: int = 64,
                   window: str = "gaussian", tta: str | None = None, chunks: int | None = None,
                   output: str = "labels") -> np.ndarray:
    """``chunkseg.predict`` on each section (tiles, overlap, blending): the stacked ``labels``
    ``(S, H, W)`` or ``logits`` ``(S, K, H, W)``."""
    return np.stack([getattr(chunkseg.predict(img, model, tile=tile, overlap=overlap,
                                              window=window, chunks=chunks, outputs=output,
                                              tta=tta), output).values for img in images])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--model", default="isbi2012-unet")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--windows", default=",".join(WINDOWS))
    p.add_argument("--tta", default="none", help="comma-separated: none,flips,d4 (gaussian only)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heldout.json"))
    args = p.parse_args(argv)
    images, labels = load_sections(args.data, VAL_SECTIONS)
    stride = args.tile - args.overlap
    rows = []

    def run(window, tta):
        start = time.perf_counter()
        pred = tiled_sections(args.model, images, tile=args.tile, overlap=args.overlap,
                              window=window, chunks=2 * stride,
                              tta=None if tta == "none" else tta)
        rows.append({"inference": f"chunkseg, tile {args.tile}, overlap {args.overlap}, "
                                  f"{window}" + ("" if tta == "none" else f", tta {tta}"),
                     "window": window, "tta": tta, "tile": args.tile, "overlap": args.overlap,
                     **scores(labels, pred), "seconds": round(time.perf_counter() - start, 2)})

    start = time.perf_counter()
    rows.append({"inference": "whole section, one pass", **scores(labels, whole_sections(
        args.model, images)), "seconds": round(time.perf_counter() - start, 2)})
    for window in args.windows.split(","):
        run(window, "none")
    for tta in args.tta.split(","):
        if tta != "none":
            run("gaussian", tta)
    speed = round(tiles_per_second(args.model), 2)
    lines = ["| inference | pixel error | membrane IoU | membrane Dice | seconds (5 sections) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['inference']} | {r['pixel_error']:.4f} | {r['membrane_iou']:.4f} | "
              f"{r['membrane_dice']:.4f} | {r['seconds']:.1f} |" for r in rows]
    table = "\n".join(lines)
    print(f"ISBI 2012 sections {list(VAL_SECTIONS)}, model {args.model}")
    print(table)
    print(f"bare model: {speed} tiles/s (256^2, batch 8)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows, "table": table,
                                          "tiles_per_s": speed}, indent=2) + "\n")


if __name__ == "__main__":
    main()
