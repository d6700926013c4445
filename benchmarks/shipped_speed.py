"""CPU speed of the shipped U-Net against the one shipped at an earlier commit, in one process.

    python benchmarks/shipped_speed.py --previous 47887fc

Both networks run as the built-in model does (eager ``torch.nn.Module`` through chunkseg's
TorchAdapter with the ISBI normalisation), on float32 batches of 8 tiles of 256^2, torch's
default threads, interleaved for ``--rounds`` rounds of ``--seconds`` each; the best round of
each is reported as tiles/s. Saves ``benchmarks/results/shipped_speed.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import chunkseg  # noqa: E402
from benchmarks.heldout import rate  # noqa: E402
from chunkseg.models.load import BUILTIN_MODELS  # noqa: E402
from chunkseg.models.unet import UNet, pretrained  # noqa: E402


def _previous(rev: str) -> UNet:
    blob = subprocess.run(["git", "show", f"{rev}:chunkseg/data/isbi2012_unet.pt"], cwd=ROOT,
                          check=True, capture_output=True).stdout
    record = json.loads(subprocess.run(
        ["git", "show", f"{rev}:chunkseg/data/isbi2012_unet.json"], cwd=ROOT, check=True,
        capture_output=True).stdout)
    net = UNet(**record.get("config", {}).get("model_options", {}))
    net.load_state_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))
    return net.eval()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--previous", default="47887fc", help="git revision of the earlier weights")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "shipped_speed.json"))
    args = p.parse_args(argv)
    norm = BUILTIN_MODELS["isbi2012-unet"][1]()
    nets = {"previous": _previous(args.previous), "current": pretrained()}
    adapters = {k: chunkseg.as_model(n, normalization=norm) for k, n in nets.items()}
    x = np.random.default_rng(0).uniform(0, 255, (8, 1, 256, 256)).astype(np.float32)
    for a in adapters.values():
        a(x)  # warm-up
    rates = {k: [] for k in adapters}
    for _ in range(args.rounds):
        for k, a in adapters.items():
            rates[k].append(rate(a, x, args.seconds))
    best = {k: round(max(v), 2) for k, v in rates.items()}
    result = {"previous_rev": args.previous, "tiles_per_s": best,
              "rounds": {k: [round(r, 2) for r in v] for k, v in rates.items()},
              "current_over_previous": round(best["current"] / best["previous"], 3),
              "parameters": {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()},
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
