"""Held-out quality through the engine: the shipped U-Net on ISBI 2012 sections 20-24, run by
``chunkseg.predict`` (tiles, overlap, blending) rather than on each whole section at once.

    python benchmarks/heldout.py                  # tile 256, overlap 64, every window
    python benchmarks/heldout.py --tile 128 --overlap 32

Prints pixel error, membrane IoU and Dice per setting, with the whole-section numbers of the
model card (``chunkseg/data/isbi2012_unet.json``) beside them, and saves JSON to
``benchmarks/results/heldout.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import chunkseg
from chunkseg.metrics import dice, iou, pixel_error
from chunkseg.train import DEFAULT_VAL_SECTIONS, load_sections
from chunkseg.windows import WINDOWS

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "data" / "isbi2012" / "train"))
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heldout.json"))
    args = p.parse_args(argv)
    images, labels = load_sections(args.data, DEFAULT_VAL_SECTIONS)
    stride = args.tile - args.overlap
    rows = []
    for window in WINDOWS:
        pred = np.stack([
            chunkseg.predict(img, "isbi2012-unet", tile=args.tile, overlap=args.overlap,
                             window=window, chunks=2 * stride, outputs="labels").labels.values
            for img in images
        ])
        rows.append({"window": window, "tile": args.tile, "overlap": args.overlap,
                     "pixel_error": round(pixel_error(labels, pred), 4),
                     "membrane_iou": round(float(iou(labels, pred, 2)[1]), 4),
                     "membrane_dice": round(float(dice(labels, pred, 2)[1]), 4)})
    record = json.loads((ROOT / "chunkseg" / "data" / "isbi2012_unet.json").read_text())
    whole = record["held_out"]
    lines = ["| inference | pixel error | membrane IoU | membrane Dice |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| chunkseg, tile {r['tile']}, overlap {r['overlap']}, {r['window']} | "
                     f"{r['pixel_error']:.4f} | {r['membrane_iou']:.4f} | {r['membrane_dice']:.4f} |")
    table = "\n".join(lines)
    print(f"ISBI 2012 sections {list(DEFAULT_VAL_SECTIONS)} (held out of training)")
    print(table)
    print(f"whole sections in one pass (model card): {json.dumps(whole)[:300]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
