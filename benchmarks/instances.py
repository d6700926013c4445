"""Instances across chunks at 10000^2 and 40000^2: time, peak RSS, objects found vs expected.

For each size a uint8 image of dark disks on a bright background is written chunk by chunk
into Zarr (disks of radius 5-9 px on a jittered 40 px grid, none touching, many cut by chunk
borders; their number is known). Each step runs in a fresh subprocess whose process tree's RSS
is sampled every 0.1 s:

- ``predict``: ``predict_to_zarr`` with a pointwise two-class model (dark = class 1), writing
  uint8 labels and float16 probabilities (the logits path; its peak RSS is the target's base);
- ``instances``: ``chunkseg.label(out, cls=1)`` on that output, then a check that every
  disk got exactly one id and the ids are ``1..N`` with ``N`` the number of disks;
- ``watershed`` and ``watershed-merge``: ``chunkseg.label(out, cls=1, method="watershed",
  seed_threshold=0.6)`` (disk pixels have probability 0.665, the background 0.326), without
  and with ``merge_threshold=0.5``, same checks (written as ``instances``, replacing the
  components);
- ``regions``: ``chunkseg.regions`` on it (Parquet), area of every disk checked;
- ``predict-instances``: the per-tile route, ``chunkseg.predict_instances`` with a per-tile
  model (connected components of the dark pixels of each tile), same checks;
- ``dask-image`` (``--dask-image-sizes``, default 10000 only): ``dask_image.ndmeasure.label``
  of the same foreground written to Zarr, for comparison.

    python benchmarks/instances.py                       # 10000 and 40000
    python benchmarks/instances.py --sizes 4000 --dask-image-sizes 4000   # quick

Saves JSON to benchmarks/results/instances.json and prints a markdown table.
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
SPACING, JITTER, R_MIN, R_MAX = 40, 8, 5, 9  # 40 - 2 * (8 + 9) = 6 px between disks at least


def disks(size: int, seed: int = 0):
    """Centres (y, x) and radii of the disks of a ``size x size`` image (all inside it)."""
    rng = np.random.default_rng(seed)
    g = np.arange(SPACING // 2, size - SPACING // 2 + 1, SPACING)
    cy, cx = np.meshgrid(g, g, indexing="ij")
    cy = cy.ravel() + rng.integers(-JITTER, JITTER + 1, cy.size)
    cx = cx.ravel() + rng.integers(-JITTER, JITTER + 1, cx.size)
    r = rng.integers(R_MIN, R_MAX + 1, cy.size)
    inside = (cy - r >= 0) & (cx - r >= 0) & (cy + r < size) & (cx + r < size)
    return cy[inside], cx[inside], r[inside]


def write_disks(store: str, size: int, chunk: int = 1024, seed: int = 0) -> int:
    """Write the image chunk by chunk; returns the number of disks."""
    import zarr
    from zarr.codecs import ZstdCodec

    cy, cx, r = disks(size, seed)
    arr = zarr.create_array(store, shape=(size, size), chunks=(chunk, chunk), dtype="uint8",
                            fill_value=0, compressors=ZstdCodec(level=3),
                            dimension_names=("y", "x"), overwrite=True)
    for y0 in range(0, size, chunk):
        for x0 in range(0, size, chunk):
            y1, x1 = min(y0 + chunk, size), min(x0 + chunk, size)
            block = np.full((y1 - y0, x1 - x0), 220, np.uint8)
            near = ((cy + r >= y0) & (cy - r < y1) & (cx + r >= x0) & (cx - r < x1))
            for y, x, rad in zip(cy[near], cx[near], r[near]):
                ya, yb = max(y - rad, y0), min(y + rad + 1, y1)
                xa, xb = max(x - rad, x0), min(x + rad + 1, x1)
                yy, xx = np.ogrid[ya:yb, xa:xb]
                block[ya - y0:yb - y0, xa - x0:xb - x0][(yy - y) ** 2 + (xx - x) ** 2
                                                        <= rad * rad] = 40
            arr[y0:y1, x0:x1] = block
    return int(cy.size)


def pointwise(device: str = "cpu"):
    """Two classes from the pixel value: class 1 where the pixel is dark."""

    def model(batch):
        z = batch / np.float32(255) - np.float32(0.5)
        return np.concatenate([z, -z], axis=1)

    return model


def tile_instances(device: str = "cpu"):
    """A per-tile instance model: connected components of the dark pixels of each tile."""
    from scipy import ndimage

    def model(batch):
        out = np.zeros((batch.shape[0],) + batch.shape[2:], np.int32)
        for i, tile in enumerate(batch[:, 0]):
            out[i] = ndimage.label(tile < 128)[0]
        return out

    return model


def step(mode: str, image: str, out: str, size: int, args) -> dict:
    import dask

    import chunkseg

    t0 = time.perf_counter()
    result: dict = {}
    with dask.config.set(num_workers=args.threads):
        if mode == "predict":
            chunkseg.predict_to_zarr(image, "benchmarks.instances:pointwise", out,
                                     tile=args.tile, overlap=args.overlap, chunks=args.chunk,
                                     outputs="probabilities,labels", dtype="float16",
                                     overwrite=True)
        elif mode == "instances":
            ids = chunkseg.label(out, cls=1, overwrite=True)
            result["objects"] = int(ids.attrs["objects"])
        elif mode in ("watershed", "watershed-merge"):  # disk pixels have p = 0.665
            ids = chunkseg.label(out, cls=1, method="watershed", seed_threshold=0.6,
                                 merge_threshold=0.5 if mode == "watershed-merge" else None,
                                 overwrite=True)
            result["objects"] = int(ids.attrs["objects"])
        elif mode == "regions":
            table = chunkseg.regions(out, out + ".parquet", overwrite=True)
            result["objects"] = len(table)
        elif mode == "predict-instances":  # the per-tile route, from the input image
            ids = chunkseg.predict_instances(image, "benchmarks.instances:tile_instances",
                                             out + ".tiles.zarr", tile=args.tile,
                                             overlap=args.overlap, chunks=args.chunk,
                                             overwrite=True)
            result["objects"] = int(ids.attrs["n_objects"])
        elif mode == "dask-image":
            import dask.array as da
            import zarr
            from dask_image.ndmeasure import label

            labels = da.from_zarr(zarr.open_group(out)["labels"])
            ids, n = label(labels == 1)
            da.to_zarr(ids.astype(np.uint32), out + ".dask-image.zarr", overwrite=True)
            result["objects"] = int(n.compute())
    result["seconds"] = time.perf_counter() - t0
    if mode in ("instances", "predict-instances", "watershed", "watershed-merge"):
        # every disk one id of its own
        import zarr

        ids_arr = zarr.open_group(out + ".tiles.zarr" if mode == "predict-instances" else out)[
            "instances"]
        cy, cx, _ = disks(size, args.seed)
        at = np.empty(cy.size, np.int64)
        for i in range(0, cy.size, 100000):  # point reads, in pieces
            at[i:i + 100000] = ids_arr.vindex[cy[i:i + 100000], cx[i:i + 100000]]
        result["disks_with_one_distinct_id"] = int(len(np.unique(at[at > 0])))
        result["disks_without_id"] = int((at == 0).sum())
    if mode == "regions":
        import pandas as pd

        table = pd.read_parquet(out + ".parquet")
        cy, cx, r = disks(size, args.seed)
        result["area_min_max"] = [int(table["area"].min()), int(table["area"].max())]
        result["area_expected_min_max"] = [int(np.pi * R_MIN ** 2 * 0.9),
                                           int(np.pi * R_MAX ** 2 * 1.1 + 4)]
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,40000")
    p.add_argument("--dask-image-sizes", default="10000")
    p.add_argument("--modes", default="predict,instances,watershed,watershed-merge,regions,"
                                      "predict-instances,dask-image")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--chunk", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default=None)
    p.add_argument("--out", default=str(HERE / "results" / "instances.json"))
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        mode, image, out, size = args.one
        print(json.dumps(step(mode, image, out, int(size), args)))
        return
    common = ["--tile", str(args.tile), "--overlap", str(args.overlap), "--threads",
              str(args.threads), "--seed", str(args.seed)]
    if args.chunk:
        common += ["--chunk", str(args.chunk)]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="chunkseg-instances-"))
    di_sizes = {int(s) for s in args.dask_image_sizes.split(",") if s}
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        image, out = str(tmp / f"disks-{size}.zarr"), str(tmp / f"out-{size}.zarr")
        t0 = time.perf_counter()
        expected = write_disks(image, size, seed=args.seed)
        print(f"wrote {size}^2 ({expected} disks) in {time.perf_counter() - t0:.1f} s", flush=True)
        modes = [m for m in args.modes.split(",") if m != "dask-image" or size in di_sizes]
        for mode in modes:
            try:
                r = measure(__file__, [mode, image, out, str(size)] + common)
            except RuntimeError as err:  # e.g. dask-image out of memory: report, go on
                r = {"error": str(err)[-300:]}
            r.update(size=size, mode=mode, expected=expected)
            rows.append(r)
            print(json.dumps(r), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out + ".dask-image.zarr", ignore_errors=True)
        shutil.rmtree(out + ".tiles.zarr", ignore_errors=True)
        shutil.rmtree(image, ignore_errors=True)
    base = {r["size"]: r["peak_rss_mib"] for r in rows if r["mode"] == "predict"}
    lines = ["| image | step | wall time (s) | peak RSS, all processes (MiB) | RSS / predict's "
             "| objects found / expected |", "|" + "---|" * 6]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']}^2 | {r['mode']} | failed | | | |")
            continue
        found = f"{r['objects']} / {r['expected']}" if "objects" in r else ""
        lines.append(f"| {r['size']}^2 | {r['mode']} | {r['seconds']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | "
                     f"{r['peak_rss_mib'] / base[r['size']] if r['size'] in base else 0:.2f} | "
                     f"{found} |")
    table = "\n".join(lines)
    print(table)
    meta = {"command": "python benchmarks/instances.py " + " ".join(sys.argv[1:]),
            "cpus": os.cpu_count(), "tile": args.tile, "overlap": args.overlap,
            "chunk": args.chunk, "threads": args.threads}
    save_results(args.out, meta, rows, table)
    if not args.tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
