"""Engine overhead: chunkseg (Zarr in, Zarr out) against the bare model on the same tiles.

For each model (the shipped U-Net and a cheap 3x3 convolution, both PyTorch on the CPU) and a
4096 x 4096 uint8 image (a mosaic of ISBI 2012 sections in a chunked Zarr store):

- ``bare``: the model adapter called on exactly the tiles chunkseg runs (same count, same batch
  size), on batches already in memory: the floor any tiled engine has to pay;
- ``chunkseg``: ``predict_to_zarr`` reading the Zarr store and writing logits (float32) and
  labels, zstd-compressed;
- ``no-write``: ``predict`` reading the Zarr store, with logits and labels reduced to a sum
  instead of written: the tiling, blending and scheduling cost without the output I/O.

The bare model is warmed up by one call before its timing; chunkseg likewise by one small run
(768^2) in the same process, so the model's loading and torch's per-thread set-up are out of
both.

Each run happens in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own. Prints a
table and saves JSON to ``benchmarks/results/overhead.json``.

    python benchmarks/overhead.py            # both models, 4096^2
    python benchmarks/overhead.py --size 2048 --models conv3x3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def conv3x3(device: str = "cpu"):
    """The cheap model: one 3x3 convolution, 1 channel -> 2 classes, fixed weights."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 2, kernel_size=3, padding=1).to(device).eval()


MODELS = {"unet": "isbi2012-unet", "conv3x3": "benchmarks.overhead:conv3x3"}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(mode: str, model: str, image: str, tile: int, overlap: int, chunk: int,
            batch_size: int, threads: int) -> dict:
    """One measurement in this process."""
    import dask

    import chunkseg
    from chunkseg.models.load import as_model
    from chunkseg.plan import plan_tiles

    arr = chunkseg.open_image(image)
    plan = plan_tiles(arr.shape, tile, overlap, chunk)
    spec = MODELS[model]
    result = {"mode": mode, "model": model, "tiles": plan.n_tiles, "chunks": plan.n_chunks,
              "image": list(plan.image_shape), "tile": tile, "overlap": overlap,
              "chunk": chunk, "batch_size": batch_size, "threads": threads}
    predictor = as_model(spec)
    if mode == "bare":
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, (batch_size, 1, tile, tile)).astype(np.float32)
        predictor(batch[:1])  # load and warm up, as chunkseg's probe does
        t0 = time.perf_counter()
        done = 0
        while done < plan.n_tiles:
            n = min(batch_size, plan.n_tiles - done)
            predictor(batch[:n])
            done += n
        result["seconds"] = time.perf_counter() - t0
    elif mode == "no-write":
        _warm_up(chunkseg, predictor, tile, overlap, batch_size, threads, write=False)
        t0 = time.perf_counter()
        with dask.config.set(num_workers=threads):
            ds = chunkseg.predict(image, predictor, tile=tile, overlap=overlap, chunks=chunk,
                                  batch_size=batch_size, outputs="logits,labels")
            dask.compute(ds.logits.data.sum(), ds.labels.data.sum())
        result["seconds"] = time.perf_counter() - t0
    else:
        _warm_up(chunkseg, predictor, tile, overlap, batch_size, threads, write=True)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            with dask.config.set(num_workers=threads):
                chunkseg.predict_to_zarr(image, predictor, os.path.join(tmp, "out.zarr"),
                                         tile=tile, overlap=overlap, chunks=chunk,
                                         batch_size=batch_size, outputs="logits,labels")
            result["seconds"] = time.perf_counter() - t0
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


