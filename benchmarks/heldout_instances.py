"""Instances on held-out ISBI 2012 sections 20-24: adapted Rand error and variation of information.

The objects ISBI 2012 scored are the cells: connected components of the cell-interior class
(class 0) separated by membrane. For each held-out section the ground truth's instances are the
connected components of its cell pixels (label PNG 255); the shipped U-Net's are made two ways:

- *whole section*: the model on the 512 x 512 section in one pass (tile 512, no overlap), then
  :func:`scipy.ndimage.label` of class 0;
- *through chunkseg*: ``predict_to_zarr`` (tile 256, overlap 64, gaussian, 384 px chunks, so
  the section is cut into 2 x 2 chunks) and ``chunkseg.label(out, cls=0)``.

Scores from :func:`skimage.metrics.adapted_rand_error` (membrane pixels of the ground truth
ignored, as in the challenge) and :func:`skimage.metrics.variation_of_information` (split and
merge parts), averaged over the five sections.

    python benchmarks/heldout_instances.py

Saves JSON to benchmarks/results/heldout_instances.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chunkseg  # noqa: E402
from benchmarks._isbi import VAL_SECTIONS as DEFAULT_VAL_SECTIONS  # noqa: E402
from benchmarks._isbi import load_sections  # noqa: E402


def scores(gt: np.ndarray, pred: np.ndarray) -> dict:
    are, precision, recall = adapted_rand_error(gt, pred)
    split, merge = variation_of_information(gt, pred, ignore_labels=(0,))
    return {"adapted_rand_error": float(are), "rand_precision": float(precision),
            "rand_recall": float(recall), "vi_split": float(split), "vi_merge": float(merge),
            "vi": float(split + merge), "objects": int(pred.max())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / "data" / "isbi2012" / "train"))
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk", type=int, default=384)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                        "heldout_instances.json"))
    args = p.parse_args(argv)
    images, labels = load_sections(args.data, DEFAULT_VAL_SECTIONS)  # labels: 1 = membrane
    per = {"whole section": [], "chunkseg": []}
    gt_objects = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (img, lab) in enumerate(zip(images, labels)):
            gt, n_gt = ndimage.label(lab == 0)
            gt_objects.append(int(n_gt))
            whole = chunkseg.predict(img, "isbi2012-unet", tile=img.shape, overlap=0,
                                     chunks=img.shape, outputs="labels").labels.values
            per["whole section"].append(scores(gt, ndimage.label(whole == 0)[0]))
            out = str(Path(tmp) / f"section-{i}.zarr")
            chunkseg.predict_to_zarr(img, "isbi2012-unet", out, tile=args.tile,
                                     overlap=args.overlap, chunks=args.chunk, outputs="labels")
            ids = chunkseg.label(out, cls=0).values
            per["chunkseg"].append(scores(gt, ids))
    rows = []
    for how, items in per.items():
        row = {"inference": how}
        for key in items[0]:
            row[key] = float(np.mean([it[key] for it in items]))
        rows.append(row)
    lines = ["| inference | adapted Rand error | Rand precision | Rand recall | VI split | "
             "VI merge | VI | objects per section |", "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['inference']} | {r['adapted_rand_error']:.4f} | "
                     f"{r['rand_precision']:.4f} | {r['rand_recall']:.4f} | {r['vi_split']:.3f} | "
                     f"{r['vi_merge']:.3f} | {r['vi']:.3f} | {r['objects']:.1f} |")
    table = "\n".join(lines)
    print(f"ISBI 2012 sections {list(DEFAULT_VAL_SECTIONS)} (held out); ground truth: "
          f"{np.mean(gt_objects):.1f} cells per section")
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "command": "python benchmarks/heldout_instances.py",
        "settings": {"tile": args.tile, "overlap": args.overlap, "chunk": args.chunk},
        "ground_truth_objects_per_section": gt_objects, "rows": rows,
        "per_section": per, "table": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
