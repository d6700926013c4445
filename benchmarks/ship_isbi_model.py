"""Make a finished ``chunkseg train`` run of the ISBI config the shipped ``isbi2012-unet``.

    chunkseg train configs/isbi2012_unet.toml
    python benchmarks/ship_isbi_model.py runs/isbi2012_unet

Copies the run's ``model.pt`` (the best epoch's state_dict, float32) to
``chunkseg/data/isbi2012_unet.pt`` and writes ``chunkseg/data/isbi2012_unet.json``: the run's
record (config, with ``model_options``, which :func:`chunkseg.models.unet.pretrained` builds the network
from; best epoch; environment) and ``held_out``, the whole-section scores on sections 20-24
measured here (one pass per 512 x 512 section, argmax), beside the trivial "cell everywhere".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chunkseg  # noqa: E402
from benchmarks._isbi import VAL_SECTIONS, load_sections  # noqa: E402
from benchmarks.heldout import whole_sections  # noqa: E402
from chunkseg.evaluation.metrics import dice, iou, pixel_error  # noqa: E402
from chunkseg.models.spec import Normalization  # noqa: E402
from chunkseg.models.unet import ISBI_MEAN, ISBI_SCALE, ISBI_STD, WEIGHTS_PATH, UNet  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="the run folder (holds train.json and model.pt)")
    args = p.parse_args(argv)
    run = Path(args.run)
    record = json.loads((run / "train.json").read_text())
    cfg = record["config"]
    if cfg["model"] != "unet" or record.get("status") != "done":
        raise SystemExit(f"{run} is not a finished U-Net run")
    net = UNet(**cfg["model_options"])
    net.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    images, labels = load_sections(sections=VAL_SECTIONS)
    norm = Normalization(scale=ISBI_SCALE, mean=(ISBI_MEAN,), std=(ISBI_STD,))
    pred = whole_sections(chunkseg.as_model(net, normalization=norm), images)
    train_images, _ = load_sections(sections=range(20))
    scaled = train_images.astype(np.float64) * ISBI_SCALE
    measured = {"scale": ISBI_SCALE, "mean": ISBI_MEAN, "std": ISBI_STD,
                "measured_train_mean": float(scaled.mean()),
                "measured_train_std": float(scaled.std())}
    held = {"pixel_error": pixel_error(labels, pred),
            "membrane_iou": float(iou(labels, pred, 2)[1]),
            "membrane_dice": float(dice(labels, pred, 2)[1]),
            "cell_iou": float(iou(labels, pred, 2)[0]),
            "trivial_pixel_error": pixel_error(labels, np.zeros_like(labels)),
            "per_section_pixel_error": {str(s): pixel_error(lab, prd) for s, lab, prd
                                        in zip(VAL_SECTIONS, labels, pred)}}
    x0 = torch.randn(1, 1, 384, 384, requires_grad=True)  # receptive field: input gradients
    net(x0)[0, 1, 192, 192].backward()
    hit = (x0.grad[0, 0].abs() > 0).nonzero()
    field = int((hit.max(0).values - hit.min(0).values + 1).max())
    shutil.copyfile(run / "model.pt", WEIGHTS_PATH)
    out = {**record, "command": "chunkseg train configs/isbi2012_unet.toml",
           "parameters": sum(p.numel() for p in net.parameters()),
           "weights_bytes": WEIGHTS_PATH.stat().st_size, "receptive_field_px": field,
           "normalisation": measured,
           "held_out": held}
    WEIGHTS_PATH.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(held, indent=1))


if __name__ == "__main__":
    main()
