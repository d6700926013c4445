"""Interactive windows: the tiles and time a lazy slice of ``chunkseg.predict`` costs, the time
to build the lazy dataset, and a whole-image lazy run, with the default chunks (tile cells on
the CPU) and with 1536 px chunks (the previous default).

- ``window``: a 4224 x 4224 uint8 image, the shipped U-Net through a counting wrapper (numpy
  kernel); a 100 x 100 window inside one tile cell (``y, x = 2100:2200``) and one across cell
  borders (``2000:2100``) are computed; the tiles run and the seconds are printed.
- ``build``: ``chunkseg.predict(image, "isbi2012-unet")`` on that image in a fresh process
  (the model's class names are known, so nothing runs).
- ``whole``: the whole 2048 x 2048 image (a Zarr store, 512 px chunks) computed lazily with
  logits and labels reduced to sums, after a warm-up run on 768^2; the 3x3 convolution of
  ``benchmarks/overhead.py`` and the U-Net.

Each measurement runs in a fresh subprocess. Prints a table and saves JSON to
``benchmarks/results/windows.json``.

    python benchmarks/windows.py
    python benchmarks/windows.py --repeat 3 --models conv3x3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def one(mode: str, model: str, chunk: str, image: str, window: int) -> dict:
    """One measurement in this process."""
    import dask

    import chunkseg
    from chunkseg.models.load import as_model

    chunks = None if chunk == "default" else int(chunk)
    out: dict = {"mode": mode, "model": model, "chunks": chunk}
    if mode == "build":
        img = np.random.default_rng(0).integers(0, 256, (4224, 4224), dtype=np.uint8)
        t = time.perf_counter()
        chunkseg.predict(img, "isbi2012-unet", chunks=chunks)
        out["seconds"] = time.perf_counter() - t
    elif mode == "window":
        img = np.random.default_rng(0).integers(0, 256, (4224, 4224), dtype=np.uint8)
        unet = as_model("isbi2012-unet")
        count, lock = [0], threading.Lock()

        def counting(batch):
            with lock:
                count[0] += batch.shape[0]
            return unet(batch)

        unet(np.zeros((1, 1, 256, 256), np.float32))  # load and warm up
        ds = chunkseg.predict(img, counting, kernel="numpy", chunks=chunks,
                              outputs="logits,labels", classes=["cell", "membrane"])
        t = time.perf_counter()
        ds.isel(y=slice(window, window + 100), x=slice(window, window + 100)).compute()
        out.update(seconds=time.perf_counter() - t, tiles=count[0], window=window)
    else:  # whole
        spec = {"unet": "isbi2012-unet", "conv3x3": "benchmarks.overhead:conv3x3"}[model]
        pred = as_model(spec)
        small = np.random.default_rng(0).integers(0, 256, (768, 768), dtype=np.uint8)
        ds = chunkseg.predict(small, pred, chunks=chunks, outputs="logits,labels")
        dask.compute(ds.logits.data.sum(), ds.labels.data.sum())  # warm-up
        t = time.perf_counter()
        ds = chunkseg.predict(image, pred, chunks=chunks, outputs="logits,labels")
        dask.compute(ds.logits.data.sum(), ds.labels.data.sum())
        out["seconds"] = time.perf_counter() - t
    return out


def _run(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one"] + args, capture_output=True,
                          text=True, cwd=ROOT, check=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", nargs=5, metavar=("MODE", "MODEL", "CHUNK", "IMAGE", "WINDOW"))
    p.add_argument("--models", default="conv3x3,unet")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "windows.json"))
    args = p.parse_args()
    if args.one:
        mode, model, chunk, image, window = args.one
        print(json.dumps(one(mode, model, chunk, image, int(window))))
        return
    import zarr

    tmp = Path(tempfile.mkdtemp(prefix="chunkseg-windows-"))
    image = str(tmp / "image.zarr")
    rng = np.random.default_rng(1)
    zarr.create_array(image, shape=(2048, 2048), chunks=(512, 512), dtype="uint8")[...] = \
        rng.integers(0, 256, (2048, 2048), dtype=np.uint8)
    rows = []
    for chunk in ("default", "1536"):
        for window in (2100, 2000):
            rows.append(_run(["window", "unet", chunk, image, str(window)]))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(_run(["build", "unet", chunk, image, "0"]))
        print(json.dumps(rows[-1]), flush=True)
        for model in args.models.split(","):
            for _ in range(args.repeat):
                rows.append(_run(["whole", model, chunk, image, "0"]))
                print(json.dumps(rows[-1]), flush=True)
    table = ["| measurement | chunks | tiles | seconds |", "|---|---|---|---|"]
    for r in rows:
        what = {"window": f"100 x 100 window at {r.get('window')}, U-Net, 4224^2",
                "build": "build the lazy dataset, U-Net, 4224^2",
                "whole": f"whole 2048^2 lazily, {r['model']}"}[r["mode"]]
        table.append(f"| {what} | {r['chunks']} | {r.get('tiles', '')} | {r['seconds']:.2f} |")
    print("\n".join(table))
    Path(args.out).write_text(json.dumps({"command": " ".join(["python"] + sys.argv),
                                          "rows": rows, "table": "\n".join(table)}, indent=1))


if __name__ == "__main__":
    main()