def _warm_up(chunkseg, predictor, tile, overlap, batch_size, threads, write):
    """One small run first (768^2, 4 chunks), as the bare model's warm-up call: loads the model
    and creates torch's per-thread state, so one-time costs stay out of both timings."""
    import dask

    small = np.random.default_rng(0).integers(0, 256, (768, 768), dtype=np.uint8)
    with dask.config.set(num_workers=threads):
        if write:
            with tempfile.TemporaryDirectory() as tmp:
                chunkseg.predict_to_zarr(small, predictor, os.path.join(tmp, "w.zarr"),
                                         tile=tile, overlap=overlap, chunks=384,
                                         batch_size=batch_size, outputs="logits,labels")
        else:
            ds = chunkseg.predict(small, predictor, tile=tile, overlap=overlap, chunks=384,
                                  batch_size=batch_size, outputs="logits,labels")
            dask.compute(ds.logits.data.sum(), ds.labels.data.sum())


def _subprocess(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, __file__, "--one"] + args, check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk", type=int, default=1536)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="dask threads for chunkseg")
    p.add_argument("--models", default="conv3x3,unet")
    p.add_argument("--one", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS / "overhead.json"))
    args = p.parse_args(argv)
    if args.one is not None:
        mode, model, image = args.one
        print(json.dumps(run_one(mode, model, image, args.tile, args.overlap, args.chunk,
                                 args.batch_size, args.threads)))
        return

    import torch

    from chunkseg.demo import SECTION_SIZE, build_mosaic

    rows = args.size // SECTION_SIZE
    rows_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "image.zarr")
        build_mosaic(image, rows=rows, cols=rows)
        common = ["--tile", str(args.tile), "--overlap", str(args.overlap), "--chunk",
                  str(args.chunk), "--batch-size", str(args.batch_size), "--threads",
                  str(args.threads)]
        for model in args.models.split(","):
            bare = _subprocess(["bare", model, image] + common)
            nowrite = _subprocess(["no-write", model, image] + common)
            engine = _subprocess(["chunkseg", model, image] + common)
            overhead = engine["seconds"] - bare["seconds"]
            rows_rows.append({
                "model": model, "tiles": engine["tiles"], "chunks": engine["chunks"],
                "bare_s": round(bare["seconds"], 3), "chunkseg_s": round(engine["seconds"], 3),
                "no_write_s": round(nowrite["seconds"], 3),
                "no_write_overhead_ms_per_tile": round(
                    1000 * (nowrite["seconds"] - bare["seconds"]) / engine["tiles"], 3),
                "overhead_pct": round(100 * overhead / bare["seconds"], 1),
                "overhead_ms_per_tile": round(1000 * overhead / engine["tiles"], 3),
                "bare_peak_rss_mib": round(bare["peak_rss_mib"]),
                "chunkseg_peak_rss_mib": round(engine["peak_rss_mib"]),
            })
    meta = {"size": args.size, "tile": args.tile, "overlap": args.overlap, "chunk": args.chunk,
            "batch_size": args.batch_size, "dask_threads": args.threads,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    header = ("| model | tiles | bare model (s) | chunkseg, no write (s) | chunkseg Zarr->Zarr (s) "
              "| overhead | overhead per tile (no write / Zarr) | peak RSS bare / chunkseg (MiB) |")
    lines = [header, "|" + "---|" * 8]
    for r in rows_rows:
        lines.append(f"| {r['model']} | {r['tiles']} | {r['bare_s']:.2f} | {r['no_write_s']:.2f} | "
                     f"{r['chunkseg_s']:.2f} | {r['overhead_pct']:+.1f}% | "
                     f"{r['no_write_overhead_ms_per_tile']:+.2f} / "
                     f"{r['overhead_ms_per_tile']:+.2f} ms | "
                     f"{r['bare_peak_rss_mib']} / {r['chunkseg_peak_rss_mib']} |")
    table = "\n".join(lines)
    print(f"{args.size}x{args.size} uint8, tile {args.tile}, overlap {args.overlap}, chunk "
          f"{args.chunk}, batch {args.batch_size}, {args.threads} dask threads, "
          f"{meta['torch_threads']} torch threads, {meta['cpus']} CPUs")
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows_rows, "table": table},
                                         indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
