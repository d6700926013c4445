"""Scale: 10000^2, 20000^2 and 40000^2 images with bounded, flat memory.

For each size an uint8 image is written straight into a chunked Zarr store, chunk by chunk
(ISBI 2012 sections tiled as a texture; never a full array in memory). Then ``predict_to_zarr``
runs a cheap model (one 3x3 convolution, so the engine's own cost dominates) and, on the
smallest size, the shipped U-Net, writing uint8 labels and float16 probabilities. Each run is a
fresh subprocess; a sampler thread in the parent adds up the RSS of that process and all its
children (client, scheduler and workers when ``--workers`` starts a LocalCluster) every 0.1 s.
After each run, random windows of the output are checked against an in-memory reference of the
same global blend computed from the input around them.

    python benchmarks/scale.py                              # 10000, 20000, 40000; U-Net at 10000
    python benchmarks/scale.py --sizes 10000 --unet-size 0  # quick
    python benchmarks/scale.py --workers 2                  # on a LocalCluster of 2 processes

Saves JSON to benchmarks/results/scale.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from benchmarks._measure import measure, save_results  # noqa: E402

ROOT = HERE.parent


def write_texture(store: str, size: int, chunk: int = 1024, channel_axis: bool = True) -> None:
    """Write a ``size x size`` uint8 Zarr array of tiled ISBI sections, one chunk at a time:
    ``(y, x, c)`` with one channel, or ``(y, x)`` without ``channel_axis``."""
    import zarr
    from zarr.codecs import ZstdCodec

    from chunkseg.demo import load_test_sections

    sections = load_test_sections()
    s = sections[0].shape[0]
    cols = -(-size // s)
    lead = (1,) if channel_axis else ()
    arr = zarr.create_array(store, shape=(size, size) + lead, chunks=(chunk, chunk) + lead,
                            dtype="uint8", fill_value=0, compressors=ZstdCodec(level=3),
                            dimension_names=("y", "x", "c")[:2 + len(lead)], overwrite=True)
    for y0 in range(0, size, chunk):
        for x0 in range(0, size, chunk):
            y1, x1 = min(y0 + chunk, size), min(x0 + chunk, size)
            ys, xs = np.arange(y0, y1), np.arange(x0, x1)
            block = np.empty((y1 - y0, x1 - x0), np.uint8)
            for sy in range(y0 // s, (y1 - 1) // s + 1):
                for sx in range(x0 // s, (x1 - 1) // s + 1):
                    sec = sections[(sy * cols + sx) % len(sections)]
                    my = (ys >= sy * s) & (ys < (sy + 1) * s)
                    mx = (xs >= sx * s) & (xs < (sx + 1) * s)
                    block[np.ix_(my, mx)] = sec[np.ix_(ys[my] - sy * s, xs[mx] - sx * s)]
            arr[y0:y1, x0:x1, ...] = block.reshape(block.shape + lead)


# the cheap model is benchmarks/overhead.py's one 3x3 convolution
MODELS = {"conv3x3": "benchmarks.overhead:conv3x3", "unet": "isbi2012-unet"}


def window_reference(image, model, plan, window, y0, x0, side):
    """The global blend on ``[y0, y0+side) x [x0, x0+side)`` from the tiles that touch it.

    Plain loop over the global grid; the window must lie at least one tile from the border so
    no padding is involved. Returns (K, side, side) float64 logits.
    """
    (oy, ox), (ty, tx) = plan.tile_origins(), plan.tile
    iy = [k for k, o in enumerate(oy) if o < y0 + side and o + ty > y0]
    ix = [k for k, o in enumerate(ox) if o < x0 + side and o + tx > x0]
    ry0, rx0 = oy[iy[0]], ox[ix[0]]
    region = np.asarray(image[ry0 : oy[iy[-1]] + ty, rx0 : ox[ix[-1]] + tx, :], np.float32)
    acc = wsum = None
    for ky in iy:
        for kx in ix:
            a, b = oy[ky] - ry0, ox[kx] - rx0
            t = region[a : a + ty, b : b + tx].transpose(2, 0, 1)[None]
            out = np.asarray(model(t), np.float64)[0]
            if acc is None:
                acc = np.zeros((out.shape[0],) + region.shape[:2])
                wsum = np.zeros(region.shape[:2])
            acc[:, a : a + ty, b : b + tx] += out * window
            wsum[a : a + ty, b : b + tx] += window
    blended = acc / wsum
    return blended[:, y0 - ry0 : y0 - ry0 + side, x0 - rx0 : x0 - rx0 + side]


def run_one(image: str, out: str, model_name: str, args) -> dict:
    """One run in this process: predict_to_zarr, then the window check."""
    import dask
    import xarray as xr
    import zarr

    import chunkseg
    from chunkseg.kernels.windows import get_window
    from chunkseg.models.load import as_model
    from chunkseg.plan import plan_tiles

    model = as_model(MODELS[model_name])
    src = zarr.open_array(image, mode="r")
    plan = plan_tiles(src.shape, args.tile, args.overlap, args.chunk)
    ds = chunkseg.predict(image, model, tile=args.tile, overlap=args.overlap, chunks=args.chunk,
                          batch_size=args.batch_size, outputs="probabilities,labels",
                          dtype="float16")
    graph_tasks = len(dict(ds.probabilities.data.__dask_graph__()) |
                      dict(ds.labels.data.__dask_graph__()))
    t0 = time.perf_counter()
    with dask.config.set(num_workers=args.threads):
        chunkseg.predict_to_zarr(image, model, out, tile=args.tile, overlap=args.overlap,
                                 chunks=args.chunk, batch_size=args.batch_size,
                                 outputs="probabilities,labels", dtype="float16",
                                 workers=args.workers, overwrite=True)
    seconds = time.perf_counter() - t0
    # check random interior windows against the in-memory reference
    rng = np.random.default_rng(args.seed)
    written = xr.open_zarr(out)
    window = get_window("gaussian", plan.tile, plan.overlap).astype(np.float64)
    worst = 0.0
    agree = []
    side = args.check_side
    lo, hi = 2 * max(plan.tile), plan.image_shape[0] - 2 * max(plan.tile) - side
    for _ in range(args.check_windows):
        y0, x0 = (int(v) for v in rng.integers(lo, hi, 2))
        ref = window_reference(src, model, plan, window, y0, x0, side)
        e = np.exp(ref - ref.max(0))
        ref_p = e / e.sum(0)
        got = written.probabilities[:, y0 : y0 + side, x0 : x0 + side].values.astype(np.float64)
        worst = max(worst, float(np.abs(got - ref_p).max()))
        got_l = written.labels[y0 : y0 + side, x0 : x0 + side].values
        agree.append(float((got_l == ref.argmax(0)).mean()))
    return {"seconds": seconds, "tiles": plan.n_tiles, "chunks": plan.n_chunks,
            "graph_tasks": graph_tasks, "max_abs_prob_diff": worst,
            "label_agreement_min": min(agree)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,20000,40000")
    p.add_argument("--unet-size", type=int, default=10000, help="size for the U-Net run (0: none)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk", type=int, default=None, help="computation chunk (plan default)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="dask threads (local scheduler)")
    p.add_argument("--workers", type=int, default=None, help="LocalCluster worker processes")
    p.add_argument("--check-windows", type=int, default=3)
    p.add_argument("--check-side", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the stores (default: a temp dir)")
    p.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        image, out, model = args.one
        print(json.dumps(run_one(image, out, model, args)))
        return

    common = ["--tile", str(args.tile), "--overlap", str(args.overlap), "--batch-size",
              str(args.batch_size), "--threads", str(args.threads), "--check-windows",
              str(args.check_windows), "--check-side", str(args.check_side)]
    if args.chunk:
        common += ["--chunk", str(args.chunk)]
    if args.workers:
        common += ["--workers", str(args.workers)]
    runs = [(int(s), "conv3x3") for s in args.sizes.split(",")]
    if args.unet_size:
        runs.append((args.unet_size, "unet"))
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="chunkseg-scale-"))
    rows = []
    for size, model in runs:
        image = str(tmp / f"image-{size}.zarr")
        if not (Path(image) / "zarr.json").exists():
            t0 = time.perf_counter()
            write_texture(image, size)
            print(f"wrote {size}^2 input in {time.perf_counter() - t0:.1f} s", flush=True)
        out = str(tmp / f"out-{size}-{model}.zarr")
        r = measure(__file__, [image, out, model] + common)
        shutil.rmtree(out, ignore_errors=True)
        r.update(size=size, model=model, mpix_per_s=size * size / 1e6 / r["seconds"])
        rows.append(r)
        print(json.dumps(r), flush=True)
    lines = ["| image | model | tiles | chunks | graph tasks | wall time (s) | throughput (Mpx/s) "
             "| peak RSS, all processes (MiB) | max abs prob. diff vs reference | label agreement |",
             "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['size']}^2 | {r['model']} | {r['tiles']} | {r['chunks']} | "
                     f"{r['graph_tasks']} | {r['seconds']:.1f} | {r['mpix_per_s']:.2f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['max_abs_prob_diff']:.1e} | "
                     f"{r['label_agreement_min']:.4f} |")
    table = "\n".join(lines)
    print(table)
    meta = {"command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
            "cpus": os.cpu_count(), "tile": args.tile, "overlap": args.overlap,
            "chunk": args.chunk, "threads": args.threads, "workers": args.workers,
            "outputs": "labels (uint8) + probabilities (float16), zstd"}
    save_results(args.out, meta, rows, table)
    if not args.tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
