"""Per-tile cost of the accumulate kernel itself: ``blend.accumulate_block`` on one chunk's
block, minus the time spent inside the model calls (measured around each call), so that the
model's own speed, which varies a lot on a shared CPU, does not enter the figure.

    python benchmarks/kernel.py                       # 3x3 conv, chunk 1536, tile 256, overlap 64
    python benchmarks/kernel.py --chunk 768 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chunkseg import blend  # noqa: E402
from chunkseg.kernels.windows import get_window  # noqa: E402
from chunkseg.models.load import as_model  # noqa: E402


class TimedModel:
    """Wraps a model and adds up the wall time spent inside its calls."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0

    def __call__(self, batch):
        t0 = time.perf_counter()
        out = self.model(batch)
        self.seconds += time.perf_counter() - t0
        return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chunk", type=int, default=1536)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    size = args.chunk + args.overlap
    block = np.random.default_rng(0).integers(0, 256, (1, size, size)).astype(np.uint8)
    window = get_window("gaussian", args.tile, args.overlap)
    n = (args.chunk // (args.tile - args.overlap)) ** 2
    # a model that costs next to nothing, so the kernel's own work dominates
    logits = np.zeros((args.batch_size, args.classes, args.tile, args.tile), np.float32)
    model = TimedModel(as_model(lambda b: logits[: len(b)]))
    overheads = []
    for _ in range(args.repeat):
        model.seconds = 0.0
        t0 = time.perf_counter()
        blend.accumulate_block(block, model, window, (args.overlap, args.overlap),
                               batch_size=args.batch_size)
        overheads.append(time.perf_counter() - t0 - model.seconds)
    best = min(overheads)
    print(f"{n} tiles of {args.tile}^2, {args.classes} classes, in a {size}^2 block, batch "
          f"{args.batch_size}: accumulate_block outside the model, best of {args.repeat}: "
          f"{best * 1000:.1f} ms = {best / n * 1000:.3f} ms per tile "
          f"(all runs: {', '.join(f'{o / n * 1000:.3f}' for o in overheads)} ms per tile)")


if __name__ == "__main__":
    main()
