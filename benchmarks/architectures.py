"""U-Net vs DeepLabV3+ vs SegFormer on ISBI 2012, trained with the same recipe and budget.

    python benchmarks/architectures.py --epochs 50      # 50 epochs x 20 iterations each

Each architecture is trained by ``chunkseg.training.train`` from ``configs/isbi2012_unet.toml`` with
only ``model``/``model_options``, ``epochs``, ``val_every`` and ``out`` changed (same data,
patches, augmentation, loss, optimiser, schedule, seed), the best epoch chosen on sections
20-24; then scored on sections 20-24 through ``chunkseg.predict`` (tile 256, overlap 64,
gaussian), with its parameter count, training time and the bare model's CPU tiles/s. Saves
``benchmarks/results/architectures.json``.
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
from benchmarks._isbi import VAL_SECTIONS, load_sections  # noqa: E402
from benchmarks.heldout import scores, tiles_per_second  # noqa: E402
from chunkseg.models.architectures import count_parameters  # noqa: E402
from chunkseg.training.config import TrainConfig  # noqa: E402
from chunkseg.training.train import train  # noqa: E402

ARCHS = {
    "unet": {"base_channels": 16, "depth": 4},
    "deeplabv3plus": {"encoder_name": "resnet18"},
    "segformer": {"encoder_name": "mit_b0"},
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "isbi2012_unet.toml"))
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--models", default=",".join(ARCHS))
    p.add_argument("--runs", default=str(ROOT / "runs" / "architectures"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "architectures.json"))
    args = p.parse_args(argv)
    base = TrainConfig.from_file(args.config).to_dict()
    images, labels = load_sections(sections=VAL_SECTIONS)
    rows = []
    for name in args.models.split(","):
        cfg = TrainConfig.from_dict({**base, "model": name, "model_options": ARCHS[name],
                                     "epochs": args.epochs, "val_every": 5,
                                     "out": str(Path(args.runs) / name), "export": ["torchscript"]})
        start = time.perf_counter()
        result = train(cfg, progress=False, overwrite=True)
        train_s = time.perf_counter() - start
        ts = str(result.files["torchscript"])  # normalisation built in
        pred = np.stack([chunkseg.predict(img, ts, tile=256, overlap=64, window="gaussian",
                                          chunks=384, outputs="labels").labels.values
                         for img in images])
        rows.append({"model": name, "options": ARCHS[name], **scores(labels, pred),
                     "parameters": count_parameters(result.model),
                     "best_epoch": result.best.get("epoch"), "epochs": args.epochs,
                     "iterations": result.history[-1]["iterations"],
                     "train_s": round(train_s, 1),
                     "tiles_per_s": round(tiles_per_second(ts), 2)})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| model | pixel error | membrane IoU | membrane Dice | parameters | CPU tiles/s "
             "(256^2) | training (s) | best epoch |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} {r['options']} | {r['pixel_error']:.4f} | {r['membrane_iou']:.4f} "
              f"| {r['membrane_dice']:.4f} | {r['parameters']:,} | {r['tiles_per_s']:.1f} | "
              f"{r['train_s']:.0f} | {r['best_epoch']}/{r['epochs']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "table": table,
                                          "config": args.config}, indent=2) + "\n")


if __name__ == "__main__":
    main()
