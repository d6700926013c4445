"""Sharded outputs: objects written, bytes, wall time and window reads, with and without shards.

An uint8 image (``benchmarks.scale.write_texture``) goes through ``predict_to_zarr`` with the
cheap model (``benchmarks.overhead:conv3x3``; labels uint8 + probabilities float16, zstd), once
per layout: unsharded 512 px chunks, unsharded 2048 px chunks, and 2048 px shards of 512 px
inner chunks (``shards=2048, chunks=512``: the computation chunk is the shard). Each run is a
fresh subprocess (peak RSS of its process tree sampled as in ``benchmarks/scale.py``). Then per
output: the number of stored objects (files) and their bytes, for all of the output and for the
data variables' chunks (``*/c/``), and the time to read a 1024^2 window of probabilities (all
classes), the median of several random windows, opening the store anew for each (cold-ish: the
OS page cache stays warm).

    python benchmarks/shards.py                 # 40000^2
    python benchmarks/shards.py --size 10000    # quick

Saves JSON to benchmarks/results/shards.json and prints a markdown table.
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
from benchmarks.scale import write_texture  # noqa: E402

MODEL = "benchmarks.overhead:conv3x3"
LAYOUTS = {  # name: (chunks, shards)
    "chunks 512": (512, None),
    "chunks 2048": (2048, None),
    "chunks 512, shards 2048": (512, 2048),
}


def run_one(image: str, out: str, chunks: int, shards: int | None, args) -> dict:
    """One predict_to_zarr run in this process; its wall time."""
    import dask

    import chunkseg
    from chunkseg.models.load import as_model

    model = as_model(MODEL)
    t0 = time.perf_counter()
    with dask.config.set(num_workers=args.threads):
        ds = chunkseg.predict_to_zarr(image, model, out, tile=args.tile, overlap=args.overlap,
                                      chunks=chunks, shards=shards, batch_size=args.batch_size,
                                      outputs="probabilities,labels", dtype="float16",
                                      overwrite=True)
    seconds = time.perf_counter() - t0
    # write tasks: one per computation chunk (= per shard when sharded)
    tasks = int(np.prod([-(-n // c) for n, c in zip(ds.labels.shape, ds.attrs["chunks"])]))
    return {"seconds": seconds, "tasks_chunks": tasks}


def count_objects(out: Path) -> dict:
    """Files and bytes of the whole output and of the data variables' chunks."""
    files = [p for p in out.rglob("*") if p.is_file()]
    data = [p for p in files if "c" in p.relative_to(out).parts[1:2]
            and p.relative_to(out).parts[0] != "chunkseg"]
    return {"objects": len(files), "bytes": sum(p.stat().st_size for p in files),
            "data_objects": len(data), "data_bytes": sum(p.stat().st_size for p in data)}


def read_windows(out: Path, size: int, side: int, n: int, seed: int) -> dict:
    """Median and spread of the time to read ``n`` random ``side^2`` probability windows,
    opening the store anew for each."""
    import zarr

    rng = np.random.default_rng(seed)
    times = []
    for _ in range(n):
        y0, x0 = (int(v) for v in rng.integers(0, size - side, 2))
        t0 = time.perf_counter()
        arr = zarr.open_group(str(out), mode="r")["probabilities"]
        window = arr[:, y0:y0 + side, x0:x0 + side]
        times.append(time.perf_counter() - t0)
        assert window.shape[-2:] == (side, side)
    return {"read_ms_median": 1e3 * float(np.median(times)),
            "read_ms_min": 1e3 * float(np.min(times)), "read_ms_max": 1e3 * float(np.max(times))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=40000)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="dask threads (local scheduler)")
    p.add_argument("--windows", type=int, default=7, help="random windows read per output")
    p.add_argument("--window-side", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None, help="folder for the stores (default: a temp dir)")
    p.add_argument("--out", default=str(HERE / "results" / "shards.json"))
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        image, out, chunks, shards = args.one
        print(json.dumps(run_one(image, out, int(chunks),
                                 None if shards == "none" else int(shards), args)))
        return

    common = ["--size", str(args.size), "--tile", str(args.tile), "--overlap",
              str(args.overlap), "--batch-size", str(args.batch_size), "--threads",
              str(args.threads)]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="chunkseg-shards-"))
    image = str(tmp / f"image-{args.size}.zarr")
    if not (Path(image) / "zarr.json").exists():
        t0 = time.perf_counter()
        write_texture(image, args.size)
        print(f"wrote {args.size}^2 input in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for name, (chunks, shards) in LAYOUTS.items():
        out = tmp / f"out-{args.size}-{chunks}-{shards}.zarr"
        r = measure(__file__, [image, str(out), str(chunks), str(shards or "none")] + common)
        r.update(layout=name, chunks=chunks, shards=shards, size=args.size,
                 **count_objects(out),
                 **read_windows(out, args.size, args.window_side, args.windows, args.seed))
        shutil.rmtree(out, ignore_errors=True)
        rows.append(r)
        print(json.dumps(r), flush=True)
    side = args.window_side
    lines = [f"| {args.size}^2 output | write tasks | wall time (s) | peak RSS (MiB) | objects "
             f"(all / data) | bytes (MiB) | read {side}^2 probabilities, median (min-max) ms |",
             "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['tasks_chunks']} | {r['seconds']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['objects']} / {r['data_objects']} | "
                     f"{r['bytes'] / 2**20:.1f} | {r['read_ms_median']:.0f} "
                     f"({r['read_ms_min']:.0f}-{r['read_ms_max']:.0f}) |")
    table = "\n".join(lines)
    print(table)
    meta = {"command": "python benchmarks/shards.py " + " ".join(sys.argv[1:]),
            "cpus": os.cpu_count(), "size": args.size, "tile": args.tile,
            "overlap": args.overlap, "threads": args.threads, "windows": args.windows,
            "outputs": "labels (uint8) + probabilities (float16), zstd level 1",
            "model": MODEL, "read": "store reopened for each window; OS page cache warm"}
    save_results(args.out, meta, rows, table)
    if not args.tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
